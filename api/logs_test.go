package api_test

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

// logWorld is a small history: two key-admins with keys, a revocation with
// a reason, and verifications from several addresses.
type logWorld struct {
	h                *harness
	aID, a, bID, b   string
	auditor          string
	k1, k2, k3, k4   api.CreatedKey
	from, to, middle time.Time
}

func newLogWorld(t *testing.T) *logWorld {
	h := mustStartWithLog(t)
	w := &logWorld{h: h, from: time.Now().Add(-time.Second)}
	w.aID, w.a = h.principal("alice", domain.RoleKeyAdmin, domain.RoleVerifier)
	w.bID, w.b = h.principal("bob", domain.RoleKeyAdmin)
	_, w.auditor = h.principal("audrey", domain.RoleAuditor)
	w.k1 = createKey(t, h, w.a, map[string]any{"name": "Payments prod", "comments": "rotated quarterly"})
	w.k2 = createKey(t, h, w.a, map[string]any{"name": "ci"})
	w.k3 = createKey(t, h, w.a, map[string]any{"name": "batch", "allowed_ips": []string{"192.0.2.0/24"}})
	w.k4 = createKey(t, h, w.b, map[string]any{"name": "bob's key"})
	h.do("POST", "/v1/keys/"+w.k2.KeyID+"/revoke", w.a, map[string]string{"reason": "Leaked in a public repo"})
	time.Sleep(5 * time.Millisecond)
	w.middle = time.Now()
	time.Sleep(5 * time.Millisecond)
	h.verify(w.k1.Token, "", "10.1.2.3", w.a)
	h.verify(w.k1.Token, "orders.write", "10.1.2.3", w.a)
	h.verify(w.k3.Token, "", "192.0.2.5", w.a)
	h.verify(w.k3.Token, "", "2001:db8::7", w.a)
	h.verify(w.k2.Token, "", "10.9.9.9", w.a)
	h.verify("klk_garbage", "", "10.9.9.9", w.a)
	time.Sleep(2 * time.Millisecond)
	w.to = time.Now()
	h.syncLog()
	return w
}

func (w *logWorld) search(t *testing.T, token string, params url.Values) api.LogPage {
	t.Helper()
	r := w.h.do("GET", "/v1/logs?"+params.Encode(), token, nil)
	if r.status != http.StatusOK {
		t.Fatalf("search %v: %d %s", params, r.status, r.body)
	}
	var p api.LogPage
	r.json(t, &p)
	return p
}

