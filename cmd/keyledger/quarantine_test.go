package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	keyledgerclient "github.com/keyledger/keyledger/api/client"
	"github.com/keyledger/keyledger/api/client/replica"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestEveryWriterProvesItself plays issue 24's compromised service against
// a node whose embedded NATS listens for other processes. A replica with a
// writer key of its own publishes usage that is accepted, searchable and
// provable. Then, with the service's NATS credential, it publishes an
// unsigned used event with a made-up address, a lifecycle-typed event and
// an alert-typed event on a usage subject, bytes that are not an event,
// and an event signed with the service's own key naming another actor;
// publishing to ALERTS is refused by NATS. Every stored one is
// quarantined: last used is unchanged, no normal search shows it, no alert
// but forged_event is listed, the metric counts each, the node stays ready
// (and after a restart), and audit verify names each one.
func TestEveryWriterProvesItself(t *testing.T) {
	dir := t.TempDir()
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{4, 2})
	t.Setenv("KEYLEDGER_ROOT_TOKEN", root)

	// The service's writer key, trusted for its own usage only: the
	// bootstrap file a node imports at its first start.
	_, svcKey, _ := ed25519.GenerateKey(rand.Reader)
	const service = "billing"
	trust := domain.Writers{Writers: []domain.Writer{{ID: domain.WriterID(svcKey.Public().(ed25519.PublicKey)), Name: "billing service", Service: service}}}
	b, _ := json.Marshal(trust)
	must(t, os.WriteFile(filepath.Join(dir, trustFileName), b, 0o600))

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	m := startQuarantineNode(t, ctx, dir)
	natsURL, creds := m.store.ClientURL(), m.store.CredentialsDir()

	// The key the forgeries are about: another principal's, which
	// nothing but the replica uses, so its last use is the replica's.
	created := createVictimKey(t, m, root)
	victim, victimKey := created.Token, created.KeyID

	// A replica with its own writer key: its usage is accepted.
	writers := m.store.Writers()
	r, err := replica.Open(ctx, replica.Config{
		NATS:    eventstore.Config{URL: natsURL, NkeySeedFile: eventstore.SeedFile(creds, eventstore.IdentityVerifier)},
		Writers: writers, Service: service, WriterKey: svcKey, Logger: slog.New(slog.DiscardHandler),
	})
	must(t, err)
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		v, err := r.Verify(ctx, keyledgerclient.VerifyRequest{Token: victim, IP: "192.0.2.10"})
		if err != nil {
			return err
		}
		if !v.Valid {
			return fmt.Errorf("replica verification: %+v", v)
		}
		return nil
	})
	must(t, r.Close(ctx))
	var accepted api.LogEntry
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, e := range searchLog(t, m, root, "key_id="+victimKey+"&actor="+service) {
			if e.SourceIP == "192.0.2.10" {
				accepted = e
				return nil
			}
		}
		return errors.New("the replica's usage is not searchable yet")
	})
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		_, err := callStatus(m, "/v1/audit/proof?event_id="+accepted.EventID, root)
		return err
	})
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if _, ip, _ := m.lastUsed.LastUsed(victimKey); ip != "192.0.2.10" {
			return fmt.Errorf("last used from %q", ip)
		}
		return nil
	})

	// The compromised service, with its NATS credential.
	svc := dialAs(t, ctx, natsURL, creds, eventstore.IdentityVerifier)
	js, err := jetstream.New(svc)
	must(t, err)
	usageSubject := "keyledger.usage." + victimKey + ".used"
	event := func(ev domain.Event, actor string) []byte {
		t.Helper()
		env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), victimKey, ev, time.Now(), actor, &domain.RequestContext{SourceIP: "203.0.113.66"})
		must(t, err)
		env.Seal("")
		b, err := env.Marshal()
		must(t, err)
		return b
	}
	publish := func(subject string, data []byte, key ed25519.PrivateKey) error {
		msg := nats.NewMsg(subject)
		msg.Data = data
		if key != nil {
			msg.Header.Set(domain.HdrWriter, domain.WriterID(key.Public().(ed25519.PublicKey)))
			msg.Header.Set(domain.HdrSignature, domain.EncodeSignature(domain.SignMessage(key, subject, data)))
		}
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := js.PublishMsg(pctx, msg)
		return err
	}
	used := domain.KeyUsed{Code: domain.OutcomeValid}
	alert := domain.AlertRaised{Rule: "brute_force", Severity: domain.SeverityCritical, Incident: "made-up", Summary: "made up"}
	forged := []struct {
		name    string
		subject string
		data    []byte
		key     ed25519.PrivateKey
	}{
		{"unsigned used event with a made-up address", usageSubject, event(used, "bob"), nil},
		{"lifecycle-typed event on a usage subject", usageSubject, event(domain.KeyRevoked{Reason: "made up"}, service), svcKey},
		{"alert-typed event on a usage subject", usageSubject, event(alert, service), svcKey},
		{"bytes that are not an event", usageSubject, []byte("not an event"), svcKey},
		{"signed event naming another actor", usageSubject, event(used, "bob"), svcKey},
	}
	for _, f := range forged {
		if err := publish(f.subject, f.data, f.key); err != nil {
			t.Fatalf("%s: not stored: %v", f.name, err)
		}
	}
	// ALERTS is out of the service's reach.
	if err := publish("keyledger.alerts.brute_force.critical", event(alert, service), svcKey); err == nil {
		t.Fatal("a service published to ALERTS")
	}

	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := m.forged.count.Load(); n != uint64(len(forged)) {
			return fmt.Errorf("%d messages quarantined, want %d", n, len(forged))
		}
		return nil
	})
	metrics, err := callStatus(m, "/metrics", root)
	must(t, err)
	if want := fmt.Sprintf("keyledger_forged_events_total %d", len(forged)); !strings.Contains(string(metrics), want) {
		t.Errorf("metrics lack %q", want)
	}
	// forged_event names every one; no other alert is listed.
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		var page api.AlertPage
		b, err := callStatus(m, "/v1/alerts", root)
		if err != nil {
			return err
		}
		must(t, json.Unmarshal(b, &page))
		n := 0
		for _, a := range page.Alerts {
			if a.Rule != "forged_event" {
				return fmt.Errorf("alert %s listed: %s", a.Rule, a.Summary)
			}
			if !strings.Contains(a.Summary, usageSubject) || !strings.Contains(a.Summary, "writer") {
				return fmt.Errorf("forged_event does not name the subject and writer: %s", a.Summary)
			}
			n++
		}
		if n != len(forged) {
			return fmt.Errorf("%d forged_event alerts, want %d", n, len(forged))
		}
		return nil
	})
	// Nothing was applied: last used, the log's normal search, readiness.
	if _, ip, _ := m.lastUsed.LastUsed(victimKey); ip != "192.0.2.10" {
		t.Errorf("last used from %q after the forgeries, want 192.0.2.10", ip)
	}
	for _, e := range searchLog(t, m, root, "key_id="+victimKey) {
		forgedAlert := e.Type == domain.TypeAlertRaised && (e.Stream != domain.StreamAlerts || e.Name != "forged_event")
		if e.SourceIP == "203.0.113.66" || e.Type == domain.TypeKeyRevoked || forgedAlert || e.Actor == "bob" || e.Stream == domain.StreamUsage && e.Actor != service {
			t.Errorf("a quarantined event is in the log's search: %+v", e)
		}
	}
	// A reviewer who asks sees them, each with why it was quarantined
	// (the bytes that are not an event name no key).
	checkFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		rows := searchLog(t, m, root, "key_id="+victimKey+"&quarantined=true")
		for _, e := range rows {
			if e.Quarantine == "" {
				return fmt.Errorf("a quarantined row without its reason: %+v", e)
			}
		}
		if len(rows) != len(forged)-1 {
			return fmt.Errorf("%d quarantined rows of the key, want %d", len(rows), len(forged)-1)
		}
		return nil
	})
	if k, ok := m.state.Key(victimKey); !ok || k.Status(time.Now()) != domain.StatusActive {
		t.Errorf("root key after a revoked-typed usage event: %+v", k)
	}
	wantReady(t, m)

	// A restart: still ready, still nothing applied.
	m.Close()
	m = startQuarantineNode(t, ctx, dir)
	wantReady(t, m)
	if _, ip, _ := m.lastUsed.LastUsed(victimKey); ip != "192.0.2.10" {
		t.Errorf("last used from %q after a restart, want 192.0.2.10", ip)
	}
	m.Close()

	// audit verify names every stored one and fails.
	out, errs, code := runCLI(nil, "audit", "verify", "--data-dir", dir)
	if code != 1 {
		t.Fatalf("audit verify with quarantined messages: exit %d\n%s%s", code, out, errs)
	}
	if got := strings.Count(out, "QUARANTINED: USAGE sequence"); got != len(forged) {
		t.Errorf("audit verify named %d quarantined messages, want %d:\n%s%s", got, len(forged), out, errs)
	}
}

