package domain_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// actorWith is a principal holding roles, acting through a key that carries
// every permission of those roles (or perms, when given).
func actorWith(id string, roles map[string][]string, names ...string) domain.Actor {
	var perms []string
	for _, n := range names {
		perms = append(perms, roles[n]...)
	}
	return domain.Actor{
		Principal:   domain.Principal{ID: id, Roles: names, Events: 1},
		Key:         domain.Key{ID: id + "-key", Owner: id, Permissions: perms},
		Permissions: perms,
	}
}

// TestAuthorize is the rule of who may touch which key, without HTTP.
func TestAuthorize(t *testing.T) {
	roles := map[string][]string{}
	for n, p := range domain.BuiltinRoles {
		roles[n] = p
	}
	roles["revoker"] = []string{domain.PermKeyView, domain.PermKeyRevoke}
	roles["any-updater"] = []string{domain.PermKeyView, domain.PermKeyViewAny, domain.PermKeyUpdate, "api.key.update.any"}
	roles["keyops"] = []string{"api.key.*"}
	roles["star"] = []string{"*"}

	super := actorWith("super", roles, domain.RoleSuperadmin)
	admin := actorWith("admin", roles, domain.RoleKeyAdmin)
	other := actorWith("other", roles, domain.RoleKeyAdmin)
	auditor := actorWith("auditor", roles, domain.RoleAuditor)
	verifier := actorWith("verifier", roles, domain.RoleVerifier)
	revoker := actorWith("revoker", roles, "revoker")
	updater := actorWith("updater", roles, "any-updater")
	keyops := actorWith("keyops", roles, "keyops")
	star := actorWith("star", roles, "star")
	superAdmin := actorWith("super", roles, domain.RoleSuperadmin, domain.RoleKeyAdmin)
	// A key-admin whose key was issued with view only.
	narrow := actorWith("admin", roles, domain.RoleKeyAdmin)
	narrow.Key.Permissions = []string{domain.PermKeyView}
	// A key-admin whose role was taken away: the key alone is not enough.
	stripped := actorWith("admin", roles, domain.RoleKeyAdmin)
	stripped.Permissions = nil

	own := domain.Key{ID: "k1", Owner: "admin", CreatedAt: time.Unix(1, 0), Events: 1}
	deleted := own
	deleted.DeletedAt = time.Unix(2, 0)
	missing := domain.Key{ID: "k2"}
	superOwn := domain.Key{ID: "k3", Owner: "super", CreatedAt: time.Unix(1, 0), Events: 1}

	const ok, notFound, forbidden, gone = "", "key_not_found", "insufficient_permissions", "key_deleted"
	const crossOwner, superNo = "cross_owner_forbidden", "superadmin_cannot_issue_keys"
	cases := []struct {
		name  string
		actor domain.Actor
		key   domain.Key
		perm  string
		want  string
	}{
		{"admin views own", admin, own, domain.PermKeyView, ok},
		{"admin updates own", admin, own, domain.PermKeyUpdate, ok},
		{"admin regenerates own", admin, own, domain.PermKeyRegenerate, ok},
		{"admin revokes own", admin, own, domain.PermKeyRevoke, ok},
		{"admin deletes own", admin, own, domain.PermKeyDelete, ok},
		{"other admin cannot see it", other, own, domain.PermKeyView, notFound},
		{"other admin cannot revoke it", other, own, domain.PermKeyRevoke, notFound},
		{"super views any", super, own, domain.PermKeyView, ok},
		{"super revokes any", super, own, domain.PermKeyRevoke, ok},
		{"super deletes any", super, own, domain.PermKeyDelete, ok},
		{"super never regenerates", super, own, domain.PermKeyRegenerate, crossOwner},
		{"super never updates", super, own, domain.PermKeyUpdate, crossOwner},
		{"super never disables", super, own, domain.PermKeyDisable, crossOwner},
		{"auditor views any", auditor, own, domain.PermKeyView, ok},
		{"auditor never revokes", auditor, own, domain.PermKeyRevoke, forbidden},
		{"verifier cannot see keys", verifier, own, domain.PermKeyView, notFound},
		{"custom role without view.any sees only own", revoker, own, domain.PermKeyRevoke, notFound},
		{"custom role with update.any still cannot update another's", updater, own, domain.PermKeyUpdate, crossOwner},
		{"custom role with update.any cannot revoke", updater, own, domain.PermKeyRevoke, forbidden},
		{"api.key.* cannot regenerate another's", keyops, own, domain.PermKeyRegenerate, crossOwner},
		{"api.key.* cannot disable another's", keyops, own, domain.PermKeyDisable, crossOwner},
		{"api.key.* cannot enable another's", keyops, own, domain.PermKeyEnable, crossOwner},
		{"api.key.* cannot update another's", keyops, own, domain.PermKeyUpdate, crossOwner},
		{"api.key.* revokes another's", keyops, own, domain.PermKeyRevoke, ok},
		{"* cannot regenerate another's", star, own, domain.PermKeyRegenerate, crossOwner},
		{"super and key-admin never regenerates its own", superAdmin, superOwn, domain.PermKeyRegenerate, superNo},
		{"super and key-admin updates its own", superAdmin, superOwn, domain.PermKeyUpdate, ok},
		{"super and key-admin cannot regenerate another's", superAdmin, own, domain.PermKeyRegenerate, crossOwner},
		{"key narrower than its owner", narrow, own, domain.PermKeyRevoke, forbidden},
		{"key narrower than its owner still views", narrow, own, domain.PermKeyView, ok},
		{"owner lost its role", stripped, own, domain.PermKeyView, forbidden},
		{"deleted key can be viewed", admin, deleted, domain.PermKeyView, ok},
		{"deleted key cannot change", admin, deleted, domain.PermKeyRevoke, gone},
		{"super cannot change a deleted key", super, deleted, domain.PermKeyDelete, gone},
		{"missing key", admin, missing, domain.PermKeyView, notFound},
		{"missing key for super", super, missing, domain.PermKeyRevoke, notFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := domain.ErrorReason(c.actor.Authorize(c.key, c.perm)); got != c.want {
				t.Fatalf("Authorize(%s on %s's key, %s) = %q, want %q", c.actor.ID(), c.key.Owner, c.perm, got, c.want)
			}
		})
	}
}

