package api_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

// These tests try, against the real embedded server, what issue 25 found
// at the edges of the rules, and check that each is now refused.

// createKey creates a key with the token's principal and returns it.
func (h *harness) createKey(token string, body map[string]any) api.CreatedKey {
	h.t.Helper()
	r := h.do("POST", "/v1/keys", token, body)
	if r.status != http.StatusCreated {
		h.t.Fatalf("create key: %d %s", r.status, r.body)
	}
	var k api.CreatedKey
	r.json(h.t, &k)
	return k
}

// wantProblem asserts a response's status and problem code.
func wantProblem(tb testing.TB, r resp, status int, code string) {
	tb.Helper()
	if r.status != status {
		tb.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if got := r.problemCode(tb); got != code {
		tb.Fatalf("code %q, want %q: %s", got, code, r.body)
	}
}

// TestCrossOwnerPowersAreViewRevokeDelete: the super administrator makes a
// custom role keyops with api.key.* and gives it to a new principal; that
// principal may view, revoke and delete bob's key but not rotate, update,
// disable or enable it. A role naming such a power is refused, and a
// principal holding superadmin and key-admin creates no key.
func TestCrossOwnerPowersAreViewRevokeDelete(t *testing.T) {
	h := mustStart(t)
	_, svcTok := h.principal("gateway", domain.RoleVerifier)
	_, bobTok := h.principal("bob", domain.RoleKeyAdmin)
	bobKey := h.createKey(bobTok, map[string]any{"name": "bob's"})

	r := h.do("POST", "/v1/roles", h.root, map[string]any{"name": "keyops", "permissions": []string{"api.key.*"}})
	if r.status != http.StatusCreated {
		t.Fatalf("create keyops: %d %s", r.status, r.body)
	}
	_, opsTok := h.principal("ops", "keyops")
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/v1/keys/" + bobKey.KeyID + "/regenerate", map[string]bool{"rotate": true}},
		{"POST", "/v1/keys/" + bobKey.KeyID + "/regenerate", nil},
		{"PATCH", "/v1/keys/" + bobKey.KeyID, map[string]string{"comments": "mine now"}},
		{"POST", "/v1/keys/" + bobKey.KeyID + "/disable", nil},
		{"POST", "/v1/keys/" + bobKey.KeyID + "/enable", nil},
	} {
		wantProblem(t, h.do(c.method, c.path, opsTok, c.body), http.StatusForbidden, "cross_owner_forbidden")
	}
	if v := h.verify(bobKey.Token, "", "", svcTok); v.Code != domain.OutcomeValid {
		t.Fatalf("bob's key after the attempts: %s", v.Code)
	}
	if r := h.do("GET", "/v1/keys/"+bobKey.KeyID, opsTok, nil); r.status != http.StatusOK {
		t.Fatalf("keyops views bob's key: %d %s", r.status, r.body)
	}
	if r := h.do("POST", "/v1/keys/"+bobKey.KeyID+"/revoke", opsTok, map[string]string{"reason": "ops"}); r.status != http.StatusOK {
		t.Fatalf("keyops revokes bob's key: %d %s", r.status, r.body)
	}

	for _, p := range []string{"api.key.regenerate.any", "api.key.rotate.any", "api.key.update.any", "api.key.create.any", "api.key.disable.any", "api.key.enable.any"} {
		r := h.do("POST", "/v1/roles", h.root, map[string]any{"name": "bad", "permissions": []string{domain.PermKeyView, p}})
		wantProblem(t, r, http.StatusBadRequest, "cross_owner_permission")
	}

	_, bothTok := h.principal("both", domain.RoleSuperadmin, domain.RoleKeyAdmin)
	wantProblem(t, h.do("POST", "/v1/keys", bothTok, map[string]any{"name": "x"}), http.StatusForbidden, "superadmin_cannot_issue_keys")
	wantProblem(t, h.do("POST", "/v1/keys", h.root, map[string]any{"name": "x"}), http.StatusForbidden, "insufficient_permissions")
}