func startQuarantineNode(t *testing.T, ctx context.Context, dir string) *Main {
	t.Helper()
	m := &Main{Stdout: io.Discard}
	must(t, m.ParseFlags([]string{"--data-dir", dir, "--http-addr", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0",
		"--checkpoint-every", "1", "--checkpoint-interval", "100ms"}, io.Discard))
	m.Logger = slog.New(slog.DiscardHandler)
	must(t, m.Run(ctx))
	t.Cleanup(func() { m.Close() })
	return m
}

func wantReady(t *testing.T, m *Main) {
	t.Helper()
	checkFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		res, err := http.Get("http://" + m.Addr() + "/readyz")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("readyz %d %s", res.StatusCode, b)
		}
		return nil
	})
}

// createVictimKey creates the principal alice and returns her credential,
// a key that nothing else uses.
func createVictimKey(t *testing.T, m *Main, root string) api.CreatedKey {
	t.Helper()
	body := strings.NewReader(`{"name":"alice","roles":["key-admin"]}`)
	req, err := http.NewRequest("POST", "http://"+m.Addr()+"/v1/principals", body)
	must(t, err)
	req.Header.Set("Authorization", "Bearer "+root)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	must(t, err)
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create a principal: %d %s", res.StatusCode, b)
	}
	var p api.CreatedPrincipal
	must(t, json.Unmarshal(b, &p))
	return p.Credential
}

