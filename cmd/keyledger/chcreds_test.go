package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/chlog"
)

// TestManagedClickHouseHasCredentials: the managed ClickHouse has a
// generated password in a 0600 file under the data dir and no
// passwordless user; the node's user reaches its own database only; and
// `audit verify --clickhouse` catches a row deleted from the audit log.
func TestManagedClickHouseHasCredentials(t *testing.T) {
	dir := t.TempDir()
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{5, 5, 5})
	t.Setenv("KEYLEDGER_ROOT_TOKEN", root)
	m := &Main{Stdout: io.Discard}
	must(t, m.ParseFlags([]string{"--data-dir", dir, "--http-addr", "127.0.0.1:0", "--no-sync", "--nats-listen", "127.0.0.1:0",
		"--audit-batch-wait", "50ms", "--checkpoint-every", "2", "--checkpoint-interval", "100ms"}, io.Discard))
	m.Logger = slog.New(slog.DiscardHandler)
	must(t, m.Run(context.Background()))
	defer m.Close()
	ctx := t.Context()

	pwFile := filepath.Join(dir, "clickhouse", chlog.PasswordFile)
	st, err := os.Stat(pwFile)
	must(t, err)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", pwFile, st.Mode().Perm())
	}
	addr := m.localCH.Addr()
	user, password := m.localCH.Credentials()
	// No passwordless user: neither default nor the node's user without
	// its password gets in.
	for _, cfg := range []chlog.Config{{Addr: addr}, {Addr: addr, Username: user}, {Addr: addr, Username: user, Password: "wrong"}} {
		cfg.Database = "keyledger"
		if st, err := chlog.Open(ctx, cfg, nil); err == nil {
			st.Close()
			t.Errorf("user %q with password %q got in", cfg.Username, cfg.Password)
		}
	}
	// The node's user is limited to its database.
	if st, err := chlog.Open(ctx, chlog.Config{Addr: addr, Username: user, Password: password, Database: "elsewhere"}, nil); err == nil {
		st.Close()
		t.Error("the node's user created and opened another database")
	}

	var p api.CreatedPrincipal
	_ = json.Unmarshal(call(t, m, "POST", "/v1/principals", root, map[string]any{"name": "a", "roles": []string{"key-admin"}}), &p)
	var k api.CreatedKey
	_ = json.Unmarshal(call(t, m, "POST", "/v1/keys", p.Credential.Token, map[string]any{"name": "to-be-erased"}), &k)
	var events struct {
		Events []api.EventView `json:"events"`
	}
	_ = json.Unmarshal(call(t, m, "GET", "/v1/keys/"+k.KeyID+"/events", p.Credential.Token, nil), &events)
	victim := events.Events[0].ID.String()
	// The key's creation is not the newest KEYS event: a live verify
	// counts a missing newest tail as the sink's lag.
	call(t, m, "POST", "/v1/keys/"+k.KeyID+"/revoke", p.Credential.Token, map[string]string{"reason": "r"})

	pub := filepath.Join(t.TempDir(), "pub.json")
	must(t, os.WriteFile(pub, call(t, m, "GET", "/v1/audit/public-key", root, nil), 0o644))
	seed := eventstore.SeedFile(m.store.CredentialsDir(), eventstore.IdentityAuditor)
	verify := func() (string, string, int) {
		return runCLI(nil, "audit", "verify", "--nats-url", m.store.ClientURL(), "--nats-nkey", seed,
			"--trusted-writers", filepath.Join(dir, "trusted-writers.json"), "--public-key", pub,
			"--clickhouse", addr, "--clickhouse-user", user, "--clickhouse-password-file", pwFile)
	}
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if out, errs, code := verify(); code != 0 || !strings.Contains(out, "ClickHouse rows") || strings.Contains(out, "not in ClickHouse yet") {
			return &apiError{Code: "not yet", Detail: out + errs}
		}
		return nil
	})

	// Someone with the database's credentials deletes a row.
	must(t, m.ch.Conn().Exec(ctx, "ALTER TABLE "+chlog.Table+" DELETE WHERE event_id = ?", victim))
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		var n uint64
		if err := m.ch.Conn().QueryRow(ctx, "SELECT count() FROM "+chlog.Table+" WHERE event_id = ?", victim).Scan(&n); err != nil {
			return err
		}
		if n != 0 {
			return &apiError{Code: "not yet", Detail: "the row is still there"}
		}
		return nil
	})
	out, errs, code := verify()
	if code != 1 || !strings.Contains(errs, "audit_failed") || !strings.Contains(errs, victim) {
		t.Fatalf("verify after the row was deleted: exit %d\n%s%s", code, out, errs)
	}
	t.Logf("audit verify: %s", strings.TrimSpace(errs))
}
