package api_test

import (
	"net/http"
	"slices"
	"testing"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

// TestUpdateKeyAllowedIPsAndMetadata edits a key's address restriction and
// labels through PATCH, and checks that verification follows at once.
func TestUpdateKeyAllowedIPsAndMetadata(t *testing.T) {
	h := mustStart(t)
	_, tok := h.principal("admin", domain.RoleKeyAdmin, domain.RoleVerifier)
	r := h.do("POST", "/v1/keys", tok, map[string]any{"name": "svc", "permissions": []string{domain.PermVerify}, "metadata": map[string]string{"team": "a"}})
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var k api.CreatedKey
	r.json(t, &k)

	r = h.do("PATCH", "/v1/keys/"+k.KeyID, tok, map[string]any{"allowed_ips": []string{"10.0.0.0/8"}, "metadata": map[string]string{"team": "b", "ticket": "T-1"}})
	if r.status != http.StatusOK {
		t.Fatalf("patch: %d %s", r.status, r.body)
	}
	var v api.KeyView
	r.json(t, &v)
	if !slices.Equal(v.AllowedIPs, []string{"10.0.0.0/8"}) || v.Metadata["team"] != "b" || v.Metadata["ticket"] != "T-1" {
		t.Fatalf("after patch: %+v", v)
	}
	if got := h.verify(k.Token, domain.PermVerify, "192.0.2.1", tok); got.Valid {
		t.Fatalf("a key restricted to 10/8 verified from 192.0.2.1: %+v", got)
	}
	if got := h.verify(k.Token, domain.PermVerify, "10.1.2.3", tok); !got.Valid {
		t.Fatalf("a key restricted to 10/8 did not verify from 10.1.2.3: %+v", got)
	}

	// Empty values lift the restriction and clear the labels.
	r = h.do("PATCH", "/v1/keys/"+k.KeyID, tok, map[string]any{"allowed_ips": []string{}, "metadata": map[string]string{}})
	if r.status != http.StatusOK {
		t.Fatalf("patch: %d %s", r.status, r.body)
	}
	v = api.KeyView{}
	r.json(t, &v)
	if len(v.AllowedIPs) != 0 || len(v.Metadata) != 0 {
		t.Fatalf("after clearing: %+v", v)
	}
	if got := h.verify(k.Token, domain.PermVerify, "192.0.2.1", tok); !got.Valid {
		t.Fatalf("an unrestricted key did not verify: %+v", got)
	}
	// The same values again change nothing; a bad prefix is refused.
	if r = h.do("PATCH", "/v1/keys/"+k.KeyID, tok, map[string]any{"allowed_ips": []string{}}); r.problemCode(t) != "nothing_to_update" {
		t.Fatalf("no-op patch: %d %s", r.status, r.body)
	}
	if r = h.do("PATCH", "/v1/keys/"+k.KeyID, tok, map[string]any{"allowed_ips": []string{"10.0.0.1/8"}}); r.status != http.StatusBadRequest {
		t.Fatalf("host bits: %d %s", r.status, r.body)
	}
}

// TestPrincipalEmail sets, changes and removes a principal's e-mail.
func TestPrincipalEmail(t *testing.T) {
	h := mustStart(t)
	r := h.do("POST", "/v1/principals", h.root, map[string]any{"name": "ana", "email": "ana@example.com", "roles": []string{domain.RoleKeyAdmin}})
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var cp api.CreatedPrincipal
	r.json(t, &cp)
	if cp.Email != "ana@example.com" {
		t.Fatalf("email %q", cp.Email)
	}
	r = h.do("PATCH", "/v1/principals/"+cp.ID, h.root, map[string]any{"email": "ana@example.org"})
	var pv api.PrincipalView
	r.json(t, &pv)
	if r.status != http.StatusOK || pv.Email != "ana@example.org" {
		t.Fatalf("patch: %d %s", r.status, r.body)
	}
	r = h.do("PATCH", "/v1/principals/"+cp.ID, h.root, map[string]any{"email": ""})
	pv = api.PrincipalView{}
	r.json(t, &pv)
	if r.status != http.StatusOK || pv.Email != "" {
		t.Fatalf("remove: %d %s", r.status, r.body)
	}
	if r = h.do("PATCH", "/v1/principals/"+cp.ID, h.root, map[string]any{"email": "not an address"}); r.problemCode(t) != "invalid_email" {
		t.Fatalf("bad email: %d %s", r.status, r.body)
	}
}