// TestRoleRemovalTakesEffectAtVerification: carol's orders.write key stops
// verifying for orders.write once her orders role is removed, and works
// again when it is given back.
func TestRoleRemovalTakesEffectAtVerification(t *testing.T) {
	h := mustStart(t)
	_, svcTok := h.principal("gateway", domain.RoleVerifier)
	if r := h.do("POST", "/v1/roles", h.root, map[string]any{"name": "orders", "permissions": []string{"orders.write"}}); r.status != http.StatusCreated {
		t.Fatalf("create role: %d %s", r.status, r.body)
	}
	carol, carolTok := h.principal("carol", domain.RoleKeyAdmin, "orders")
	k := h.createKey(carolTok, map[string]any{"name": "orders", "permissions": []string{"orders.write"}})
	if v := h.verify(k.Token, "orders.write", "", svcTok); v.Code != domain.OutcomeValid {
		t.Fatalf("before: %s", v.Code)
	}
	setRoles := func(roles ...string) {
		t.Helper()
		if r := h.do("PATCH", "/v1/principals/"+carol, h.root, map[string]any{"roles": roles}); r.status != http.StatusOK {
			t.Fatalf("update carol: %d %s", r.status, r.body)
		}
	}
	setRoles(domain.RoleKeyAdmin)
	if v := h.verify(k.Token, "orders.write", "", svcTok); v.Code != domain.OutcomeInsufficientPermissions {
		t.Fatalf("after the role was removed: %s, want INSUFFICIENT_PERMISSIONS", v.Code)
	}
	if v := h.verify(k.Token, "", "", svcTok); v.Code != domain.OutcomeValid || len(v.Permissions) != 0 {
		t.Fatalf("with no permission asked: %s, permissions %v (want none left)", v.Code, v.Permissions)
	}
	setRoles(domain.RoleKeyAdmin, "orders")
	if v := h.verify(k.Token, "orders.write", "", svcTok); v.Code != domain.OutcomeValid {
		t.Fatalf("role given back: %s", v.Code)
	}
	// Deleting the role works the same way.
	if r := h.do("DELETE", "/v1/roles/orders", h.root, nil); r.status != http.StatusNoContent {
		t.Fatalf("delete role: %d %s", r.status, r.body)
	}
	if v := h.verify(k.Token, "orders.write", "", svcTok); v.Code != domain.OutcomeInsufficientPermissions {
		t.Fatalf("after the role was deleted: %s", v.Code)
	}
}

// TestRegenerateCappedAtMaximumLifetime: a 3650-day key regenerated twice
// expires 3650 days after the last regeneration, not 10,949 days out, and
// its history shows the old and new expiry of each regeneration.
func TestRegenerateCappedAtMaximumLifetime(t *testing.T) {
	h := mustStart(t)
	_, tok := h.principal("alice", domain.RoleKeyAdmin)
	k := h.createKey(tok, map[string]any{"name": "long", "lifetime_days": domain.MaxLifetimeDays})
	var last api.KeyView
	for range 2 {
		r := h.do("POST", "/v1/keys/"+k.KeyID+"/regenerate", tok, nil)
		if r.status != http.StatusOK {
			t.Fatalf("regenerate: %d %s", r.status, r.body)
		}
		r.json(t, &last)
	}
	limit := time.Now().Add(domain.MaxLifetimeDays*24*time.Hour + time.Minute)
	if last.ExpiresAt.After(limit) {
		t.Fatalf("expires %s, past now + %d days", last.ExpiresAt, domain.MaxLifetimeDays)
	}
	var history struct {
		Events []struct {
			Type string `json:"type"`
			Data struct {
				Previous  time.Time `json:"previous_expires_at"`
				ExpiresAt time.Time `json:"expires_at"`
			} `json:"data"`
		} `json:"events"`
	}
	h.do("GET", "/v1/keys/"+k.KeyID+"/events", tok, nil).json(t, &history)
	prev := k.ExpiresAt
	n := 0
	for _, e := range history.Events {
		if e.Type != domain.TypeKeyRegenerated {
			continue
		}
		n++
		if !e.Data.Previous.Equal(prev) || e.Data.ExpiresAt.IsZero() || e.Data.ExpiresAt.After(limit) {
			t.Fatalf("regeneration %d: %s -> %s, want from %s", n, e.Data.Previous, e.Data.ExpiresAt, prev)
		}
		prev = e.Data.ExpiresAt
	}
	if n != 2 || !prev.Equal(last.ExpiresAt) {
		t.Fatalf("%d regenerations in the history, last expiry %s, key's %s", n, prev, last.ExpiresAt)
	}
}

