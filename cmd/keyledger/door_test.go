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
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestTheLedgersDoor plays the attacker of issue 11 against a running node
// whose embedded NATS listens for other processes: a client without
// credentials is refused at every address the node listens on; a verifying
// service cannot write lifecycle events; and an insider with the node's own
// NATS credentials can store a forged key.created, but keyledger never
// applies it: its token does not authenticate, forged_event is raised and
// audit verify fails naming the event.
func TestTheLedgersDoor(t *testing.T) {
	dir := t.TempDir()
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{9, 9, 9})
	t.Setenv("KEYLEDGER_ROOT_TOKEN", root)
	m := &Main{Stdout: io.Discard}
	must(t, m.ParseFlags([]string{"--data-dir", dir, "--http-addr", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0",
		"--checkpoint-every", "1", "--checkpoint-interval", "100ms"}, io.Discard))
	m.Logger = slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	must(t, m.Run(ctx))
	defer m.Close()
	natsURL := m.store.ClientURL()
	if natsURL == "" {
		t.Fatal("the node asked for a NATS listener but has none")
	}
	creds := m.store.CredentialsDir()

	// 1. No credentials: refused everywhere the node listens.
	for _, addr := range []string{natsURL, "nats://" + m.Addr()} {
		nc, err := nats.Connect(addr, nats.Timeout(2*time.Second), nats.NoReconnect())
		if err == nil {
			nc.Close()
			t.Fatalf("a NATS client without credentials connected to %s", addr)
		}
	}

	// 2. A verifying service's credentials: lifecycle events are refused
	// by NATS permissions, and KEYS does not grow.
	keysBefore, err := m.store.Count(ctx, domain.StreamKeys)
	must(t, err)
	attackerKey := uuid.Must(uuid.NewV7())
	secret := domain.Secret{1, 2, 3, 4}
	forged := forgedCreate(t, attackerKey, m, secret)
	verifier := dialAs(t, ctx, natsURL, creds, eventstore.IdentityVerifier)
	if err := publishForged(ctx, verifier, forged); err == nil {
		t.Fatal("a verifier published a key.created to KEYS")
	}
	if n, _ := m.store.Count(ctx, domain.StreamKeys); n != keysBefore {
		t.Fatalf("KEYS grew from %d to %d after a verifier's forged publish", keysBefore, n)
	}

	// 3. An insider with the node's own NATS credentials stores it ...
	insider := dialAs(t, ctx, natsURL, creds, eventstore.IdentityNode)
	must(t, publishForged(ctx, insider, forged))
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if m.state.Forged() == 0 {
			return errors.New("the key-state projection has not refused the forged event yet")
		}
		return nil
	})
	// ... but its token does not authenticate.
	tok := domain.FormatToken(attackerKey, secret)
	if _, err := callStatus(m, "/v1/me", tok); err == nil || !strings.Contains(err.Error(), "token_invalid") {
		t.Fatalf("the forged key's token: %v, want 401 token_invalid", err)
	}
	if _, ok := m.state.Key(attackerKey.String()); ok {
		t.Fatal("the forged key is in the key state")
	}
	// forged_event is raised on ALERTS.
	checkFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		b, err := callStatus(m, "/v1/alerts?rule=forged_event", root)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), forged.ID.String()) {
			return fmt.Errorf("no forged_event alert naming %s in %s", forged.ID, b)
		}
		return nil
	})
	// audit verify, live as the auditor, exits 1 naming the event.
	auditorSeed := eventstore.SeedFile(creds, eventstore.IdentityAuditor)
	pubFile := filepath.Join(t.TempDir(), "pub.json")
	pub, err := callStatus(m, "/v1/audit/public-key", root)
	must(t, err)
	must(t, writeFile(pubFile, pub))
	_, errs, code := runCLI(nil, "audit", "verify", "--nats-url", natsURL, "--nats-nkey", auditorSeed,
		"--trusted-writers", filepath.Join(dir, "trusted-writers.json"), "--public-key", pubFile)
	if code != 1 || !strings.Contains(errs, forged.ID.String()) || !strings.Contains(errs, "forged event") {
		t.Fatalf("audit verify after a forged event: exit %d %s", code, errs)
	}
}

// forgedCreate is the attacker's key.created: a key of the super
// administrator with a secret of the attacker's choosing, chained and
// hashed exactly as keyledger would, but signed by no trusted writer.
func forgedCreate(t *testing.T, keyID uuid.UUID, m *Main, secret domain.Secret) domain.Envelope {
	t.Helper()
	var owner string
	for _, p := range m.state.Principals() {
		owner = p.ID
	}
	envs, err := domain.Decide(domain.Key{}, domain.CreateKey{
		Meta: domain.Meta{Actor: "bootstrap"}, KeyID: keyID.String(), Owner: owner, Name: "backdoor",
		Role: domain.RoleSuperadmin, Permissions: domain.BuiltinRoles[domain.RoleSuperadmin], SecretHash: domain.HashSecret(secret),
	}, time.Now(), func() uuid.UUID { return uuid.Must(uuid.NewV7()) })
	must(t, err)
	return envs[0]
}

// publishForged stores env on KEYS signed by a key of the attacker's own.
func publishForged(ctx context.Context, nc *nats.Conn, env domain.Envelope) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	b, _ := env.Marshal()
	msg := nats.NewMsg(env.Subject())
	msg.Data = b
	msg.Header.Set(domain.HdrWriter, domain.WriterID(key.Public().(ed25519.PublicKey)))
	msg.Header.Set(domain.HdrSignature, domain.EncodeSignature(domain.SignMessage(key, msg.Subject, b)))
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = js.PublishMsg(pctx, msg)
	return err
}

func dialAs(t *testing.T, ctx context.Context, url, creds, identity string) *nats.Conn {
	t.Helper()
	nc, err := eventstore.Dial(ctx, eventstore.Config{URL: url, Identity: identity, NkeySeedFile: eventstore.SeedFile(creds, identity)})
	if err != nil {
		t.Fatalf("dial as %s: %v", identity, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func writeFile(path string, b []byte) error {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return fmt.Errorf("not JSON: %s", b)
	}
	return os.WriteFile(path, b, 0o644)
}