func TestLogSearchFilters(t *testing.T) {
	w := newLogWorld(t)
	all := func(p api.LogPage, f func(api.LogEntry) bool) bool {
		for _, e := range p.Events {
			if !f(e) {
				return false
			}
		}
		return true
	}
	cases := []struct {
		name   string
		params url.Values
		want   int // -1: at least one
		check  func(api.LogEntry) bool
	}{
		{"one key", url.Values{"key_id": {w.k1.KeyID}}, -1, func(e api.LogEntry) bool { return e.KeyID == w.k1.KeyID }},
		{"several keys", url.Values{"key_id": {w.k2.KeyID + "," + w.k3.KeyID}}, -1, func(e api.LogEntry) bool { return e.KeyID == w.k2.KeyID || e.KeyID == w.k3.KeyID }},
		{"owner", url.Values{"owner": {w.bID}}, -1, func(e api.LogEntry) bool { return e.Owner == w.bID }},
		{"actor", url.Values{"actor": {w.aID}}, -1, func(e api.LogEntry) bool { return e.Actor == w.aID }},
		{"action", url.Values{"action": {"revoked"}}, 1, func(e api.LogEntry) bool { return e.KeyID == w.k2.KeyID && e.Reason == "Leaked in a public repo" }},
		{"outcome", url.Values{"outcome": {domain.OutcomeInsufficientPermissions}}, 1, func(e api.LogEntry) bool { return e.KeyID == w.k1.KeyID }},
		{"code alias", url.Values{"code": {domain.OutcomeMalformed}}, 1, func(e api.LogEntry) bool { return e.KeyID == domain.UnknownKeyID }},
		{"exact ip", url.Values{"ip": {"10.1.2.3"}}, -1, func(e api.LogEntry) bool { return e.SourceIP == "10.1.2.3" }},
		{"ipv4 cidr", url.Values{"ip": {"192.0.2.0/24"}}, 1, func(e api.LogEntry) bool { return e.SourceIP == "192.0.2.5" }},
		{"wide ipv4 cidr", url.Values{"ip": {"10.0.0.0/8"}, "action": {"denied"}}, 3, func(e api.LogEntry) bool { return strings.HasPrefix(e.SourceIP, "10.") }},
		{"ipv6 cidr", url.Values{"ip": {"2001:db8::/32"}}, 1, func(e api.LogEntry) bool { return e.SourceIP == "2001:db8::7" }},
		{"time range before", url.Values{"from": {w.from.Format(time.RFC3339Nano)}, "to": {w.middle.Format(time.RFC3339Nano)}, "action": {"used", "denied"}, "key_id": {w.k3.KeyID}}, 0, nil},
		{"time range after", url.Values{"from": {w.middle.Format(time.RFC3339Nano)}, "to": {w.to.Format(time.RFC3339Nano)}, "key_id": {w.k3.KeyID}}, 2, func(e api.LogEntry) bool { return e.Time.After(w.middle) }},
		{"free text reason", url.Values{"q": {"LEAKED"}}, 1, func(e api.LogEntry) bool { return e.Action == "revoked" }},
		{"free text name", url.Values{"q": {"payments"}}, 1, func(e api.LogEntry) bool { return e.Name == "Payments prod" }},
		{"free text comments", url.Values{"q": {"quarterly"}}, 1, func(e api.LogEntry) bool { return e.KeyID == w.k1.KeyID }},
		{"combined", url.Values{"key_id": {w.k1.KeyID}, "action": {"used"}, "ip": {"10.1.2.3"}}, 1, func(e api.LogEntry) bool { return e.Outcome == domain.OutcomeValid }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := w.search(t, w.auditor, c.params)
			switch {
			case c.want == -1 && len(p.Events) == 0:
				t.Fatal("no events")
			case c.want >= 0 && len(p.Events) != c.want:
				t.Fatalf("%d events, want %d: %+v", len(p.Events), c.want, p.Events)
			}
			if c.check != nil && !all(p, c.check) {
				t.Fatalf("an event does not match: %+v", p.Events)
			}
			for i := 1; i < len(p.Events); i++ {
				if p.Events[i].Time.After(p.Events[i-1].Time) {
					t.Fatal("not newest first")
				}
			}
		})
	}
}

func TestLogVisibilityFollowsRoles(t *testing.T) {
	w := newLogWorld(t)
	mine := []string{w.k1.KeyID, w.k2.KeyID, w.k3.KeyID}
	p := w.search(t, w.a, url.Values{"limit": {"1000"}})
	for _, e := range p.Events {
		if !slices.Contains(mine, e.KeyID) {
			// The key-admin's own credential is a key of its own too.
			if k, ok := w.h.state.Key(e.KeyID); !ok || k.Owner != w.aID {
				t.Fatalf("key-admin sees an event of key %s", e.KeyID)
			}
		}
	}
	if len(p.Events) == 0 {
		t.Fatal("key-admin sees nothing of its own")
	}
	// Asking for another's key explicitly yields nothing, not an error.
	if p := w.search(t, w.a, url.Values{"key_id": {w.k4.KeyID}}); len(p.Events) != 0 {
		t.Fatalf("key-admin sees bob's key: %+v", p.Events)
	}
	if p := w.search(t, w.b, url.Values{"key_id": {w.k1.KeyID}}); len(p.Events) != 0 {
		t.Fatal("bob sees alice's key")
	}
	for _, tok := range []string{w.auditor, w.h.root} {
		if p := w.search(t, tok, url.Values{"key_id": {w.k4.KeyID, w.k1.KeyID}}); len(p.Events) < 2 {
			t.Fatalf("auditor/superadmin see %d events", len(p.Events))
		}
	}
	_, verifier := w.h.principal("v", domain.RoleVerifier)
	if r := w.h.do("GET", "/v1/logs", verifier, nil); r.status != http.StatusForbidden {
		t.Fatalf("verifier reads the log: %d", r.status)
	}
}

