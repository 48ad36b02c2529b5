package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

func TestParseLogsSearch(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		args       []string
		wantQuery  string
		wantFormat string
		wantAll    bool
	}{
		{nil, "", "table", false},
		{
			[]string{"--key", "a", "--key", "b,c", "--action", "denied", "--action", "used,revoked", "--outcome", "REVOKED",
				"--outcome", "IP_NOT_ALLOWED", "--ip", "10.0.0.0/8", "--from", "2026-01-02T03:04:05Z", "--to", "2026-01-03T00:00:00.5+01:00",
				"--owner", "p1", "--actor", "p2", "--q", "leaked key", "--limit", "5", "--cursor", "abc"},
			"action=denied&action=used&action=revoked&actor=p2&cursor=abc&from=2026-01-02T03%3A04%3A05Z&ip=10.0.0.0%2F8" +
				"&key_id=a&key_id=b&key_id=c&limit=5&outcome=REVOKED&outcome=IP_NOT_ALLOWED&owner=p1&q=leaked+key" +
				"&to=2026-01-03T00%3A00%3A00.5%2B01%3A00",
			"table", false,
		},
		{[]string{"--since", "24h", "--format", "csv"}, "format=csv&from=2026-02-28T12%3A00%3A00Z", "csv", false},
		{[]string{"--ip", "2001:db8::1", "--format", "ndjson", "--cursor", "c1", "--limit", "1000"}, "cursor=c1&format=ndjson&ip=2001%3Adb8%3A%3A1&limit=1000", "ndjson", false},
		{[]string{"--json", "--all-pages", "--limit", "2"}, "limit=2", "json", true},
		{[]string{"--format", "json", "--json"}, "", "json", false},
		{[]string{"--since", "90m", "--to", "2026-03-01T11:00:00Z"}, "from=2026-03-01T10%3A30%3A00Z&to=2026-03-01T11%3A00%3A00Z", "table", false},
		{[]string{"--output", "log.csv", "--format", "csv"}, "format=csv", "csv", false},
	}
	for _, tt := range tests {
		g, _, _ := testGlobals(nil, "")
		req, err := g.parseLogsSearch("logs search", tt.args, now)
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if got := req.query.Encode(); got != tt.wantQuery {
			t.Errorf("%q: query\n got %s\nwant %s", tt.args, got, tt.wantQuery)
		}
		if req.format != tt.wantFormat || req.allPages != tt.wantAll {
			t.Errorf("%q: format %s, all pages %v; want %s, %v", tt.args, req.format, req.allPages, tt.wantFormat, tt.wantAll)
		}
	}

	for _, args := range [][]string{
		{"--from", "yesterday"},
		{"--to", "2026-01-02"},
		{"--since", "a week"},
		{"--since", "-1h"},
		{"--since", "0s"},
		{"--since", "1h", "--from", "2026-01-02T03:04:05Z"},
		{"--from", "2026-01-02T00:00:00Z", "--to", "2026-01-01T00:00:00Z"},
		{"--since", "1h", "--to", "2026-03-01T10:30:00Z"},
		{"--limit", "0"},
		{"--limit", "1001"},
		{"--limit", "many"},
		{"--ip", "10.0.0.0/99"},
		{"--ip", "fe80::1%eth0"},
		{"--ip", "example"},
		{"--format", "xml"},
		{"--format", "csv", "--all-pages"},
		{"--format", "csv", "--json"},
		{"stray"},
		{"--nope"},
	} {
		g, _, _ := testGlobals(nil, "")
		if _, err := g.parseLogsSearch("logs search", args, now); !isUsage(err) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
}

