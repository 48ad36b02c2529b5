package client_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/api/client"
	"github.com/keyledger/keyledger/api/client/clienttest"
	"github.com/keyledger/keyledger/domain"
)

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustClient(t *testing.T, url, token string) *client.Client {
	t.Helper()
	c, err := client.New(url, token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// world is a deployment with a key-admin, a verifying service and keys in
// every state.
type world struct {
	d                    *clienttest.Deployment
	root, admin, service *client.Client
	adminID              string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	d := clienttest.Start(t)
	w := &world{d: d, root: mustClient(t, d.Node.HTTP.URL, d.Root)}
	if _, err := w.root.CreateRole(ctx(t), "orders", []string{"orders.read", "orders.write"}, ""); err != nil {
		t.Fatal(err)
	}
	adm, err := w.root.CreatePrincipal(ctx(t), client.CreatePrincipalRequest{Name: "payments", Roles: []string{domain.RoleKeyAdmin, "orders"}})
	if err != nil {
		t.Fatal(err)
	}
	w.adminID = adm.ID
	w.admin = w.root.WithToken(adm.Credential.Token)
	svc, err := w.root.CreatePrincipal(ctx(t), client.CreatePrincipalRequest{Name: "gateway", Roles: []string{domain.RoleVerifier}})
	if err != nil {
		t.Fatal(err)
	}
	w.service = w.root.WithToken(svc.Credential.Token)
	return w
}

func (w *world) key(t *testing.T, req client.CreateKeyRequest) client.CreatedKey {
	t.Helper()
	k, err := w.admin.CreateKey(ctx(t), req)
	if err != nil {
		t.Fatalf("create key: %v", err)
	}
	return k
}

// TestRequireKeyMapsOutcomes puts the middleware, verifying over HTTP, in
// front of a handler: a valid key reaches it with the verification in
// its context, and every other outcome gets its status and code.
func TestRequireKeyMapsOutcomes(t *testing.T) {
	w := newWorld(t)
	valid := w.key(t, client.CreateKeyRequest{Name: "valid", Permissions: []string{"orders.read"}})
	revoked := w.key(t, client.CreateKeyRequest{Name: "revoked"})
	disabled := w.key(t, client.CreateKeyRequest{Name: "disabled"})
	expiring := w.key(t, client.CreateKeyRequest{Name: "expiring", LifetimeDays: 1})
	fenced := w.key(t, client.CreateKeyRequest{Name: "fenced", AllowedIPs: []string{"192.0.2.0/24"}})
	if _, err := w.admin.Revoke(ctx(t), revoked.KeyID, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.admin.Disable(ctx(t), disabled.KeyID, "test"); err != nil {
		t.Fatal(err)
	}
	mw := &client.Middleware{Verifier: w.service, ClientIP: func(*http.Request) string { return "198.51.100.7" }}
	h := mw.RequireKey("orders.read")(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		v, ok := client.FromContext(r.Context())
		if !ok || !v.Valid {
			t.Errorf("handler reached without a verified key: %+v", v)
		}
		_, _ = io.WriteString(rw, v.KeyID)
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()

	w.d.Advance(2 * 24 * time.Hour) // expiring has expired; the others live 90 days
	for _, c := range []struct {
		name, token string
		status      int
		code        string
	}{
		{"valid", valid.Token, 200, ""},
		{"missing", "", 401, "missing_token"},
		{"malformed", "klk_nonsense", 401, "token_malformed"},
		{"not found", mustOtherID(t, valid.Token), 401, "token_invalid"},
		{"invalid secret", flipSecret(t, valid.Token), 401, "token_invalid"},
		{"revoked", revoked.Token, 401, "token_revoked"},
		{"disabled", disabled.Token, 401, "token_disabled"},
		{"expired", expiring.Token, 401, "token_expired"},
		{"ip not allowed", fenced.Token, 401, "token_ip_not_allowed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", srv.URL+"/orders", nil)
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", res.StatusCode, c.status, body)
			}
			if c.code == "" {
				if string(body) != valid.KeyID {
					t.Errorf("handler answered %q, want the key id", body)
				}
				return
			}
			if ct := res.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type %q", ct)
			}
			var p api.Problem
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatal(err)
			}
			if p.Code != c.code || p.Status != c.status {
				t.Errorf("problem %+v, want code %s", p, c.code)
			}
		})
	}

	// A valid key without the permission is forbidden.
	h2 := client.RequireKey(w.service, "orders.write")(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		t.Error("handler reached without the permission")
	}))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/orders", nil)
	req.Header.Set("Authorization", "Bearer "+valid.Token)
	h2.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden || client.ProblemError(rec.Code, rec.Header().Get("Content-Type"), rec.Body.Bytes()).Code != "token_insufficient_permissions" {
		t.Errorf("without permission: %d %s", rec.Code, rec.Body)
	}

	// A configured header instead of Authorization.
	m := &client.Middleware{Verifier: w.service, Header: "X-Api-Key"}
	rec = httptest.NewRecorder()
	req = httptest.NewRequest("GET", "/orders", nil)
	req.Header.Set("X-Api-Key", valid.Token)
	m.RequireKey("")(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) { rw.WriteHeader(204) })).ServeHTTP(rec, req)
	if rec.Code != 204 {
		t.Errorf("X-Api-Key: %d %s", rec.Code, rec.Body)
	}

	// The server being away is not a rejected key: 503, fail closed.
	away := mustClient(t, "http://127.0.0.1:1", "klk_x")
	rec = httptest.NewRecorder()
	req = httptest.NewRequest("GET", "/orders", nil)
	req.Header.Set("Authorization", "Bearer "+valid.Token)
	client.RequireKey(away, "")(http.NotFoundHandler()).ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("server away: %d %s", rec.Code, rec.Body)
	}
}