// TestSuperadminNeverCreates: the super administrator's role holds no
// permission to create or regenerate a key, so no key of its can either.
func TestSuperadminNeverCreates(t *testing.T) {
	super := domain.Actor{Key: domain.Key{Permissions: domain.BuiltinRoles[domain.RoleSuperadmin]}, Permissions: domain.BuiltinRoles[domain.RoleSuperadmin]}
	for _, p := range []string{domain.PermKeyCreate, domain.PermKeyRegenerate, domain.PermKeyRegenerate + ".any"} {
		if super.Can(p) {
			t.Errorf("super administrator can %s", p)
		}
	}
}

func TestKeyPermissions(t *testing.T) {
	owner := []string{"orders.*", "api.key.view"}
	cases := []struct {
		name      string
		role      string
		rolePerms []string
		found     bool
		requested []string
		want      string
		perms     int
	}{
		{"default is the owner's", "", nil, false, nil, "", 2},
		{"subset", "", nil, false, []string{"orders.read", "orders.read"}, "", 1},
		{"not held", "", nil, false, []string{"billing.read"}, "permission_not_held", 0},
		{"role", "r", []string{"orders.write"}, true, nil, "", 1},
		{"unknown role", "r", nil, false, nil, "unknown_role", 0},
		{"role beyond the owner", "r", []string{"*"}, true, nil, "permission_not_held", 0},
		{"both", "r", []string{"orders.write"}, true, []string{"orders.read"}, "invalid_permissions", 0},
		{"malformed", "", nil, false, []string{"Orders"}, "invalid_permission", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := domain.KeyPermissions(owner, c.role, c.rolePerms, c.found, c.requested)
			if r := domain.ErrorReason(err); r != c.want || len(got) != c.perms {
				t.Fatalf("got %v, %q; want %d permissions, %q", got, r, c.perms, c.want)
			}
		})
	}
}