func TestRenderLogTable(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 123e6, time.FixedZone("CET", 3600))
	events := []api.LogEntry{
		{Time: at, Action: "revoked", KeyID: "k1", Actor: "alice", SourceIP: "127.0.0.1", Name: "billing", Reason: "leaked\nin CI"},
		{Time: at.Add(-time.Second), Action: "denied", Outcome: domain.OutcomeIPNotAllowed, KeyID: "k1", Actor: "gateway", SourceIP: "192.0.2.1", Name: "billing"},
		{Time: at.Add(-time.Minute), Action: "created", KeyID: "k1", Actor: "alice", Name: strings.Repeat("n", 70)},
	}
	var b bytes.Buffer
	if err := renderLogTable(&b, events); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want a header and 3 rows:\n%s", len(lines), b.String())
	}
	for i, want := range [][]string{
		{"TIME (UTC)", "ACTION", "OUTCOME", "KEY", "ACTOR", "SOURCE IP", "REASON / NAME"},
		{"2026-03-01 11:00:00.123", "revoked", "k1", "alice", "127.0.0.1", "leaked in CI"},
		{"2026-03-01 10:59:59.123", "denied", "IP_NOT_ALLOWED", "gateway", "192.0.2.1", "billing"},
		{"2026-03-01 10:59:00.123", "created", strings.Repeat("n", 59) + "…"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
	// A reason wins over the name; an empty cell is a dash, so columns
	// stay countable.
	if strings.Contains(lines[1], "billing") {
		t.Errorf("the revocation shows the name instead of its reason: %q", lines[1])
	}
	if got := len(strings.Fields(lines[3])); got != 8 { // the time is two fields
		t.Errorf("created row has %d fields, want 8: %q", got, lines[3])
	}
	col := strings.Index(lines[0], "SOURCE IP")
	for i, ip := range map[int]string{1: "127.0.0.1", 2: "192.0.2.1", 3: "-"} {
		if !strings.HasPrefix(string([]rune(lines[i])[col:]), ip) {
			t.Errorf("row %d: SOURCE IP column does not line up:\n%s", i, b.String())
		}
	}
}

// fakeLogServer answers GET /v1/logs from events, newest first, in pages
// whose cursor is the offset of the next one; format=csv writes part of an
// export and then breaks the connection, as the server does when a search
// fails midway.
func fakeLogServer(t *testing.T, events []api.LogEntry) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		switch q.Get("format") {
		case "csv":
			w.Header().Set("Content-Type", "text/csv; charset=utf-8")
			io.WriteString(w, "event_id,time\n")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		case "ndjson":
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html>login</html>")
			return
		}
		off, limit := 0, 100
		fmt.Sscan(q.Get("cursor"), &off)
		fmt.Sscan(q.Get("limit"), &limit)
		page := api.LogPage{Events: events[off:min(off+limit, len(events))]}
		if off+limit < len(events) {
			page.NextCursor = fmt.Sprint(off + limit)
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(page)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestLogsSearchAgainstFakeServer covers what a real server does not do on
// demand: exports that break off or come back as something else, and
// following many pages.
func TestLogsSearchAgainstFakeServer(t *testing.T) {
	var events []api.LogEntry
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for i := range 5 {
		events = append(events, api.LogEntry{EventID: fmt.Sprint("e", i), Time: at.Add(-time.Duration(i) * time.Second),
			Action: "used", Outcome: "VALID", KeyID: "k1", Permissions: []string{}})
	}
	srv := fakeLogServer(t, events)
	t.Setenv("KEYLEDGER_SERVER", srv.URL)
	t.Setenv("KEYLEDGER_TOKEN", "klk_caller")
	t.Setenv("KEYLEDGER_TOKEN_FILE", "")
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := Run(context.Background(), append([]string{"logs", "search"}, args...), strings.NewReader(""), &out, &errb)
		return out.String(), errb.String(), code
	}

	// Every page, as one JSON document shaped like a page.
	out, errs, code := run("--json", "--all-pages", "--limit", "2")
	var all api.LogPage
	if err := json.Unmarshal([]byte(out), &all); code != 0 || err != nil || errs != "" {
		t.Fatalf("--all-pages --json: exit %d, %v\n%s\n%s", code, err, out, errs)
	}
	if !reflect.DeepEqual(all.Events, events) || all.NextCursor != "" {
		t.Fatalf("--all-pages --json = %+v, want %+v", all, events)
	}
	out, errs, code = run("--all-pages", "--limit", "2")
	if code != 0 || strings.Count(out, "\n") != 6 || errs != "" {
		t.Fatalf("--all-pages table: exit %d\n%s\n%s", code, out, errs)
	}
	// One page: the cursor hint goes to stderr, not into the table.
	out, errs, code = run("--limit", "2")
	if code != 0 || strings.Count(out, "\n") != 3 || errs != "more: --cursor 2\n" {
		t.Fatalf("one page: exit %d\n%s\n%q", code, out, errs)
	}
	out, _, _ = run("--json", "--key", "nothing", "--all-pages", "--cursor", "5")
	if err := json.Unmarshal([]byte(out), &all); err != nil || len(all.Events) != 0 {
		t.Fatalf("empty --all-pages --json: %v %q", err, out)
	}

	// An export that breaks off fails and leaves no file behind, neither
	// under its name nor as a temporary file.
	dir := t.TempDir()
	file := filepath.Join(dir, "log.csv")
	if err := os.WriteFile(file, []byte("an older export\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	_, errs, code = run("--format", "csv", "--output", file)
	if code != 1 || !strings.HasPrefix(errs, "keyledger: export_truncated: ") {
		t.Fatalf("broken export: exit %d, stderr %q", code, errs)
	}
	if b, _ := os.ReadFile(file); string(b) != "an older export\n" {
		t.Fatalf("a broken export replaced the file: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("files left in the output directory: %v", ents)
	}
	// So does an answer that is not the export asked for.
	_, errs, code = run("--format", "ndjson", "--output", filepath.Join(dir, "log.ndjson"))
	if code != 1 || !strings.HasPrefix(errs, "keyledger: bad_response: ") {
		t.Fatalf("HTML for an export: exit %d, stderr %q", code, errs)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("files left in the output directory: %v", ents)
	}
	// A page written to a file replaces it whole and keeps its mode.
	if _, errs, code = run("--json", "--output", file); code != 0 {
		t.Fatalf("--output: exit %d, %s", code, errs)
	}
	fi, err := os.Stat(file)
	if b, _ := os.ReadFile(file); err != nil || !json.Valid(b) || fi.Mode().Perm() != 0o640 {
		t.Fatalf("--output wrote %q with mode %v (%v)", b, fi.Mode(), err)
	}
}

// TestLogsSearchCLI drives "keyledger logs search" against the real binary
// and its audit log in ClickHouse: the throwaway server of `make test` when
// KEYLEDGER_TEST_CLICKHOUSE names one, else the local one serve manages.
func TestLogsSearchCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: builds and runs the binary")
	}
	start := time.Now()
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), randomSecret(t))
	env := []string{"KEYLEDGER_ROOT_TOKEN=" + root}
	if addr := os.Getenv("KEYLEDGER_TEST_CLICKHOUSE"); addr != "" {
		// A database of its own, so other tests on the same server never
		// show up in these searches. The server is thrown away after the
		// run, and the database with it.
		var b [6]byte
		_, _ = rand.Read(b[:])
		env = append(env, "KEYLEDGER_CLICKHOUSE="+addr, "KEYLEDGER_CLICKHOUSE_DATABASE=logs_cli_"+hex.EncodeToString(b[:]))
	}
	e := &lifecycle{t: t, tokens: map[string]bool{}}
	e.srv = startE2EServer(t, t.TempDir(), env...)
	var p api.CreatedPrincipal
	e.must(root, "POST", "/v1/principals", map[string]any{"name": "ops", "roles": []string{"key-admin", "verifier"}}, http.StatusCreated, &p)
	admin := p.Credential.Token
	k := e.createKey(admin, map[string]any{"name": "logged key", "allowed_ips": []string{"10.0.0.0/8"}})
	e.wantCode(admin, k.Token, "", "10.1.2.3", domain.OutcomeValid)
	e.wantCode(admin, k.Token, "", "10.1.2.4", domain.OutcomeValid)
	e.wantCode(admin, k.Token, "", "192.0.2.1", domain.OutcomeIPNotAllowed)
	e.wantCode(admin, k.Token, "not.held", "10.1.2.3", domain.OutcomeInsufficientPermissions)
	e.cliOK(admin, "keys", "revoke", k.KeyID, "--reason", "rotated out after audit")
	e.wantCode(admin, k.Token, "", "10.1.2.5", domain.OutcomeRevoked)
	const total = 7 // created, 4 verifications, revoked, 1 verification
	// Every search is of the key's events done by ops: the alert engine
	// adds events of its own to the key's log (a revoked key presented),
	// on its own schedule, and they are not what this test counts.
	search := func(args ...string) []string {
		return append([]string{"logs", "search", "--key", k.KeyID, "--actor", p.ID}, args...)
	}

	// The sink copies events to ClickHouse asynchronously: wait until the
	// table shows the revocation and the denial after it.
	var table string
	checkFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		table = e.cliOK(admin, search()...)
		if n := strings.Count(table, "\n") - 1; n < total {
			return fmt.Errorf("%d of %d events of the key in the log so far", n, total)
		}
		return nil
	})
	lines := strings.Split(strings.TrimRight(table, "\n"), "\n")
	if len(lines) != total+1 || !strings.HasPrefix(lines[0], "TIME (UTC)") {
		t.Fatalf("table:\n%s", table)
	}
	for i, want := range map[int][]string{
		1: {"denied", domain.OutcomeRevoked, k.KeyID, p.ID, "10.1.2.5"},
		2: {"revoked", k.KeyID, p.ID, "127.0.0.1", "rotated out after audit"},
		7: {"created", k.KeyID, p.ID, "logged key"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("table row %d %q lacks %q", i, lines[i], w)
			}
		}
	}

	var page api.LogPage
	e.cliJSON(admin, &page, search()...)
	if len(page.Events) != total || page.NextCursor != "" {
		t.Fatalf("--json: %d events, next cursor %q", len(page.Events), page.NextCursor)
	}
	var ids []string
	for i, ev := range page.Events {
		if ev.KeyID != k.KeyID || (i > 0 && ev.Time.After(page.Events[i-1].Time)) {
			t.Fatalf("event %d not of the key or not newest first: %+v", i, page.Events)
		}
		ids = append(ids, ev.EventID)
	}

	// Filters, as a table and as JSON.
	count := func(args ...string) []api.LogEntry {
		t.Helper()
		var page api.LogPage
		e.cliJSON(admin, &page, search(args...)...)
		return page.Events
	}
	if out := e.cliOK(admin, search("--action", "revoked")...); strings.Count(out, "\n") != 2 ||
		!strings.Contains(out, "rotated out after audit") {
		t.Fatalf("--action revoked:\n%s", out)
	}
	if out := e.cliOK(admin, search("--action", "used", "--ip", "10.1.2.0/24")...); strings.Count(out, "\n") != 3 ||
		!strings.Contains(out, "10.1.2.3") || !strings.Contains(out, "10.1.2.4") {
		t.Fatalf("--action used --ip 10.1.2.0/24:\n%s", out)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"--action", "used,created"}, 3},
		{[]string{"--action", "denied"}, 3},
		{[]string{"--outcome", domain.OutcomeValid}, 2},
		{[]string{"--outcome", domain.OutcomeIPNotAllowed, "--outcome", domain.OutcomeRevoked}, 2},
		{[]string{"--ip", "192.0.2.1"}, 1},
		{[]string{"--ip", "10.0.0.0/8", "--action", "denied"}, 2},
		{[]string{"--owner", p.ID}, total},
		{[]string{"--q", "rotated out"}, 1},
		{[]string{"--since", "10m"}, total},
		{[]string{"--to", start.Add(-time.Minute).UTC().Format(time.RFC3339)}, 0},
	} {
		if got := count(tc.args...); len(got) != tc.want {
			t.Errorf("%q: %d events, want %d: %+v", tc.args, len(got), tc.want, got)
		}
	}
	if got := count("--outcome", domain.OutcomeInsufficientPermissions); len(got) != 1 || !slices.Equal(got[0].Permissions, []string{"not.held"}) {
		t.Errorf("--outcome INSUFFICIENT_PERMISSIONS: %+v", got)
	}

	// CSV to a file: the header and every event, the same as the JSON.
	file := filepath.Join(t.TempDir(), "log.csv")
	if out := e.cliOK(admin, search("--format", "csv", "--output", file)...); out != "" {
		t.Fatalf("--output also wrote to stdout: %q", out)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil || len(recs) != total+1 {
		t.Fatalf("csv export (%v): %q", err, recs)
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	var csvIDs []string
	for _, r := range recs[1:] {
		csvIDs = append(csvIDs, r[col["event_id"]])
		if r[col["action"]] == "revoked" && r[col["reason"]] != "rotated out after audit" {
			t.Errorf("csv revocation: %q", r)
		}
	}
	if !slices.Equal(csvIDs, ids) {
		t.Errorf("csv event ids %v, want %v", csvIDs, ids)
	}
	// NDJSON to stdout: one event a line.
	nd := e.cliOK(admin, search("--format", "ndjson")...)
	if n := strings.Count(nd, "\n"); n != total || !strings.Contains(nd, `"rotated out after audit"`) {
		t.Errorf("ndjson export (%d lines):\n%s", n, nd)
	}

	// Two at a time through every page: each event once, in order.
	e.cliJSON(admin, &page, search("--limit", "2", "--all-pages")...)
	var paged []string
	for _, ev := range page.Events {
		paged = append(paged, ev.EventID)
	}
	if !slices.Equal(paged, ids) {
		t.Errorf("--all-pages --limit 2 = %v, want %v", paged, ids)
	}
	out, errs, code := e.cli(admin, "", search("--limit", "2")...)
	if code != 0 || strings.Count(out, "\n") != 3 || !strings.HasPrefix(errs, "more: --cursor ") {
		t.Errorf("one page of 2: exit %d\n%s\n%s", code, out, errs)
	}

	// Mistakes: on the command line exit 2 before any request; the
	// server's refusals exit 1 with its code.
	e.cliFail(admin, 2, "usage", "logs", "search", "--from", "last tuesday")
	e.cliFail(admin, 2, "usage", "logs", "search", "--since", "a while")
	e.cliFail(admin, 1, "invalid_action", "logs", "search", "--action", "exploded")
	e.cliFail(admin, 1, "invalid_key_id", "logs", "search", "--key", "not-a-key")
	if d := time.Since(start); d > 30*time.Second {
		t.Logf("the logs search end-to-end test took %v; it should stay under 30s", d)
	}
}
