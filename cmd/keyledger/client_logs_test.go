package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

func TestParseLogsSearch(t *testing.T) {
	g := &globals{getenv: func(string) string { return "" }, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	_, v, err := g.parseLogsSearch("logs search", []string{"--key", "a", "--key", "b", "--action", "denied", "--outcome", "REVOKED",
		"--ip", "10.0.0.0/8", "--from", "2026-01-02T03:04:05Z", "--q", "leak", "--limit", "5"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := v.Encode(), "action=denied&from=2026-01-02T03%3A04%3A05Z&ip=10.0.0.0%2F8&key_id=a&key_id=b&limit=5&outcome=REVOKED&q=leak"; got != want {
		t.Fatalf("query = %s\nwant    %s", got, want)
	}
	_, v, err = g.parseLogsSearch("logs search", []string{"--since", "1h", "--format", "csv"})
	if err != nil {
		t.Fatal(err)
	}
	if from, err := time.Parse(time.RFC3339Nano, v.Get("from")); err != nil || time.Since(from) < 59*time.Minute || v.Get("format") != "csv" {
		t.Fatalf("since/format = %v", v)
	}
	for _, bad := range [][]string{
		{"--from", "yesterday"}, {"--since", "-1h"}, {"--limit", "5000"}, {"--format", "xml"},
		{"--format", "csv", "--all-pages"}, {"--since", "1h", "--from", "2026-01-02T03:04:05Z"}, {"stray"},
	} {
		var ue usageError
		if _, _, err := g.parseLogsSearch("logs search", bad); err == nil || !asUsage(err, &ue) {
			t.Errorf("%q: err = %v, want a usage error", bad, err)
		}
	}
}

func asUsage(err error, ue *usageError) bool {
	u, ok := err.(usageError)
	if ok {
		*ue = u
	}
	return ok
}

// TestLogsSearchCLI drives "keyledger logs search" against the real binary
// and its audit log.
func TestLogsSearchCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: builds and runs the binary")
	}
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), randomSecret(t))
	e := &lifecycle{t: t, tokens: map[string]bool{}}
	e.srv = startE2EServer(t, t.TempDir(), "KEYLEDGER_ROOT_TOKEN="+root)
	var p api.CreatedPrincipal
	e.must(root, "POST", "/v1/principals", map[string]any{"name": "ops", "roles": []string{"key-admin", "verifier"}}, http.StatusCreated, &p)
	admin := p.Credential.Token
	k := e.createKey(admin, map[string]any{"name": "logged key"})
	for _, ip := range []string{"10.1.2.3", "10.1.2.4", "192.0.2.1"} {
		e.verify(admin, k.Token, "", ip)
	}
	e.verify(admin, k.Token, "not.held", "10.1.2.3")
	e.must(admin, "POST", "/v1/keys/"+k.KeyID+"/revoke", map[string]string{"reason": "rotated out after audit"}, http.StatusOK, nil)

	var page api.LogPage
	checkFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		e.cliJSON(admin, &page, "logs", "search", "--key", k.KeyID)
		if len(page.Events) < 6 {
			return fmt.Errorf("%d events of the key in the log so far", len(page.Events))
		}
		return nil
	})
	if page.Events[0].Action != "revoked" || page.Events[len(page.Events)-1].Action != "created" {
		t.Fatalf("not newest first: %+v", page.Events)
	}
	out := e.cliOK(admin, "logs", "search", "--key", k.KeyID, "--action", "used", "--ip", "10.1.2.0/24")
	if lines := strings.Count(out, "\n"); lines != 3 || !strings.Contains(out, "10.1.2.4") || strings.Contains(out, "192.0.2.1") {
		t.Fatalf("filtered table (%d lines):\n%s", lines, out)
	}
	e.cliJSON(admin, &page, "logs", "search", "--key", k.KeyID, "--outcome", domain.OutcomeInsufficientPermissions)
	if len(page.Events) != 1 || page.Events[0].Permissions[0] != "not.held" {
		t.Fatalf("outcome filter: %+v", page.Events)
	}
	file := filepath.Join(t.TempDir(), "log.csv")
	e.cliOK(admin, "logs", "search", "--key", k.KeyID, "--format", "csv", "--output", file)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil || len(recs) != 7 || recs[1][14] != "rotated out after audit" {
		t.Fatalf("csv export (%v): %q", err, recs)
	}
	// Two at a time through every page: each event once.
	e.cliJSON(admin, &page, "logs", "search", "--key", k.KeyID, "--limit", "2", "--all-pages")
	seen := map[string]bool{}
	for _, ev := range page.Events {
		if seen[ev.EventID] {
			t.Fatalf("event %s twice", ev.EventID)
		}
		seen[ev.EventID] = true
	}
	if len(seen) != 6 {
		t.Fatalf("all pages gave %d events, want 6", len(seen))
	}
	e.cliFail(admin, 2, "usage", "logs", "search", "--from", "last tuesday")
	e.cliFail(admin, 1, "invalid_cidr", "logs", "search", "--ip", "10.0.0.0/99")
	var raw json.RawMessage
	e.cliJSON(admin, &raw, "logs", "search", "--q", "audit")
}
