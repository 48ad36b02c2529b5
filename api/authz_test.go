package api_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

// TestAuthorizationMatrix calls every key route as every built-in role, on
// a key of the caller's own and on another principal's key, and asserts
// the exact status. A key-admin must never learn that another's key exists
// (404), the super administrator may view, revoke and delete any key but
// never create or regenerate one.
func TestAuthorizationMatrix(t *testing.T) {
	h := mustStart(t)
	rootMe := h.do("GET", "/v1/me", h.root, nil)
	var me api.MeView
	rootMe.json(t, &me)
	type actor struct {
		name, id, token string
	}
	adminID, adminTok := h.principal("admin", domain.RoleKeyAdmin)
	otherID, _ := h.principal("other admin", domain.RoleKeyAdmin)
	audID, audTok := h.principal("auditor", domain.RoleAuditor)
	verID, verTok := h.principal("verifier", domain.RoleVerifier)
	actors := []actor{
		{"superadmin", me.Principal.ID, h.root},
		{"key-admin", adminID, adminTok},
		{"auditor", audID, audTok},
		{"verifier", verID, verTok},
	}
	// Expected status per role for [own key, another principal's key].
	type want map[string][2]int
	routes := []struct {
		method, path string // path has %s for the key id
		body         any
		disabled     bool // the target must be disabled first
		want         want
	}{
		{"GET", "/v1/keys/%s", nil, false, want{"superadmin": {200, 200}, "key-admin": {200, 404}, "auditor": {200, 200}, "verifier": {403, 403}}},
		{"GET", "/v1/keys/%s/events", nil, false, want{"superadmin": {200, 200}, "key-admin": {200, 404}, "auditor": {200, 200}, "verifier": {403, 403}}},
		{"PATCH", "/v1/keys/%s", map[string]string{"comments": "changed"}, false, want{"superadmin": {403, 403}, "key-admin": {200, 404}, "auditor": {403, 403}, "verifier": {403, 403}}},
		{"POST", "/v1/keys/%s/regenerate", map[string]bool{"rotate": true}, false, want{"superadmin": {403, 403}, "key-admin": {200, 404}, "auditor": {403, 403}, "verifier": {403, 403}}},
		{"POST", "/v1/keys/%s/revoke", map[string]string{"reason": "matrix"}, false, want{"superadmin": {200, 200}, "key-admin": {200, 404}, "auditor": {403, 403}, "verifier": {403, 403}}},
		{"POST", "/v1/keys/%s/disable", nil, false, want{"superadmin": {403, 403}, "key-admin": {200, 404}, "auditor": {403, 403}, "verifier": {403, 403}}},
		{"POST", "/v1/keys/%s/enable", nil, true, want{"superadmin": {403, 403}, "key-admin": {200, 404}, "auditor": {403, 403}, "verifier": {403, 403}}},
		{"DELETE", "/v1/keys/%s", nil, false, want{"superadmin": {200, 200}, "key-admin": {200, 404}, "auditor": {403, 403}, "verifier": {403, 403}}},
	}
	for _, rt := range routes {
		for _, a := range actors {
			for i, whose := range []string{"own", "other"} {
				name := fmt.Sprintf("%s %s as %s on %s key", rt.method, strings.ReplaceAll(rt.path, "%s", "{id}"), a.name, whose)
				t.Run(name, func(t *testing.T) {
					owner := a.id
					if whose == "other" {
						owner = otherID
					}
					id, _ := h.mintKey(owner, "orders.read")
					if rt.disabled {
						h.disable(id)
					}
					before, _ := h.state.Key(id)
					r := h.do(rt.method, fmt.Sprintf(rt.path, id), a.token, rt.body)
					if got, want := r.status, rt.want[a.name][i]; got != want {
						t.Fatalf("status = %d, want %d (%s)", got, want, r.body)
					}
					after, _ := h.state.Key(id)
					changed := after.Version != before.Version
					if mutating := rt.method != "GET"; mutating && changed != (r.status == 200) {
						t.Fatalf("key changed = %v with status %d", changed, r.status)
					}
					if r.status == 404 {
						// The answer must be the same as for a key that
						// never existed, apart from the path echoed back.
						ghost := uuid.Must(uuid.NewV7()).String()
						g := h.do(rt.method, fmt.Sprintf(rt.path, ghost), a.token, rt.body)
						if g.status != 404 || strings.ReplaceAll(string(g.body), ghost, id) != string(r.body) {
							t.Fatalf("hidden key answers differently from a missing one:\n%s\n%s", r.body, g.body)
						}
					}
				})
			}
		}
	}

	// Routes without a key id.
	flat := []struct {
		method, path string
		body         any
		want         map[string]int
	}{
		{"POST", "/v1/keys", map[string]any{"name": "matrix", "permissions": []string{}}, map[string]int{"superadmin": 403, "key-admin": 201, "auditor": 403, "verifier": 403}},
		{"GET", "/v1/keys", nil, map[string]int{"superadmin": 200, "key-admin": 200, "auditor": 200, "verifier": 403}},
		{"POST", "/v1/verify", map[string]string{"token": "klk_x"}, map[string]int{"superadmin": 403, "key-admin": 403, "auditor": 403, "verifier": 200}},
		{"GET", "/v1/me", nil, map[string]int{"superadmin": 200, "key-admin": 200, "auditor": 200, "verifier": 200}},
		{"GET", "/v1/roles", nil, map[string]int{"superadmin": 200, "key-admin": 200, "auditor": 200, "verifier": 200}},
		{"GET", "/v1/principals", nil, map[string]int{"superadmin": 200, "key-admin": 403, "auditor": 403, "verifier": 403}},
		{"GET", "/v1/principals/" + adminID, nil, map[string]int{"superadmin": 200, "key-admin": 403, "auditor": 403, "verifier": 403}},
		{"PATCH", "/v1/principals/" + otherID, map[string]any{"max_keys": 7}, map[string]int{"superadmin": 200, "key-admin": 403, "auditor": 403, "verifier": 403}},
		{"POST", "/v1/principals", map[string]any{"name": "p", "roles": []string{"auditor"}}, map[string]int{"superadmin": 201, "key-admin": 403, "auditor": 403, "verifier": 403}},
		{"POST", "/v1/roles", map[string]any{"name": "role-%s", "permissions": []string{"orders.read"}}, map[string]int{"superadmin": 201, "key-admin": 403, "auditor": 403, "verifier": 403}},
	}
	for _, rt := range flat {
		for _, a := range actors {
			t.Run(fmt.Sprintf("%s %s as %s", rt.method, rt.path, a.name), func(t *testing.T) {
				body := rt.body
				if m, ok := body.(map[string]any); ok && m["name"] == "role-%s" {
					body = map[string]any{"name": "role-" + a.name, "permissions": m["permissions"]}
				}
				r := h.do(rt.method, rt.path, a.token, body)
				if got, want := r.status, rt.want[a.name]; got != want {
					t.Fatalf("status = %d, want %d (%s)", got, want, r.body)
				}
			})
		}
	}

	// Every authenticated route refuses a missing or forged token.
	for _, r := range h.srv.Routes() {
		if r.Permission == "" && !strings.HasPrefix(r.Pattern, "/v1/") {
			continue
		}
		path := strings.NewReplacer("{id}", otherID, "{name}", "x").Replace(r.Pattern)
		for _, tok := range []string{"", "klk_forged"} {
			res := h.do(r.Method, path, tok, nil)
			if res.status != http.StatusUnauthorized {
				t.Errorf("%s %s with token %q: status %d, want 401", r.Method, path, tok, res.status)
			}
		}
	}

	// A key-admin's grid shows only its own keys; the auditor's shows all.
	otherKey, _ := h.mintKey(otherID)
	var page api.KeyPage
	h.do("GET", "/v1/keys?status=all&limit=500", adminTok, nil).json(t, &page)
	for _, k := range page.Keys {
		if k.Owner != adminID {
			t.Fatalf("key-admin sees key %s of %s", k.KeyID, k.Owner)
		}
	}
	h.do("GET", "/v1/keys?status=all&limit=500", audTok, nil).json(t, &page)
	found := false
	for _, k := range page.Keys {
		found = found || k.KeyID == otherKey
	}
	if !found {
		t.Fatal("auditor does not see another principal's key")
	}
}
