package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// runCLI runs the client in-process and returns stdout, stderr, exit code.
func runCLI(env map[string]string, args ...string) (string, string, int) {
	for k, v := range env {
		os.Setenv(k, v)
		defer os.Unsetenv(k)
	}
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

// TestAuditVerifyAndProofs runs a node with a checkpoint every few events,
// proves an event through the API and checks the proof offline, verifies
// the stopped node's data dir, then flips a byte in its file store and
// verifies again.
func TestAuditVerifyAndProofs(t *testing.T) {
	dir := t.TempDir()
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{7, 7, 7})
	t.Setenv("KEYLEDGER_ROOT_TOKEN", root)
	m := &Main{Stdout: io.Discard}
	if err := m.ParseFlags([]string{"--data-dir", dir, "--http-addr", "127.0.0.1:0", "--checkpoint-every", "3", "--checkpoint-interval", "200ms", "--nats-listen", "127.0.0.1:0"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	m.Logger = slog.New(slog.DiscardHandler)
	if err := m.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var p api.CreatedPrincipal
	_ = json.Unmarshal(call(t, m, "POST", "/v1/principals", root, map[string]any{"name": "a", "roles": []string{"key-admin"}}), &p)
	var k api.CreatedKey
	_ = json.Unmarshal(call(t, m, "POST", "/v1/keys", p.Credential.Token, map[string]any{"name": "audit-marker-qq"}), &k)
	call(t, m, "POST", "/v1/keys/"+k.KeyID+"/revoke", p.Credential.Token, map[string]string{"reason": "r"})
	var events struct {
		Events []api.EventView `json:"events"`
	}
	_ = json.Unmarshal(call(t, m, "GET", "/v1/keys/"+k.KeyID+"/events", p.Credential.Token, nil), &events)
	created := events.Events[0]

	// Prove the key's creation once a checkpoint covers it, check the
	// proof offline.
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		_, err := callStatus(m, "/v1/audit/proof?event_id="+created.ID.String(), root)
		return err
	})
	work := t.TempDir()
	pubFile, proofFile, eventFile := filepath.Join(work, "pub.json"), filepath.Join(work, "proof.json"), filepath.Join(work, "event.json")
	must(t, os.WriteFile(pubFile, call(t, m, "GET", "/v1/audit/public-key", root, nil), 0o644))
	// keyledger audit prove fetches the same proof into a file.
	if _, errs, code := runCLI(map[string]string{"KEYLEDGER_TOKEN": root}, "audit", "prove", "--server", "http://"+m.Addr(),
		"--event-id", created.ID.String(), "--output", proofFile); code != 0 {
		t.Fatalf("audit prove: exit %d %s", code, errs)
	}
	var fetched api.ProofView
	b, err := os.ReadFile(proofFile)
	must(t, err)
	must(t, json.Unmarshal(b, &fetched))
	if fetched.EventID != created.ID.String() || fetched.Seq != created.Seq {
		t.Fatalf("audit prove wrote %s", b)
	}
	raw, _ := created.Envelope.Marshal()
	must(t, os.WriteFile(eventFile, raw, 0o644))
	if out, errs, code := runCLI(nil, "audit", "check-proof", "--proof", proofFile, "--event", eventFile, "--public-key", pubFile); code != 0 || !strings.HasPrefix(out, "OK") {
		t.Fatalf("check-proof: %d %s %s", code, out, errs)
	}
	must(t, os.WriteFile(eventFile, bytes.Replace(raw, []byte("audit-marker-qq"), []byte("audit-marker-qx"), 1), 0o644))
	if _, errs, code := runCLI(nil, "audit", "check-proof", "--proof", proofFile, "--event", eventFile, "--public-key", pubFile); code != 1 || !strings.Contains(errs, "proof_failed") {
		t.Fatalf("check-proof of a modified event: %d %s", code, errs)
	}

	// A running node's data dir is refused, not opened beside the node.
	if _, errs, code := runCLI(nil, "audit", "verify", "--data-dir", dir); code == 0 || !strings.Contains(errs, "node_running") {
		t.Fatalf("verify of a running node's dir: exit %d %s", code, errs)
	}
	// A running deployment verifies over NATS with the served public key.
	// It reads as the auditor, with the auditor's generated nkey and the
	// node's trusted writers.
	auditorSeed := eventstore.SeedFile(m.store.CredentialsDir(), eventstore.IdentityAuditor)
	if out, errs, code := runCLI(nil, "audit", "verify", "--nats-url", m.store.ClientURL(), "--nats-nkey", auditorSeed,
		"--trusted-writers", filepath.Join(dir, "trusted-writers.json"), "--public-key", pubFile); code != 0 || !strings.HasPrefix(out, "OK") {
		t.Fatalf("live verify: exit %d\n%s%s", code, out, errs)
	}
	must(t, m.Close())
	out, errs, code := runCLI(nil, "audit", "verify", "--data-dir", dir)
	if code != 0 || !strings.HasPrefix(out, "OK") {
		t.Fatalf("clean verify: exit %d\n%s%s", code, out, errs)
	}
	flipped := 0
	must(t, filepath.WalkDir(filepath.Join(dir, "nats"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if i := bytes.Index(b, []byte("audit-marker-qq")); i >= 0 {
			b[i+14] = 'x'
			flipped++
			return os.WriteFile(path, b, 0o600)
		}
		return nil
	}))
	if flipped == 0 {
		t.Fatal("nothing to tamper with")
	}
	_, errs, code = runCLI(nil, "audit", "verify", "--data-dir", dir)
	if code != 1 || !strings.Contains(errs, "audit_failed: KEYS sequence "+fmt.Sprint(created.Seq)) {
		t.Fatalf("tampered verify: exit %d %s", code, errs)
	}

	// The node restarted on the tampered dir: its notary sees the broken
	// log, /readyz fails and the critical alert is raised.
	m2 := &Main{Stdout: io.Discard}
	must(t, m2.ParseFlags([]string{"--data-dir", dir, "--http-addr", "127.0.0.1:0"}, io.Discard))
	m2.Logger = slog.New(slog.DiscardHandler)
	t0 := time.Now()
	must(t, m2.Run(context.Background()))
	t.Logf("restart took %s", time.Since(t0))
	defer func() { t.Logf("broken log reported %s after start", time.Since(t0)) }()
	defer m2.Close()
	checkFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if _, err := callStatus(m2, "/readyz", ""); err == nil || !strings.Contains(err.Error(), "audit chain broken") {
			return fmt.Errorf("readyz: %v", err)
		}
		b, err := callStatus(m2, "/v1/alerts", root)
		if err != nil {
			return err
		}
		var alerts struct {
			Alerts []api.AlertView `json:"alerts"`
		}
		_ = json.Unmarshal(b, &alerts)
		for _, a := range alerts.Alerts {
			if a.Rule == "audit_chain_broken" {
				return nil
			}
		}
		return fmt.Errorf("no audit_chain_broken alert in %s", b)
	})
}

// callStatus GETs path and returns the body, or an error for a non-200.
func callStatus(m *Main, path, token string) ([]byte, error) {
	req, _ := httpNewRequest("GET", "http://"+m.Addr()+path, token)
	res, err := httpDo(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		return nil, fmt.Errorf("%d %s", res.StatusCode, b)
	}
	return b, nil
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func httpNewRequest(method, url, token string) (*http.Request, error) {
	req, err := http.NewRequest(method, url, nil)
	if err == nil {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return req, err
}

func httpDo(req *http.Request) (*http.Response, error) { return http.DefaultClient.Do(req) }
