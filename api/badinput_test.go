package api_test

import (
	"fmt"
	"mime"
	"net/http"
	"strings"
	"testing"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

// TestBadInput sends malformed and invalid requests to every route that
// takes input and asserts a 4xx problem+json with the expected stable code,
// and that nothing reaches the KEYS stream: only the caller's own
// authentication is recorded on USAGE, one event per request.
func TestBadInput(t *testing.T) {
	h := mustStart(t)
	_, admin := h.principal("admin", domain.RoleKeyAdmin)
	_, verifier := h.principal("verifier", domain.RoleVerifier)
	created := h.do("POST", "/v1/keys", admin, map[string]any{"name": "target"})
	var k api.CreatedKey
	created.json(t, &k)
	key := "/v1/keys/" + k.KeyID
	huge := `{"name":"` + strings.Repeat("x", api.MaxBodyBytes) + `"}`

	cases := []struct {
		name, method, path, token string
		body                      any
		status                    int
		code                      string
	}{
		{"create malformed json", "POST", "/v1/keys", admin, `{"name":`, 400, "invalid_json"},
		{"create empty body", "POST", "/v1/keys", admin, ``, 400, "invalid_json"},
		{"create trailing data", "POST", "/v1/keys", admin, `{"name":"a"}{}`, 400, "invalid_json"},
		{"create unknown field", "POST", "/v1/keys", admin, `{"name":"a","secret":"x"}`, 400, "invalid_json"},
		{"create wrong type", "POST", "/v1/keys", admin, `{"name":7}`, 400, "invalid_json"},
		{"create no name", "POST", "/v1/keys", admin, `{}`, 400, "invalid_name"},
		{"create bad cidr", "POST", "/v1/keys", admin, `{"name":"a","allowed_ips":["10.0.0.0/33"]}`, 400, "invalid_cidr"},
		{"create cidr host bits", "POST", "/v1/keys", admin, `{"name":"a","allowed_ips":["10.1.2.3/8"]}`, 400, "invalid_cidr"},
		{"create not an ip", "POST", "/v1/keys", admin, `{"name":"a","allowed_ips":["example"]}`, 400, "invalid_cidr"},
		{"create lifetime too long", "POST", "/v1/keys", admin, `{"name":"a","lifetime_days":100000}`, 400, "lifetime_out_of_range"},
		{"create lifetime negative", "POST", "/v1/keys", admin, `{"name":"a","lifetime_days":-5}`, 400, "lifetime_out_of_range"},
		{"create bad permission", "POST", "/v1/keys", admin, `{"name":"a","permissions":["Not Valid"]}`, 400, "invalid_permission"},
		{"create permission not held", "POST", "/v1/keys", admin, `{"name":"a","permissions":["api.principal.manage"]}`, 403, "permission_not_held"},
		{"create unknown role", "POST", "/v1/keys", admin, `{"name":"a","role":"nope"}`, 400, "unknown_role"},
		{"create role and permissions", "POST", "/v1/keys", admin, `{"name":"a","role":"verifier","permissions":[]}`, 400, "invalid_permissions"},
		{"create oversized", "POST", "/v1/keys", admin, huge, 413, "body_too_large"},
		{"create wrong media type", "POST", "/v1/keys", admin, nil, 415, "unsupported_media_type"},
		{"wrong method", "PUT", "/v1/keys", admin, `{}`, 405, "method_not_allowed"},
		{"list bad cursor", "GET", "/v1/keys?cursor=!!!", admin, nil, 400, "invalid_cursor"},
		{"list forged cursor", "GET", "/v1/keys?cursor=aGVsbG8", admin, nil, 400, "invalid_cursor"},
		{"list bad limit", "GET", "/v1/keys?limit=0", admin, nil, 400, "invalid_limit"},
		{"list huge limit", "GET", "/v1/keys?limit=100000", admin, nil, 400, "invalid_limit"},
		{"list bad status", "GET", "/v1/keys?status=sleeping", admin, nil, 400, "invalid_status"},
		{"show bad id", "GET", "/v1/keys/not-a-key", admin, nil, 404, "key_not_found"},
		{"update malformed", "PATCH", key, admin, `{`, 400, "invalid_json"},
		{"update unknown field", "PATCH", key, admin, `{"owner":"me"}`, 400, "invalid_json"},
		{"update nothing", "PATCH", key, admin, `{}`, 400, "nothing_to_update"},
		{"update bad permission", "PATCH", key, admin, `{"permissions":["*.x"]}`, 400, "invalid_permission"},
		{"update name too long", "PATCH", key, admin, fmt.Sprintf(`{"name":%q}`, strings.Repeat("n", 200)), 400, "invalid_name"},
		{"update oversized", "PATCH", key, admin, huge, 413, "body_too_large"},
		{"regenerate bad grace", "POST", key + "/regenerate", admin, `{"rotate":true,"grace_period":"soon"}`, 400, "invalid_grace_period"},
		{"regenerate grace too long", "POST", key + "/regenerate", admin, `{"rotate":true,"grace_period":"10000h"}`, 400, "invalid_grace_period"},
		{"regenerate grace without rotate", "POST", key + "/regenerate", admin, `{"grace_period":"1h"}`, 400, "invalid_regenerate"},
		{"regenerate unknown field", "POST", key + "/regenerate", admin, `{"rotate":true,"days":3}`, 400, "invalid_json"},
		{"revoke without reason", "POST", key + "/revoke", admin, `{}`, 400, "invalid_reason"},
		{"revoke malformed", "POST", key + "/revoke", admin, `reason`, 400, "invalid_json"},
		{"disable unknown field", "POST", key + "/disable", admin, `{"until":"tomorrow"}`, 400, "invalid_json"},
		{"enable active key", "POST", key + "/enable", admin, nil, 409, "key_not_disabled"},
		{"delete malformed", "DELETE", key, admin, `{"reason":`, 400, "invalid_json"},
		{"verify malformed", "POST", "/v1/verify", verifier, `{"token":`, 400, "invalid_json"},
		{"verify unknown field", "POST", "/v1/verify", verifier, `{"token":"x","secret":"y"}`, 400, "invalid_json"},
		{"verify bad ip", "POST", "/v1/verify", verifier, `{"token":"x","ip":"10.0.0.300"}`, 400, "invalid_ip"},
		{"verify bad permission", "POST", "/v1/verify", verifier, `{"token":"x","permission":"A B"}`, 400, "invalid_permission"},
		{"verify oversized", "POST", "/v1/verify", verifier, huge, 413, "body_too_large"},
		{"principal unknown role", "POST", "/v1/principals", h.root, `{"name":"p","roles":["wizard"]}`, 400, "unknown_role"},
		{"principal no roles", "POST", "/v1/principals", h.root, `{"name":"p","roles":[]}`, 400, "invalid_roles"},
		{"principal no name", "POST", "/v1/principals", h.root, `{"roles":["auditor"]}`, 400, "invalid_name"},
		{"principal unknown field", "POST", "/v1/principals", h.root, `{"name":"p","roles":["auditor"],"admin":true}`, 400, "invalid_json"},
		{"principal bad lifetime", "POST", "/v1/principals", h.root, `{"name":"p","roles":["auditor"],"credential_lifetime_days":-1}`, 400, "lifetime_out_of_range"},
		{"principal update missing", "PATCH", "/v1/principals/nobody", h.root, `{"max_keys":1}`, 404, "principal_not_found"},
		{"role builtin", "POST", "/v1/roles", h.root, `{"name":"superadmin","permissions":["*"]}`, 409, "role_builtin"},
		{"role bad permission", "POST", "/v1/roles", h.root, `{"name":"r","permissions":["x y"]}`, 400, "invalid_permission"},
		{"role bad name", "POST", "/v1/roles", h.root, `{"name":"Bad Name","permissions":[]}`, 400, "invalid_role"},
		{"role name with a dot", "POST", "/v1/roles", h.root, `{"name":"team.admin","permissions":[]}`, 400, "invalid_role"},
		{"role update missing", "PUT", "/v1/roles/ghost", h.root, `{"permissions":[]}`, 404, "role_not_found"},
		{"unknown route", "GET", "/v1/nothing", admin, nil, 404, "route_not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			keysBefore, usageBefore := h.count(domain.StreamKeys), h.count(domain.StreamUsage)
			var r resp
			if c.name == "create wrong media type" {
				req, _ := http.NewRequest("POST", h.ts.URL+c.path, strings.NewReader(`{"name":"a"}`))
				req.Header.Set("Content-Type", "text/plain")
				req.Header.Set("Authorization", "Bearer "+c.token)
				res, err := h.ts.Client().Do(req)
				must(t, err)
				res.Body.Close()
				r = resp{status: res.StatusCode, header: res.Header}
				if r.status != c.status {
					t.Fatalf("status %d, want %d", r.status, c.status)
				}
			} else {
				r = h.do(c.method, c.path, c.token, c.body)
				if r.status != c.status {
					t.Fatalf("status %d, want %d: %s", r.status, c.status, r.body)
				}
				if got := r.problemCode(t); got != c.code {
					t.Fatalf("code %q, want %q: %s", got, c.code, r.body)
				}
			}
			if mt, _, _ := mime.ParseMediaType(r.header.Get("Content-Type")); mt != "application/problem+json" {
				t.Fatalf("content type %q", r.header.Get("Content-Type"))
			}
			if got := h.count(domain.StreamKeys); got != keysBefore {
				t.Fatalf("KEYS grew from %d to %d on bad input", keysBefore, got)
			}
			if c.name == "unknown route" || c.name == "wrong method" {
				usageBefore-- // no authentication happens on an unknown route
			}
			if got := h.count(domain.StreamUsage); got != usageBefore+1 {
				t.Fatalf("USAGE grew from %d to %d, want only the authentication event", usageBefore, got)
			}
		})
	}
}