func TestIssueKeyPlanLimit(t *testing.T) {
	p := domain.Principal{ID: "0190b3a0-0000-7000-8000-000000000001", Events: 1}
	for _, c := range []struct {
		active, limit int
		want          string
	}{{0, 1, ""}, {4, 5, ""}, {5, 5, "plan_limit_reached"}, {9, 5, "plan_limit_reached"}} {
		envs, err := domain.DecidePrincipal(p, domain.IssueKey{Meta: domain.Meta{Actor: "a"}, KeyID: "k", ActiveKeys: c.active, Limit: c.limit},
			func(string) bool { return true }, time.Unix(10, 0), uuid.New)
		if got := domain.ErrorReason(err); got != c.want {
			t.Fatalf("active %d limit %d: %q, want %q", c.active, c.limit, got, c.want)
		}
		if err == nil && (len(envs) != 1 || envs[0].Type != domain.TypePrincipalKeyIssued) {
			t.Fatalf("events %v", envs)
		}
	}
	if got := (domain.Principal{MaxKeys: 3}).KeyLimit(100); got != 3 {
		t.Fatalf("own limit %d, want 3", got)
	}
	if got := (domain.Principal{}).KeyLimit(100); got != 100 {
		t.Fatalf("default limit %d, want 100", got)
	}
}

