package api_test

import (
	"context"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

func createKey(t testing.TB, h *harness, token string, body map[string]any) api.CreatedKey {
	if t == nil {
		t = h.t
	}
	t.Helper()
	r := h.do("POST", "/v1/keys", token, body)
	if r.status != http.StatusCreated {
		t.Fatalf("create key: %d %s", r.status, r.body)
	}
	var k api.CreatedKey
	r.json(t, &k)
	return k
}

// TestVerifyEveryOutcome drives each outcome code through POST /v1/verify
// and checks that each verification is recorded on USAGE before the answer.
func TestVerifyEveryOutcome(t *testing.T) {
	h := mustStart(t)
	adminID, admin := h.principal("admin", domain.RoleKeyAdmin, domain.RoleVerifier)
	verifierID, verifier := h.principal("verifier", domain.RoleVerifier)
	verifierTok, err := domain.ParseToken(verifier)
	must(t, err)
	verifierKey := verifierTok.KeyID.String()
	k := createKey(t, h, admin, map[string]any{"name": "svc", "permissions": []string{"api.verify"}, "allowed_ips": []string{"10.0.0.0/8"}, "lifetime_days": 1})
	open := createKey(t, h, admin, map[string]any{"name": "open", "permissions": []string{}})
	ip := "10.1.2.3"

	check := func(name, token, perm, ip, want string) api.VerifyResponse {
		t.Helper()
		before := h.count(domain.StreamUsage)
		v := h.verify(token, perm, ip, verifier)
		if v.Code != want || v.Valid != (want == domain.OutcomeValid) {
			t.Fatalf("%s: code %s valid %v, want %s", name, v.Code, v.Valid, want)
		}
		// One event is stored by the time the answer arrives: the
		// verification, which names its caller's key.
		if got := h.count(domain.StreamUsage); got != before+1 {
			t.Fatalf("%s: USAGE grew by %d, want 1", name, got-before)
		}
		ev := usageEvent(t, h, before+1)
		if ev.ID.String() != v.EventID || ev.Actor != verifierID {
			t.Fatalf("%s: stored event %s by %s, answer names %s", name, ev.ID, ev.Actor, v.EventID)
		}
		d, _ := ev.Decode()
		var caller string
		switch e := d.(type) {
		case domain.KeyUsed:
			caller = e.CallerKey
		case domain.KeyDenied:
			caller = e.CallerKey
		}
		if caller != verifierKey {
			t.Fatalf("%s: the event names caller key %q, want the verifier's %s", name, caller, verifierKey)
		}
		return v
	}
	v := check("valid", k.Token, "api.verify", ip, domain.OutcomeValid)
	if v.KeyID != k.KeyID || v.Owner != adminID || v.ExpiresAt == nil || len(v.Permissions) != 1 {
		t.Fatalf("valid answer incomplete: %+v", v)
	}
	check("malformed", "klk_not-a-token", "", ip, domain.OutcomeMalformed)
	check("truncated", k.Token[:len(k.Token)-1], "", ip, domain.OutcomeMalformed)
	// Re-encode a token with the same id and another secret: well formed,
	// right checksum, wrong secret.
	tok, err := domain.ParseToken(k.Token)
	must(t, err)
	tok.Secret[0] ^= 0xff
	check("invalid secret", domain.FormatToken(tok.KeyID, tok.Secret), "", ip, domain.OutcomeInvalidSecret)
	tok.KeyID[15] ^= 0xff
	check("not found", domain.FormatToken(tok.KeyID, tok.Secret), "", ip, domain.OutcomeNotFound)
	check("ip not allowed", k.Token, "", "192.0.2.1", domain.OutcomeIPNotAllowed)
	check("no ip for restricted key", k.Token, "", "", domain.OutcomeIPNotAllowed)
	check("no ip for open key", open.Token, "", "", domain.OutcomeValid)
	check("insufficient permissions", k.Token, "orders.write", ip, domain.OutcomeInsufficientPermissions)

	h.do("POST", "/v1/keys/"+k.KeyID+"/disable", admin, nil)
	check("disabled", k.Token, "", ip, domain.OutcomeDisabled)
	h.do("POST", "/v1/keys/"+k.KeyID+"/enable", admin, nil)
	check("enabled again", k.Token, "", ip, domain.OutcomeValid)

	// A disabled owner's keys stop verifying, and work again with it.
	h.do("POST", "/v1/principals/"+adminID+"/disable", h.root, nil)
	check("owner disabled", k.Token, "", ip, domain.OutcomeDisabled)
	h.do("POST", "/v1/principals/"+adminID+"/enable", h.root, nil)
	check("owner enabled", k.Token, "", ip, domain.OutcomeValid)

	// Rotation: both secrets work during the grace period, only the new
	// one after it.
	r := h.do("POST", "/v1/keys/"+k.KeyID+"/regenerate", admin, map[string]any{"rotate": true, "grace_period": "1h"})
	var rotated api.CreatedKey
	r.json(t, &rotated)
	if rotated.Token == "" || rotated.Token == k.Token {
		t.Fatalf("rotation returned no new token: %s", r.body)
	}
	check("old secret in grace", k.Token, "", ip, domain.OutcomeValid)
	check("new secret", rotated.Token, "", ip, domain.OutcomeValid)
	h.advance(61 * time.Minute)
	check("old secret after grace", k.Token, "", ip, domain.OutcomeInvalidSecret)
	check("new secret after grace", rotated.Token, "", ip, domain.OutcomeValid)

	// Regenerating without rotation extends the lifetime and keeps the secret.
	h.advance(3 * 24 * time.Hour)
	check("expired", rotated.Token, "", ip, domain.OutcomeExpired)
	r = h.do("POST", "/v1/keys/"+k.KeyID+"/regenerate", admin, nil)
	if r.status != 200 || strings.Contains(string(r.body), `"token"`) {
		t.Fatalf("plain regenerate: %d %s", r.status, r.body)
	}
	check("regenerated", rotated.Token, "", ip, domain.OutcomeValid)

	// Revocation is effective the moment the call returns: no polling.
	if r := h.do("POST", "/v1/keys/"+k.KeyID+"/revoke", admin, map[string]string{"reason": "leaked"}); r.status != 200 {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
	check("revoked", rotated.Token, "", ip, domain.OutcomeRevoked)
	if r := h.do("DELETE", "/v1/keys/"+k.KeyID, admin, nil); r.status != 200 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	check("deleted", rotated.Token, "", ip, domain.OutcomeRevoked)
	if r := h.do("GET", "/v1/keys/"+k.KeyID, admin, nil); r.status != 200 || !strings.Contains(string(r.body), `"deleted"`) {
		t.Fatalf("deleted key view: %d %s", r.status, r.body)
	}
	var page api.KeyPage
	h.do("GET", "/v1/keys", admin, nil).json(t, &page)
	for _, key := range page.Keys {
		if key.KeyID == k.KeyID {
			t.Fatal("a deleted key is in the default grid")
		}
	}
	var events struct {
		Events []api.EventView `json:"events"`
	}
	h.do("GET", "/v1/keys/"+k.KeyID+"/events", admin, nil).json(t, &events)
	var types []string
	for _, e := range events.Events {
		types = append(types, e.Type)
	}
	want := "key.created key.disabled key.enabled key.regenerated key.regenerated key.revoked key.deleted"
	if got := strings.Join(types, " "); got != want {
		t.Fatalf("events = %s\nwant     %s", got, want)
	}
	for i, e := range events.Events {
		if i > 0 && e.PrevHash != events.Events[i-1].Hash {
			t.Fatalf("event %d breaks the hash chain", i)
		}
	}
}

// TestPlanLimit caps active keys per principal; a revoked key frees a slot.
func TestPlanLimit(t *testing.T) {
	h := mustStart(t)
	r := h.do("POST", "/v1/principals", h.root, map[string]any{"name": "small", "roles": []string{"key-admin"}, "max_keys": 2})
	var p api.CreatedPrincipal
	r.json(t, &p)
	tok := p.Credential.Token // the credential is active key 1 of 2
	k := createKey(t, h, tok, map[string]any{"name": "second"})
	r = h.do("POST", "/v1/keys", tok, map[string]any{"name": "third"})
	if r.status != http.StatusConflict || r.problemCode(t) != "plan_limit_reached" {
		t.Fatalf("over the limit: %d %s", r.status, r.body)
	}
	h.do("POST", "/v1/keys/"+k.KeyID+"/revoke", tok, map[string]string{"reason": "make room"})
	createKey(t, h, tok, map[string]any{"name": "third"})
}

// TestNoSecretStoredOrLogged collects every token the API ever handed out
// and searches every stored event of every stream and every log line for
// the token or its secret in any encoding the code uses.
func TestNoSecretStoredOrLogged(t *testing.T) {
	h := mustStart(t)
	_, admin := h.principal("admin", domain.RoleKeyAdmin, domain.RoleVerifier)
	tokens := []string{h.root, admin}
	k := createKey(t, h, admin, map[string]any{"name": "a"})
	tokens = append(tokens, k.Token)
	r := h.do("POST", "/v1/keys/"+k.KeyID+"/regenerate", admin, map[string]any{"rotate": true, "grace_period": "1m"})
	var rot api.CreatedKey
	r.json(t, &rot)
	tokens = append(tokens, rot.Token)
	for _, tk := range tokens {
		h.verify(tk, "", "127.0.0.1", admin)
		h.verify(tk+"x", "", "127.0.0.1", admin) // malformed variants too
	}
	var needles []string
	for _, tk := range tokens {
		p, err := domain.ParseToken(tk)
		must(t, err)
		enc := tk[len(domain.TokenPrefix)+26 : len(tk)-7]
		needles = append(needles, tk, enc, hex.EncodeToString(p.Secret[:]), string(p.Secret[:]))
	}
	var hay []string
	for _, stream := range []string{domain.StreamKeys, domain.StreamUsage} {
		n := h.count(stream)
		s, err := h.store.JetStream().Stream(context.Background(), stream)
		must(t, err)
		for seq := uint64(1); seq <= n; seq++ {
			m, err := s.GetMsg(context.Background(), seq)
			if err != nil {
				t.Fatalf("%s seq %d: %v", stream, seq, err)
			}
			hay = append(hay, string(m.Data))
		}
	}
	if len(hay) < 10 {
		t.Fatalf("only %d stored events searched", len(hay))
	}
	hay = append(hay, h.logs.String())
	for _, n := range needles {
		for _, s := range hay {
			if strings.Contains(s, n) {
				t.Fatalf("a secret appears in stored data or logs: %.80s", s)
			}
		}
	}
}

// usageEvent decodes the USAGE message at seq.
func usageEvent(t *testing.T, h *harness, seq uint64) domain.Envelope {
	t.Helper()
	st, err := h.store.JetStream().Stream(context.Background(), domain.StreamUsage)
	must(t, err)
	m, err := st.GetMsg(context.Background(), seq)
	must(t, err)
	env, err := domain.UnmarshalEnvelope(m.Data)
	must(t, err)
	return env
}