// TestLogPaginationWhileWriting walks the log three events at a time while
// new events keep arriving: the walk sees every event that existed when it
// started exactly once, in order.
func TestLogPaginationWhileWriting(t *testing.T) {
	w := newLogWorld(t)
	var before api.LogPage
	before = w.search(t, w.auditor, url.Values{"limit": {"1000"}})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				w.h.verify(w.k1.Token, "", "10.1.2.3", w.a)
			}
		}
	}()
	seen := map[string]bool{}
	var order []api.LogEntry
	cursor := ""
	for pages := 0; ; pages++ {
		params := url.Values{"limit": {"3"}}
		if cursor != "" {
			params.Set("cursor", cursor)
		}
		p := w.search(t, w.auditor, params)
		for _, e := range p.Events {
			if seen[e.EventID] {
				t.Fatalf("event %s on two pages", e.EventID)
			}
			seen[e.EventID] = true
			order = append(order, e)
		}
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
		if pages > 1000 {
			t.Fatal("pagination does not end")
		}
	}
	close(stop)
	wg.Wait()
	for _, e := range before.Events {
		if !seen[e.EventID] {
			t.Fatalf("event %s missing from the walk", e.EventID)
		}
	}
	for i := 1; i < len(order); i++ {
		a, b := order[i-1], order[i]
		if b.Time.After(a.Time) || (b.Time.Equal(a.Time) && b.EventID > a.EventID) {
			t.Fatal("walk is not newest first")
		}
	}
}

func TestLogExport(t *testing.T) {
	w := newLogWorld(t)
	// Every search authenticates, which itself lands in the log: compare
	// the two formats over a window that closed before either ran.
	until := w.to.Format(time.RFC3339Nano)
	page := w.search(t, w.auditor, url.Values{"limit": {"1000"}, "to": {until}})
	n := len(page.Events)
	r := w.h.do("GET", "/v1/logs?format=ndjson&to="+url.QueryEscape(until), w.auditor, nil)
	if r.status != 200 || r.header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("ndjson: %d %s", r.status, r.header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	lines := 0
	for sc.Scan() {
		var e api.LogEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %d: %v", lines, err)
		}
		if e.EventID != page.Events[lines].EventID {
			t.Fatalf("ndjson line %d is %s, json page has %s", lines, e.EventID, page.Events[lines].EventID)
		}
		lines++
	}
	if lines != n {
		t.Fatalf("ndjson has %d lines, search %d", lines, n)
	}
	r = w.h.do("GET", "/v1/logs?format=csv&q=leaked", w.auditor, nil)
	recs, err := csv.NewReader(bytes.NewReader(r.body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0][0] != "event_id" || recs[1][3] != "revoked" || recs[1][14] != "Leaked in a public repo" {
		t.Fatalf("csv = %v", recs)
	}
	// An empty export still has its header.
	r = w.h.do("GET", "/v1/logs?format=csv&q=nothing-matches-this", w.auditor, nil)
	if got := strings.TrimSpace(string(r.body)); !strings.HasPrefix(got, "event_id,") || strings.Contains(got, "\n") {
		t.Fatalf("empty csv = %q", got)
	}
}

// TestLogSQLInjection sends classic injection payloads in every parameter:
// each answer is a 400 or a 200 without rows, never a ClickHouse error.
func TestLogSQLInjection(t *testing.T) {
	w := newLogWorld(t)
	payloads := []string{
		`' OR 1=1 --`, `'; DROP TABLE audit_log; --`, `\' OR \'1\'=\'1`, `" OR ""="`, `1) OR (1=1`,
		`x' UNION SELECT * FROM system.tables --`, "\x00", `%' OR '%'='`, `{x:String}`, "?", `\`,
	}
	params := []string{"key_id", "owner", "actor", "action", "outcome", "code", "ip", "from", "to", "q", "limit", "cursor", "format"}
	total := 0
	for _, p := range params {
		for _, payload := range payloads {
			r := w.h.do("GET", "/v1/logs?"+url.Values{p: {payload}}.Encode(), w.auditor, nil)
			switch r.status {
			case http.StatusBadRequest:
			case http.StatusOK:
				var page api.LogPage
				r.json(t, &page)
				if len(page.Events) != 0 {
					t.Errorf("%s=%q returned %d rows", p, payload, len(page.Events))
				}
			default:
				t.Errorf("%s=%q: status %d %s", p, payload, r.status, r.body)
			}
			total++
		}
	}
	// The table is intact and the log still answers.
	if got := len(w.search(t, w.auditor, url.Values{"limit": {"1000"}}).Events); got == 0 {
		t.Fatal("log empty after injection attempts")
	}
	t.Logf("%d injection attempts", total)
}