// FuzzParseWriters: the trusted-writers file is read from the outside; no
// input may panic, and whatever parses names only valid writer keys that a
// check with a bad signature refuses.
func FuzzParseWriters(f *testing.F) {
	f.Add([]byte(`{"writers":[{"key":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","retired_at":"2026-12-01T00:00:00Z"}],"unsigned_before":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"writers":[{"key":"x"}]}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := domain.ParseWriters(b)
		if err != nil {
			return
		}
		for _, x := range w.Writers {
			if _, err := domain.ParseWriterID(x.ID); err != nil {
				t.Fatalf("parsed writer %q is not a key: %v", x.ID, err)
			}
			if domain.ErrorReason(w.CheckHeaders("keyledger.keys.k.key.created", []byte("{}"), x.ID, "AAAA", time.Time{})) == "" {
				t.Fatal("a bogus signature was accepted")
			}
		}
	})
}

// TestSuperadminWithOtherRolesNeverCreates: holding superadmin and a role
// that creates keys still creates none.
func TestSuperadminWithOtherRolesNeverCreates(t *testing.T) {
	roles := map[string][]string{domain.RoleSuperadmin: domain.BuiltinRoles[domain.RoleSuperadmin], domain.RoleKeyAdmin: domain.BuiltinRoles[domain.RoleKeyAdmin], "star": {"*"}}
	for _, names := range [][]string{{domain.RoleSuperadmin, domain.RoleKeyAdmin}, {domain.RoleSuperadmin, "star"}} {
		a := actorWith("super", roles, names...)
		if got := domain.ErrorReason(a.AuthorizeCreate()); got != "superadmin_cannot_issue_keys" {
			t.Errorf("%v: AuthorizeCreate = %q", names, got)
		}
	}
	if err := actorWith("admin", roles, domain.RoleKeyAdmin).AuthorizeCreate(); err != nil {
		t.Errorf("key-admin: %v", err)
	}
}

// TestRoleCannotGrantCrossOwnerChanges: a custom role naming a cross-owner
// power beyond view, revoke, delete and log view is refused; wildcards are
// accepted but reach none of those powers.
func TestRoleCannotGrantCrossOwnerChanges(t *testing.T) {
	for _, p := range []string{"api.key.create.any", "api.key.regenerate.any", "api.key.rotate.any", "api.key.update.any", "api.key.disable.any", "api.key.enable.any"} {
		_, err := domain.DecideRole(domain.Role{}, "keyops", domain.CreateRole{Meta: domain.Meta{Actor: "a"}, Permissions: []string{domain.PermKeyView, p}}, time.Unix(10, 0), uuid.New)
		if got := domain.ErrorReason(err); got != "cross_owner_permission" {
			t.Errorf("role with %s: %q, want cross_owner_permission", p, got)
		}
		if domain.Covers([]string{"*", "api.*", "api.key.*", p}, p) {
			t.Errorf("%s is covered", p)
		}
	}
	for _, p := range append([]string{"api.key.*", "*"}, domain.CrossOwnerPermissions...) {
		if _, err := domain.DecideRole(domain.Role{}, "ops", domain.CreateRole{Meta: domain.Meta{Actor: "a"}, Permissions: []string{p}}, time.Unix(10, 0), uuid.New); err != nil {
			t.Errorf("role with %s: %v", p, err)
		}
	}
}

// TestCrossOwnerProperty: over random role sets (built-in and custom roles
// drawn from every management permission, wildcards and .any forms) and
// random owners, another principal's key is never created, regenerated,
// updated, disabled or enabled, and a principal holding superadmin never
// creates or regenerates a key.
func TestCrossOwnerProperty(t *testing.T) {
	pool := []string{"*", "api.*", "api.key.*", "api.key.view", "api.key.view.any", "api.key.revoke", "api.key.revoke.any",
		"api.key.delete", "api.key.delete.any", "api.key.create", "api.key.regenerate", "api.key.update", "api.key.disable",
		"api.key.enable", "api.key.create.any", "api.key.regenerate.any", "api.key.update.any", "api.key.disable.any",
		"api.key.enable.any", "api.key.rotate.any", "api.log.view.any", "orders.write"}
	perms := []string{domain.PermKeyView, domain.PermKeyCreate, domain.PermKeyRegenerate, domain.PermKeyUpdate,
		domain.PermKeyDisable, domain.PermKeyEnable, domain.PermKeyRevoke, domain.PermKeyDelete}
	builtin := []string{domain.RoleSuperadmin, domain.RoleKeyAdmin, domain.RoleAuditor, domain.RoleVerifier}
	rng := rand.New(rand.NewPCG(25, 1))
	for i := 0; i < 20000; i++ {
		roles := map[string][]string{}
		for n, p := range domain.BuiltinRoles {
			roles[n] = p
		}
		var names []string
		for j := rng.IntN(4); j >= 0; j-- {
			if rng.IntN(2) == 0 {
				names = append(names, builtin[rng.IntN(len(builtin))])
				continue
			}
			var custom []string
			for k := rng.IntN(5); k >= 0; k-- {
				custom = append(custom, pool[rng.IntN(len(pool))])
			}
			// A role is whatever DecideRole lets through, or, as a ledger
			// written before this rule may hold, the raw list.
			if norm, err := domain.NormalizeRolePermissions(custom); err == nil || rng.IntN(2) == 0 {
				if err == nil {
					custom = norm
				}
				name := fmt.Sprintf("custom%d", j)
				roles[name] = custom
				names = append(names, name)
			}
		}
		a := actorWith("me", roles, names...)
		owner := []string{"me", "bob"}[rng.IntN(2)]
		k := domain.Key{ID: "k", Owner: owner, CreatedAt: time.Unix(1, 0), Events: 1}
		perm := perms[rng.IntN(len(perms))]
		err := a.Authorize(k, perm)
		super := a.HoldsSuperadmin()
		switch {
		case owner != "me" && perm != domain.PermKeyView && perm != domain.PermKeyRevoke && perm != domain.PermKeyDelete && err == nil:
			t.Fatalf("roles %v (%v) may %s bob's key", names, a.Permissions, perm)
		case super && perm == domain.PermKeyRegenerate && err == nil:
			t.Fatalf("superadmin with %v regenerates a key", names)
		case super && a.AuthorizeCreate() == nil:
			t.Fatalf("superadmin with %v creates a key", names)
		}
		for _, p := range pool {
			if co, ok := domain.CrossOwner(p); co && !ok && a.Can(p) {
				t.Fatalf("roles %v hold %s", names, p)
			}
		}
	}
}