func searchLog(t *testing.T, m *Main, token, query string) []api.LogEntry {
	t.Helper()
	b, err := callStatus(m, "/v1/logs?"+query, token)
	must(t, err)
	var page struct {
		Events []api.LogEntry `json:"events"`
	}
	must(t, json.Unmarshal(b, &page))
	return page.Events
}

// TestWritersKeptInTheLedger: the super administrator trusts a service's
// writer key with `keyledger writers add`, and the service's signed usage
// is applied; after `writers retire` it is quarantined. The set is folded
// from the ledger again after a restart, and audit verify reads it there
// too: the usage signed while the key was trusted verifies, the one after
// is named.
func TestWritersKeptInTheLedger(t *testing.T) {
	dir := t.TempDir()
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{7, 7})
	t.Setenv("KEYLEDGER_ROOT_TOKEN", root)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	m := startQuarantineNode(t, ctx, dir)
	natsURL, creds := m.store.ClientURL(), m.store.CredentialsDir()
	victim := createVictimKey(t, m, root)
	env := map[string]string{"KEYLEDGER_SERVER": "http://" + m.Addr(), "KEYLEDGER_TOKEN": root}

	_, svcKey, _ := ed25519.GenerateKey(rand.Reader)
	svcID := domain.WriterID(svcKey.Public().(ed25519.PublicKey))
	out, errs, code := runCLI(env, "writers", "add", "--key", svcID, "--name", "billing service", "--service", "billing")
	if code != 0 || !strings.Contains(out, svcID) {
		t.Fatalf("writers add: exit %d\n%s%s", code, out, errs)
	}
	verifyAs := func(ip string) {
		t.Helper()
		r, err := replica.Open(ctx, replica.Config{
			NATS:    eventstore.Config{URL: natsURL, NkeySeedFile: eventstore.SeedFile(creds, eventstore.IdentityVerifier)},
			Writers: m.store.Writers(), Service: "billing", WriterKey: svcKey, Logger: slog.New(slog.DiscardHandler),
		})
		must(t, err)
		defer r.Close(ctx)
		checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
			v, err := r.Verify(ctx, keyledgerclient.VerifyRequest{Token: victim.Token, IP: ip})
			if err != nil {
				return err
			}
			if !v.Valid {
				return fmt.Errorf("replica verification: %+v", v)
			}
			return nil
		})
	}
	verifyAs("192.0.2.20")
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if _, ip, _ := m.lastUsed.LastUsed(victim.KeyID); ip != "192.0.2.20" {
			return fmt.Errorf("last used from %q, want the trusted service's 192.0.2.20", ip)
		}
		return nil
	})
	if n := m.forged.count.Load(); n != 0 {
		t.Fatalf("%d messages quarantined while the service was trusted", n)
	}

	out, errs, code = runCLI(env, "writers", "retire", svcID, "--reason", "rotated")
	if code != 0 || !strings.Contains(out, "Writer retired.") {
		t.Fatalf("writers retire: exit %d\n%s%s", code, out, errs)
	}
	verifyAs("192.0.2.21")
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := m.forged.count.Load(); n == 0 {
			return errors.New("the retired writer's usage is not quarantined")
		}
		return nil
	})
	if _, ip, _ := m.lastUsed.LastUsed(victim.KeyID); ip != "192.0.2.20" {
		t.Errorf("last used from %q after the retired writer's usage, want 192.0.2.20", ip)
	}

	// After a restart the set comes from the ledger.
	m.Close()
	m = startQuarantineNode(t, ctx, dir)
	wantReady(t, m)
	env["KEYLEDGER_SERVER"] = "http://" + m.Addr()
	out, errs, code = runCLI(env, "--json", "writers", "list")
	if code != 0 {
		t.Fatalf("writers list: exit %d\n%s%s", code, out, errs)
	}
	var list api.WriterList
	must(t, json.Unmarshal([]byte(out), &list))
	found := false
	for _, w := range list.Writers {
		if w.Key == svcID {
			found = w.Service == "billing" && w.RetiredAt != nil
		}
	}
	if !found {
		t.Errorf("after a restart the service's writer is not listed as retired: %s", out)
	}
	m.Close()

	out, errs, code = runCLI(nil, "audit", "verify", "--data-dir", dir)
	if code != 1 || strings.Count(out, "QUARANTINED:") < 1 || !strings.Contains(out, "retired") {
		t.Fatalf("audit verify: exit %d, want 1 naming the retired writer's usage only\n%s%s", code, out, errs)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "QUARANTINED:") && !strings.Contains(line, "retired") {
			t.Errorf("audit verify quarantined usage signed while its writer was trusted: %s", line)
		}
	}
}
