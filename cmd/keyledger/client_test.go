package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

// testGlobals returns client globals with a fixed environment and captured
// output.
func testGlobals(env map[string]string, stdin string) (*globals, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &globals{
		stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb,
		getenv: func(k string) string { return env[k] },
	}, &out, &errb
}

func isUsage(err error) bool {
	var ue usageError
	return errors.As(err, &ue)
}

func TestParseCommandInterleavesFlags(t *testing.T) {
	tests := []struct {
		args     []string
		wantPos  []string
		wantJSON bool
	}{
		{[]string{"ID"}, []string{"ID"}, false},
		{[]string{"ID", "--json"}, []string{"ID"}, true},
		{[]string{"--json", "ID"}, []string{"ID"}, true},
		{[]string{"--", "-odd-id"}, []string{"-odd-id"}, false},
		{[]string{"--json", "--", "--json"}, []string{"--json"}, true},
	}
	for _, tt := range tests {
		g, _, _ := testGlobals(nil, "")
		fs := newFlagSet("keyledger keys show")
		g.register(fs)
		pos, err := g.parseCommand(fs, tt.args, "ID", 1)
		if err != nil {
			t.Fatalf("%q: %v", tt.args, err)
		}
		if !reflect.DeepEqual(pos, tt.wantPos) || g.json != tt.wantJSON {
			t.Errorf("%q: got %q json=%v, want %q json=%v", tt.args, pos, g.json, tt.wantPos, tt.wantJSON)
		}
	}
	for _, args := range [][]string{{}, {"a", "b"}, {"--nope", "ID"}, {"ID", "--json=maybe"}} {
		g, _, _ := testGlobals(nil, "")
		fs := newFlagSet("keyledger keys show")
		g.register(fs)
		if _, err := g.parseCommand(fs, args, "ID", 1); !isUsage(err) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
}

func TestParseKeysCreate(t *testing.T) {
	g, _, _ := testGlobals(nil, "")
	req, err := g.parseKeysCreate("keys create", []string{
		"--name", "ci", "--comments", "for CI", "--permission", "orders.read,orders.write", "--permission", "a.b",
		"--lifetime-days", "30", "--allowed-ip", "10.0.0.0/8", "--allowed-ip", "192.0.2.1, 2001:db8::/32",
		"--metadata", "team=pay", "--metadata", "env=prod=eu", "--json",
	})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(req)
	want := `{"name":"ci","comments":"for CI","permissions":["orders.read","orders.write","a.b"],"lifetime_days":30,` +
		`"allowed_ips":["10.0.0.0/8","192.0.2.1","2001:db8::/32"],"metadata":{"env":"prod=eu","team":"pay"}}`
	if got := string(b); got != want {
		t.Errorf("request\n got %s\nwant %s", got, want)
	}
	if !g.json {
		t.Error("--json after the command's flags was not applied")
	}

	// Defaults leave the server to decide: no permissions field at all
	// means "same as my privileges".
	g, _, _ = testGlobals(nil, "")
	req, err = g.parseKeysCreate("keys create", []string{"--name", "x"})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(req); string(b) != `{"name":"x"}` {
		t.Errorf("minimal request = %s", b)
	}

	for _, args := range [][]string{
		{},
		{"--name", " "},
		{"--name", "x", "--role", "r", "--permission", "p"},
		{"--name", "x", "--lifetime-days", "-1"},
		{"--name", "x", "--lifetime-days", "ten"},
		{"--name", "x", "--metadata", "novalue"},
		{"--name", "x", "extra"},
		{"--name", "x", "--token", "klk_..."}, // secrets never come from flags
	} {
		g, _, _ := testGlobals(nil, "")
		if _, err := g.parseKeysCreate("keys create", args); !isUsage(err) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
}

func TestParseKeysList(t *testing.T) {
	g, _, _ := testGlobals(nil, "")
	req, err := g.parseKeysList("keys list", []string{"--status", "revoked", "--q", "billing api", "--limit", "2", "--cursor", "abc", "--all-pages"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := req.query.Encode(), "cursor=abc&limit=2&q=billing+api&status=revoked"; got != want {
		t.Errorf("query = %s, want %s", got, want)
	}
	if !req.allPages {
		t.Error("--all-pages not set")
	}
	for _, args := range [][]string{{"--status", "gone"}, {"--limit", "0"}, {"--limit", "-3"}, {"x"}} {
		g, _, _ := testGlobals(nil, "")
		if _, err := g.parseKeysList("keys list", args); !isUsage(err) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
}

func TestParseKeysRegenerate(t *testing.T) {
	g, _, _ := testGlobals(nil, "")
	path, req, err := g.parseKeysRegenerate("keys regenerate", []string{"k1", "--rotate", "--grace-period", "90m"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(req)
	if path != "/v1/keys/k1/regenerate" || string(b) != `{"rotate":true,"grace_period":"90m"}` {
		t.Errorf("got %s %s", path, b)
	}
	_, req, err = g.parseKeysRegenerate("keys regenerate", []string{"a/b"})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(req); string(b) != `{}` {
		t.Errorf("plain regenerate sends %s", b)
	}
	for _, args := range [][]string{{"k1", "--grace-period", "1h"}, {"k1", "--rotate", "--grace-period", "soon"}, {"k1", "--rotate", "--grace-period", "-1h"}, {}} {
		g, _, _ := testGlobals(nil, "")
		if _, _, err := g.parseKeysRegenerate("keys regenerate", args); !isUsage(err) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
}

func TestParsePrincipalsUpdateSendsOnlyGivenFields(t *testing.T) {
	g, _, _ := testGlobals(nil, "")
	_, req, err := g.parsePrincipalsUpdate("principals update", []string{"p1", "--max-keys", "0"})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(req); string(b) != `{"max_keys":0}` {
		t.Errorf("got %s", b)
	}
	_, req, err = g.parsePrincipalsUpdate("principals update", []string{"p1", "--role", "a,b", "--name", "n"})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(req); string(b) != `{"name":"n","roles":["a","b"]}` {
		t.Errorf("got %s", b)
	}
	if _, _, err := g.parsePrincipalsUpdate("principals update", []string{"p1"}); !isUsage(err) {
		t.Errorf("no fields: got %v, want a usage error", err)
	}
}

func TestParseVerify(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tok")
	if err := os.WriteFile(file, []byte("  klk_fromfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args  []string
		stdin string
		want  verifyRequest
	}{
		{[]string{"--token", "klk_x", "--permission", "orders.read", "--ip", "10.0.0.1"}, "", verifyRequest{Token: "klk_x", Permission: "orders.read", IP: "10.0.0.1"}},
		{[]string{"--token", "-"}, "klk_stdin\n", verifyRequest{Token: "klk_stdin"}},
		{[]string{"--verify-token-file", "-"}, "klk_stdin\n", verifyRequest{Token: "klk_stdin"}},
		{[]string{"--verify-token-file", file}, "", verifyRequest{Token: "klk_fromfile"}},
	}
	for _, tt := range tests {
		g, _, _ := testGlobals(nil, tt.stdin)
		got, err := g.parseVerify(tt.args)
		if err != nil {
			t.Fatalf("%q: %v", tt.args, err)
		}
		if got != tt.want {
			t.Errorf("%q: got %+v, want %+v", tt.args, got, tt.want)
		}
	}
	for _, args := range [][]string{{}, {"--token", "a", "--verify-token-file", file}, {"--token", ""}} {
		g, _, _ := testGlobals(nil, "")
		if _, err := g.parseVerify(args); !isUsage(err) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
	g, _, _ := testGlobals(nil, "")
	if _, err := g.parseVerify([]string{"--verify-token-file", filepath.Join(dir, "missing")}); err == nil || !strings.HasPrefix(err.Error(), "token_file: ") {
		t.Errorf("missing file: got %v", err)
	}
	// --token-file is the caller's own token on verify too.
	g, _, _ = testGlobals(nil, "")
	if _, err := g.parseVerify([]string{"--token", "x", "--token-file", file}); err != nil {
		t.Fatal(err)
	}
	if g.tokenFile != file {
		t.Errorf("--token-file = %q", g.tokenFile)
	}
	// The old spellings fail and say what to write instead.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--token-file", file}, "--verify-token-file"},
		{[]string{"--token", "x", "--auth-token-file", file}, "--auth-token-file is now --token-file"},
	} {
		g, _, _ := testGlobals(nil, "")
		if _, err := g.parseVerify(tt.args); !isUsage(err) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want a usage error naming %s", tt.args, err, tt.want)
		}
	}
}

func TestCallerToken(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tok")
	if err := os.WriteFile(file, []byte("klk_file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(dir, "envtok")
	if err := os.WriteFile(envFile, []byte("klk_envfile"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tokenFile string
		env       map[string]string
		want      string
	}{
		{file, map[string]string{"KEYLEDGER_TOKEN": "klk_env"}, "klk_file"},
		{"", map[string]string{"KEYLEDGER_TOKEN": " klk_env\n", "KEYLEDGER_TOKEN_FILE": envFile}, "klk_env"},
		{"", map[string]string{"KEYLEDGER_TOKEN_FILE": envFile}, "klk_envfile"},
	}
	for _, tt := range tests {
		g, _, _ := testGlobals(tt.env, "")
		g.tokenFile = tt.tokenFile
		got, err := g.callerToken()
		if err != nil || got != tt.want {
			t.Errorf("%+v: got %q, %v; want %q", tt, got, err, tt.want)
		}
	}
	g, _, _ := testGlobals(nil, "")
	if _, err := g.callerToken(); !isUsage(err) || !strings.Contains(err.Error(), "KEYLEDGER_TOKEN") {
		t.Errorf("no token: got %v", err)
	}
}

func TestParseServer(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:8080":          "http://127.0.0.1:8080",
		"127.0.0.1:8080":                 "http://127.0.0.1:8080",
		"https://keys.example.test/api/": "https://keys.example.test/api",
	} {
		u, err := parseServer(in)
		if err != nil || u.String() != want {
			t.Errorf("%s: got %v, %v; want %s", in, u, err, want)
		}
	}
	for _, in := range []string{"ftp://x", "http://", "http://h?x=1", "::"} {
		if _, err := parseServer(in); !isUsage(err) {
			t.Errorf("%s: got %v, want a usage error", in, err)
		}
	}
}

func TestRenderKeyGrid(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	used := now.Add(-time.Hour)
	keys := []api.KeyView{
		{KeyID: "k1", Name: "billing\tapi\nprod", Owner: "alice", Status: domain.StatusActive, CreatedAt: now,
			ExpiresAt: now.Add(90 * 24 * time.Hour), RemainingSeconds: 90*86400 - 3600, LastUsedAt: &used},
		{KeyID: "k2", Name: strings.Repeat("n", 50), Owner: "bob", Status: domain.StatusRevoked, CreatedAt: now,
			ExpiresAt: now.Add(24 * time.Hour), RemainingSeconds: 86400},
	}
	var b bytes.Buffer
	if err := renderKeyGrid(&b, keys); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want a header and 2 rows:\n%s", len(lines), b.String())
	}
	for i, want := range [][]string{
		{"ID", "NAME", "OWNER", "STATUS", "CREATED (UTC)", "EXPIRES (UTC)", "REMAINING", "LAST USED (UTC)"},
		{"k1", "billing api prod", "alice", "active", "2026-03-01 12:00", "2026-05-30 12:00", "89d 23h", "2026-03-01 11:00"},
		{"k2", strings.Repeat("n", 31) + "…", "bob", "revoked", "-", "never"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
	// Columns line up: every row's STATUS starts where the header's does.
	col := strings.Index(lines[0], "STATUS")
	if !strings.HasPrefix(string([]rune(lines[1])[col:]), "active") || !strings.HasPrefix(string([]rune(lines[2])[col:]), "revoked") {
		t.Errorf("columns are not aligned:\n%s", b.String())
	}
}

func TestFmtRemaining(t *testing.T) {
	for secs, want := range map[int64]string{0: "-", -5: "-", 42: "42s", 125: "2m 5s", 3*3600 + 60: "3h 1m", 2*86400 + 7200: "2d 2h"} {
		if got := fmtRemaining(secs); got != want {
			t.Errorf("fmtRemaining(%d) = %q, want %q", secs, got, want)
		}
	}
}

// TestRunAgainstFakeServer checks the shared plumbing end to end through
// Run: the bearer token, the one-line error with the problem's code, exit
// codes, and --json passing the server's bytes through.
func TestRunAgainstFakeServer(t *testing.T) {
	var gotAuth, gotUA string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotUA = r.Header.Get("Authorization"), r.Header.Get("User-Agent")
		switch r.URL.Path {
		case "/v1/keys/k1":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"key_id":"k1","name":"n","status":"active","permissions":[],"allowed_ips":[]}`+"\n")
		case "/v1/keys/gone":
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"type":"x","title":"Not Found","status":404,"detail":"key not found","code":"key_not_found"}`)
		case "/v1/verify":
			var req verifyRequest
			_ = json.NewDecoder(r.Body).Decode(&req)
			w.Header().Set("Content-Type", "application/json")
			if req.Token == "klk_good" {
				io.WriteString(w, `{"valid":true,"code":"VALID","key_id":"k1","event_id":"e"}`)
				return
			}
			io.WriteString(w, `{"valid":false,"code":"REVOKED","key_id":"k1","event_id":"e"}`)
		default:
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html>bad gateway</html>\nmore")
		}
	}))
	defer srv.Close()
	t.Setenv("KEYLEDGER_SERVER", srv.URL)
	t.Setenv("KEYLEDGER_TOKEN", "klk_caller")
	t.Setenv("KEYLEDGER_TOKEN_FILE", "")

	run := func(stdin string, args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := Run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
		return out.String(), errb.String(), code
	}

	out, errs, code := run("", "keys", "show", "k1", "--json")
	if code != 0 || out != `{"key_id":"k1","name":"n","status":"active","permissions":[],"allowed_ips":[]}`+"\n" || errs != "" {
		t.Errorf("show --json: %d %q %q", code, out, errs)
	}
	if gotAuth != "Bearer klk_caller" || gotUA != "keyledger-cli" {
		t.Errorf("headers: Authorization %q, User-Agent %q", gotAuth, gotUA)
	}
	out, _, code = run("", "keys", "show", "k1")
	if code != 0 || !strings.Contains(out, "Status:") || !strings.Contains(out, "Allowed IPs:  any") {
		t.Errorf("show: %d %q", code, out)
	}
	_, errs, code = run("", "keys", "show", "gone")
	if code != 1 || errs != "keyledger: key_not_found: key not found\n" {
		t.Errorf("not found: %d %q", code, errs)
	}
	_, errs, code = run("", "keys", "list")
	if code != 1 || errs != "keyledger: http_502: <html>bad gateway</html>\n" {
		t.Errorf("bad gateway: %d %q", code, errs)
	}
	out, _, code = run("klk_good\n", "verify", "--token", "-")
	if code != 0 || !strings.HasPrefix(out, "VALID\n") {
		t.Errorf("verify valid: %d %q", code, out)
	}
	out, errs, code = run("", "verify", "--token", "klk_bad")
	if code != 1 || !strings.HasPrefix(out, "REVOKED\n") || errs != "keyledger: REVOKED: the token is not valid\n" {
		t.Errorf("verify revoked: %d %q %q", code, out, errs)
	}
	for _, args := range [][]string{{"bogus"}, {"keys"}, {"keys", "bogus"}, {"keys", "show"}, {"keys", "revoke", "k1"}, {"--server", "ftp://x", "whoami"}} {
		if _, errs, code := run("", args...); code != 2 || strings.Count(errs, "keyledger: ") != 1 {
			t.Errorf("%q: exit %d, stderr %q; want 2 and one error line", args, code, errs)
		}
	}
	for _, args := range [][]string{{"keys", "create", "-h"}, {"keys", "help"}, {"verify", "--help"}} {
		if out, _, code := run("", args...); code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("%q: exit %d, stdout %q", args, code, out)
		}
	}

	srv.Close()
	_, errs, code = run("", "whoami")
	if code != 1 || !strings.HasPrefix(errs, "keyledger: unreachable: ") || strings.Count(errs, "\n") != 1 {
		t.Errorf("unreachable: %d %q", code, errs)
	}
}

// TestCLIAppliesTheTextRule: names and comments go through domain's one
// text rule before they are sent: refused with its words, sent cleaned.
func TestCLIAppliesTheTextRule(t *testing.T) {
	g, _, _ := testGlobals(nil, "")
	for _, args := range [][]string{
		{"--name", "safe\u202eexe.txt"},
		{"--name", "\u200b"},
		{"--name", "ok", "--comments", "a\u2066b"},
	} {
		if _, err := g.parseKeysCreate("keys create", args); !isUsage(err) || !strings.Contains(err.Error(), "U+") {
			t.Errorf("keys create %q: got %v, want a usage error naming the character", args, err)
		}
	}
	req, err := g.parseKeysCreate("keys create", []string{"--name", "  Zoe\u0308 "})
	if err != nil || req.Name != "Zoë" {
		t.Errorf("keys create: name %+q, %v", req.Name, err)
	}
	if _, err := g.parsePrincipalsCreate("principals create", []string{"--name", "bob\u200d", "--role", "key-admin"}); !isUsage(err) {
		t.Errorf("principals create with a zero-width joiner: %v", err)
	}
	if _, _, err := g.parsePrincipalsUpdate("principals update", []string{"p1", "--name", "\u2067x"}); !isUsage(err) {
		t.Errorf("principals update with an isolate: %v", err)
	}
}

func TestParsePrincipalsIssueCredential(t *testing.T) {
	g, _, _ := testGlobals(nil, "")
	path, req, err := g.parsePrincipalsIssueCredential("principals issue-credential", []string{"0190b3a0-0000-7000-8000-000000000001", "--name", "recovery", "--lifetime-days", "7"})
	if err != nil {
		t.Fatal(err)
	}
	if path != "/v1/principals/0190b3a0-0000-7000-8000-000000000001/credentials" {
		t.Errorf("path %s", path)
	}
	if b, _ := json.Marshal(req); string(b) != `{"name":"recovery","lifetime_days":7}` {
		t.Errorf("got %s", b)
	}
	if _, _, err := g.parsePrincipalsIssueCredential("principals issue-credential", []string{"p1", "--lifetime-days", "-1"}); !isUsage(err) {
		t.Errorf("negative lifetime: %v", err)
	}
}

func TestEventDetailShowsRegeneratedExpiry(t *testing.T) {
	got := eventDetail("key.regenerated", []byte(`{"previous_expires_at":"2036-01-01T00:00:00Z","expires_at":"2036-01-02T00:00:00Z","rotated":false}`))
	if want := `expiry 2036-01-01T00:00:00Z -> 2036-01-02T00:00:00Z rotated=false`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
