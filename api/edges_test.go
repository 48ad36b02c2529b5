package api_test

import (
	"net/http"
	"testing"

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
	if v := h.verify(k.Token, "", "", svcTok); v.Code != domain.OutcomeValid {
		t.Fatalf("with no permission asked: %s", v.Code)
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
