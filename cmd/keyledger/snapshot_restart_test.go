package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
)

func startMain(t *testing.T, dir string, logs io.Writer) *Main {
	t.Helper()
	m := &Main{Stdout: io.Discard}
	if err := m.ParseFlags([]string{"--data-dir", dir, "--http-addr", "127.0.0.1:0", "--snapshot-every", "7"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	m.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.Run(ctx); err != nil {
		t.Fatal(err)
	}
	return m
}

func call(t *testing.T, m *Main, method, path, token string, body any) []byte {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+m.Addr()+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode >= 300 {
		t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, b)
	}
	return b
}

// TestRestartFromSnapshot stops a node and starts it on the same data dir:
// every key's state and every event are as they were, the state was
// restored from a snapshot plus the tail rather than a full replay, and that
// state equals a full replay of KEYS.
func TestRestartFromSnapshot(t *testing.T) {
	dir := t.TempDir()
	root := domain.FormatToken([16]byte{1, 2, 3, 4, 5, 6, 0x70, 8, 0x80, 10, 11, 12, 13, 14, 15, 16}, domain.Secret{9, 9, 9})
	t.Setenv("KEYLEDGER_ROOT_TOKEN", root)
	m := startMain(t, dir, io.Discard)
	var p api.CreatedPrincipal
	if err := json.Unmarshal(call(t, m, "POST", "/v1/principals", root, map[string]any{"name": "a", "roles": []string{"key-admin"}}), &p); err != nil {
		t.Fatal(err)
	}
	admin := p.Credential.Token
	var ids []string
	for i := range 12 {
		var k api.CreatedKey
		_ = json.Unmarshal(call(t, m, "POST", "/v1/keys", admin, map[string]any{"name": fmt.Sprint("k", i), "allowed_ips": []string{"10.0.0.0/8"}}), &k)
		ids = append(ids, k.KeyID)
		switch i % 4 {
		case 1:
			call(t, m, "POST", "/v1/keys/"+k.KeyID+"/revoke", admin, map[string]string{"reason": "r"})
		case 2:
			call(t, m, "POST", "/v1/keys/"+k.KeyID+"/disable", admin, nil)
		case 3:
			call(t, m, "POST", "/v1/keys/"+k.KeyID+"/regenerate", admin, map[string]any{"rotate": true, "grace_period": "1h"})
		}
	}
	grid := func(m *Main) string {
		b := call(t, m, "GET", "/v1/keys?status=all&limit=500", admin, nil)
		// remaining_seconds moves with the clock and every call uses the
		// caller's own key; drop both.
		var page map[string][]map[string]any
		_ = json.Unmarshal(b, &page)
		for _, k := range page["keys"] {
			delete(k, "remaining_seconds")
			delete(k, "last_used_at")
		}
		out, _ := json.Marshal(page)
		return string(out)
	}
	events := func(m *Main) string {
		var sb strings.Builder
		for _, id := range ids {
			sb.Write(call(t, m, "GET", "/v1/keys/"+id+"/events", admin, nil))
		}
		return sb.String()
	}
	beforeGrid, beforeEvents := grid(m), events(m)
	// Every call above used the admin's credential: last used has it.
	lastUse := func(m *Main) (time.Time, string) {
		at, ip, _ := m.lastUsed.LastUsed(p.Credential.KeyID)
		return at, ip
	}
	var usedAt time.Time
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if usedAt, _ = lastUse(m); usedAt.IsZero() {
			return errors.New("no last use of the admin's key yet")
		}
		return nil
	})
	usageLast, err := m.store.LastSeq(context.Background(), domain.StreamUsage)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	var logs lockedBuffer // the server logs while the test reads
	m2 := startMain(t, dir, &logs)
	defer m2.Close()
	if !strings.Contains(logs.String(), "key-state snapshot restored") {
		t.Fatalf("restart did not restore a snapshot:\n%s", logs.String())
	}
	// Last used came back from its snapshot (saved at shutdown), and its
	// USAGE subscription starts after it, not at the stream's start.
	// (It may be later than what the test read: the projection follows
	// USAGE a little behind, and the snapshot is taken at shutdown.)
	if at, _ := lastUse(m2); at.IsZero() || at.Before(usedAt) {
		t.Fatalf("last use of the admin's key after the restart: %v, want %v or later", at, usedAt)
	}
	if !strings.Contains(logs.String(), "last-used snapshot restored") || m2.usageFrom < usageLast {
		t.Fatalf("last used replays USAGE from %d of %d:\n%s", m2.usageFrom, usageLast, logs.String())
	}
	if got := grid(m2); got != beforeGrid {
		t.Fatalf("grid changed across a restart:\n%.2000s\n%.2000s", beforeGrid, got)
	}
	if got := events(m2); got != beforeEvents {
		t.Fatal("events changed across a restart")
	}
	call(t, m2, "GET", "/v1/me", root, nil)

	// The restored state equals a full replay of the stream.
	fresh := keystate.New()
	ctx := context.Background()
	last, err := m2.store.LastSeq(ctx, domain.StreamKeys)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := m2.store.Subscribe(ctx, domain.StreamKeys, 1, func(e domain.Envelope) error { fresh.Apply(e); return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := fresh.WaitFor(wctx, last); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	a, _ := fresh.List(keystate.Filter{Status: "all", Now: now})
	b, _ := m2.state.List(keystate.Filter{Status: "all", Now: now})
	if len(a) != len(b) || len(a) < 13 {
		t.Fatalf("replayed %d keys, restored %d", len(a), len(b))
	}
	for i := range a {
		if !reflect.DeepEqual(normal(a[i]), normal(b[i])) {
			t.Fatalf("key %s differs:\nreplay  %+v\nrestore %+v", a[i].ID, a[i], b[i])
		}
	}
}

// normal makes times comparable with DeepEqual after a JSON round trip.
func normal(k domain.Key) domain.Key {
	for _, tp := range []*time.Time{&k.CreatedAt, &k.ExpiresAt, &k.UpdatedAt, &k.PrevValidUntil, &k.RevokedAt, &k.DeletedAt} {
		*tp = tp.UTC()
	}
	if len(k.AllowedIPs) == 0 {
		k.AllowedIPs = nil
	}
	return k
}