// TestClientErrorsCarryCode: problem documents become *client.Error with
// the server's stable code.
func TestClientErrorsCarryCode(t *testing.T) {
	w := newWorld(t)
	k := w.key(t, client.CreateKeyRequest{Name: "one"})
	if _, err := w.admin.Revoke(ctx(t), k.KeyID, "first"); err != nil {
		t.Fatal(err)
	}
	_, err := w.admin.Revoke(ctx(t), k.KeyID, "again")
	var e *client.Error
	if !asError(err, &e) || e.Code != "key_revoked" || e.Status != http.StatusConflict {
		t.Errorf("second revoke: %v", err)
	}
	if _, err := w.admin.Principals(ctx(t)); client.ErrorCode(err) != "insufficient_permissions" {
		t.Errorf("key-admin lists principals: %v", err)
	}
	if _, err := w.admin.WithToken("klk_nope").Me(ctx(t)); client.ErrorCode(err) != "token_malformed" {
		t.Errorf("bad token: %v", err)
	}
	if _, err := mustClient(t, "http://127.0.0.1:1", "").Me(ctx(t)); client.ErrorCode(err) != client.CodeUnreachable {
		t.Errorf("nothing listening: %v", err)
	}
	if _, err := client.New("ftp://x", ""); client.ErrorCode(err) != "bad_url" {
		t.Errorf("ftp url: %v", err)
	}
}

// TestClientCoversTheRoutes walks keys, principals, roles, verification
// and usage through the typed client.
func TestClientCoversTheRoutes(t *testing.T) {
	w := newWorld(t)
	c := ctx(t)
	if _, err := w.root.CreateRole(c, "reports", []string{"reports.read", "reports.write"}, "reports"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.root.UpdateRole(c, "reports", []string{"reports.read"}, nil); err != nil {
		t.Fatal(err)
	}
	roles, err := w.root.Roles(c)
	if err != nil || len(roles) < 6 {
		t.Fatalf("roles %v %v", roles, err)
	}
	k := w.key(t, client.CreateKeyRequest{Name: "a", Comments: "c", Metadata: map[string]string{"t": "1"}})
	name := "renamed"
	if v, err := w.admin.UpdateKey(c, k.KeyID, client.KeyUpdate{Name: &name}); err != nil || v.Name != name {
		t.Fatalf("update: %+v %v", v, err)
	}
	rot, err := w.admin.Regenerate(c, k.KeyID, true, time.Minute)
	if err != nil || rot.Token == "" || rot.Token == k.Token {
		t.Fatalf("rotate: %+v %v", rot, err)
	}
	page, err := w.admin.ListKeys(c, client.KeyFilter{Status: "all", Limit: 10})
	if err != nil || len(page.Keys) != 2 { // the admin's credential and k
		t.Fatalf("list: %d keys %v", len(page.Keys), err)
	}
	v, err := w.service.Verify(c, client.VerifyRequest{Token: rot.Token})
	if err != nil || !v.Valid || v.KeyID != k.KeyID {
		t.Fatalf("verify: %+v %v", v, err)
	}
	u, err := w.service.PublishUsage(c, []client.UsageRecord{{RecordID: "r1", KeyID: k.KeyID, Outcome: "VALID", Endpoint: "GET /x", HTTPStatus: 200, Units: 1}})
	if err != nil || u.Stored != 1 {
		t.Fatalf("usage: %+v %v", u, err)
	}
	if _, err := w.admin.Disable(c, k.KeyID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := w.admin.Enable(c, k.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.admin.DeleteKey(c, k.KeyID, "done"); err != nil {
		t.Fatal(err)
	}
	evs, err := w.admin.KeyEvents(c, k.KeyID)
	if err != nil || len(evs) < 6 {
		t.Fatalf("events: %d %v", len(evs), err)
	}
	if _, err := w.root.DisablePrincipal(c, w.adminID, "leave"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.root.EnablePrincipal(c, w.adminID); err != nil {
		t.Fatal(err)
	}
	if err := w.root.DeleteRole(c, "reports"); err != nil {
		t.Fatal(err)
	}
}

func asError(err error, e **client.Error) bool {
	if err == nil {
		return false
	}
	var ok bool
	*e, ok = err.(*client.Error)
	return ok
}

// mustOtherID returns a well-formed token for an id no key has.
func mustOtherID(t *testing.T, token string) string {
	t.Helper()
	tok, err := domain.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	id := tok.KeyID
	id[15] ^= 0xff
	return domain.FormatToken(id, tok.Secret)
}

// flipSecret returns token with another secret, keeping its id.
func flipSecret(t *testing.T, token string) string {
	t.Helper()
	tok, err := domain.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	s := tok.Secret
	s[0] ^= 0xff
	return domain.FormatToken(tok.KeyID, s)
}