// TestNoLockout: a key-admin cannot revoke, disable or delete its last
// credential (409 last_credential) but can once it has another; the super
// administrator issues a locked-out principal a new credential, shown once
// and recorded; principal names are unique regardless of case.
func TestNoLockout(t *testing.T) {
	h := mustStart(t)
	bob, bobTok := h.principal("bob", domain.RoleKeyAdmin)
	var me api.MeView
	h.do("GET", "/v1/me", bobTok, nil).json(t, &me)
	first := me.Key.KeyID
	wantProblem(t, h.do("POST", "/v1/keys/"+first+"/revoke", bobTok, map[string]string{"reason": "oops"}), http.StatusConflict, "last_credential")
	wantProblem(t, h.do("POST", "/v1/keys/"+first+"/disable", bobTok, nil), http.StatusConflict, "last_credential")
	wantProblem(t, h.do("DELETE", "/v1/keys/"+first, bobTok, nil), http.StatusConflict, "last_credential")
	// With a second credential the first can go.
	svcKey := h.createKey(bobTok, map[string]any{"name": "viewer", "permissions": []string{domain.PermKeyView}})
	if r := h.do("POST", "/v1/keys/"+first+"/revoke", bobTok, map[string]string{"reason": "rotating out"}); r.status != http.StatusOK {
		t.Fatalf("revoke with another credential left: %d %s", r.status, r.body)
	}
	// The super administrator may still revoke bob's last credential; bob
	// is then locked out until it issues him a new one.
	if r := h.do("POST", "/v1/keys/"+svcKey.KeyID+"/revoke", h.root, map[string]string{"reason": "leaked"}); r.status != http.StatusOK {
		t.Fatalf("superadmin revokes bob's last credential: %d %s", r.status, r.body)
	}
	r := h.do("POST", "/v1/principals/"+bob+"/credentials", h.root, map[string]any{"name": "recovery"})
	if r.status != http.StatusCreated {
		t.Fatalf("issue credential: %d %s", r.status, r.body)
	}
	var cred api.CreatedKey
	r.json(t, &cred)
	if cred.Token == "" || cred.Owner != bob || cred.Name != "recovery" {
		t.Fatalf("credential %+v", cred)
	}
	if r := h.do("GET", "/v1/me", cred.Token, nil); r.status != http.StatusOK {
		t.Fatalf("bob with the new credential: %d %s", r.status, r.body)
	}
	if r := h.do("GET", "/v1/keys/"+cred.KeyID, cred.Token, nil); r.status != http.StatusOK || strings.Contains(string(r.body), cred.Token) {
		t.Fatalf("the credential's token must be shown only once: %d %s", r.status, r.body)
	}
	var history struct {
		Events []api.EventView `json:"events"`
	}
	h.do("GET", "/v1/keys/"+cred.KeyID+"/events", h.root, nil).json(t, &history)
	if len(history.Events) != 1 || history.Events[0].Type != domain.TypeKeyCreated || history.Events[0].Actor == bob {
		t.Fatalf("credential history %+v", history.Events)
	}
	// Nobody issues a credential to itself, and the super administrator
	// never creates a key for itself this way either.
	var rootMe api.MeView
	h.do("GET", "/v1/me", h.root, nil).json(t, &rootMe)
	wantProblem(t, h.do("POST", "/v1/principals/"+rootMe.Principal.ID+"/credentials", h.root, nil), http.StatusForbidden, "credential_to_self")
	wantProblem(t, h.do("POST", "/v1/principals/"+bob+"/credentials", cred.Token, nil), http.StatusForbidden, "insufficient_permissions")

	for _, name := range []string{"bob", "BOB", " Bob "} {
		wantProblem(t, h.do("POST", "/v1/principals", h.root, map[string]any{"name": name, "roles": []string{domain.RoleKeyAdmin}}), http.StatusConflict, "principal_name_taken")
	}
	carol, _ := h.principal("carol", domain.RoleKeyAdmin)
	wantProblem(t, h.do("PATCH", "/v1/principals/"+carol, h.root, map[string]any{"name": "Bob"}), http.StatusConflict, "principal_name_taken")
	if r := h.do("PATCH", "/v1/principals/"+carol, h.root, map[string]any{"name": "Carol"}); r.status != http.StatusOK {
		t.Fatalf("renaming carol to Carol: %d %s", r.status, r.body)
	}
}

// TestNamesRefuseInvisibleCharacters: names and comments with direction
// overrides, zero-width or control characters are refused with nothing
// appended; names are stored trimmed and in NFC.
func TestNamesRefuseInvisibleCharacters(t *testing.T) {
	h := mustStart(t)
	pid, tok := h.principal("dana", domain.RoleKeyAdmin)
	before := h.count(domain.StreamKeys)
	for _, c := range []struct {
		body map[string]any
		code string
	}{
		{map[string]any{"name": "safe\u202eexe.txt"}, "invalid_name"},
		{map[string]any{"name": "\u200b"}, "invalid_name"},
		{map[string]any{"name": "   "}, "invalid_name"},
		{map[string]any{"name": "a\u2067b"}, "invalid_name"},
		{map[string]any{"name": "bell\u0007"}, "invalid_name"},
		{map[string]any{"name": "ok", "comments": "see \u202eenil"}, "invalid_comments"},
	} {
		wantProblem(t, h.do("POST", "/v1/keys", tok, c.body), http.StatusBadRequest, c.code)
	}
	wantProblem(t, h.do("POST", "/v1/principals", h.root, map[string]any{"name": "eve\u200d", "roles": []string{domain.RoleKeyAdmin}}), http.StatusBadRequest, "invalid_name")
	wantProblem(t, h.do("PATCH", "/v1/principals/"+pid, h.root, map[string]any{"name": "\u2066dana"}), http.StatusBadRequest, "invalid_name")
	if got := h.count(domain.StreamKeys); got != before {
		t.Fatalf("refused requests appended %d events", got-before)
	}
	k := h.createKey(tok, map[string]any{"name": "  Zoe\u0308  ", "comments": "line one\nline two"})
	if k.Name != "Zoë" || k.Comments != "line one\nline two" {
		t.Fatalf("stored name %+q, comments %+q", k.Name, k.Comments)
	}
}
