// Package chlogtest gives tests a real ClickHouse. A test that needs one
// fails when none can be had: it never skips, because a skipped audit-log
// test under `make test` would hide exactly the breakage it exists to catch.
package chlogtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/keyledger/keyledger/projections/chlog"
)

// AddrEnv names the variable that points tests at a running ClickHouse
// (host:port of its native protocol); scripts/with-clickhouse.sh sets it.
const AddrEnv = "KEYLEDGER_TEST_CLICKHOUSE"

// MustConnect returns host:port of a ClickHouse server that answers: the one
// named by KEYLEDGER_TEST_CLICKHOUSE when it is set, else a server of the
// test's own, started with chlog.StartLocal and stopped when the test ends.
// It fails the test (tb.Fatal) when neither works.
func MustConnect(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if addr := os.Getenv(AddrEnv); addr != "" {
		if err := ping(ctx, addr); err != nil {
			tb.Fatalf("%s=%s but ClickHouse does not answer there: %v", AddrEnv, addr, err)
		}
		return addr
	}
	srv := MustStartLocal(tb, tb.TempDir())
	return srv.Addr()
}

// servers holds the credentials of the servers MustStartLocal started, by
// native address: a managed server has no passwordless user.
var servers sync.Map

// ConfigFor is the configuration that opens database on the server at
// addr, with the credentials of a server this package started.
func ConfigFor(addr, database string) chlog.Config {
	cfg := chlog.Config{Addr: addr, Database: database}
	if srv, ok := servers.Load(addr); ok {
		cfg.Username, cfg.Password = srv.(*chlog.LocalServer).User(), srv.(*chlog.LocalServer).Password()
	}
	return cfg
}

// MustStartLocal starts a clickhouse-server of the test's own with its data
// under dir, and stops it when the test ends. Tests that stop and restart
// ClickHouse use it directly.
func MustStartLocal(tb testing.TB, dir string) *chlog.LocalServer {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := chlog.StartLocal(ctx, dir, Logger(tb))
	if err != nil {
		tb.Fatalf("no ClickHouse for this test (set %s=host:port, or run it under scripts/with-clickhouse.sh): %v", AddrEnv, err)
	}
	servers.Store(srv.Addr(), srv)
	tb.Cleanup(func() {
		servers.Delete(srv.Addr())
		if err := srv.Stop(); err != nil {
			tb.Errorf("stop clickhouse: %v", err)
		}
	})
	return srv
}

// MustOpen returns a Store in a fresh database of its own on the server
// MustConnect finds, so that tests can run in parallel on one server. The
// database is dropped when the test ends.
func MustOpen(tb testing.TB) *chlog.Store {
	tb.Helper()
	return MustOpenAt(tb, MustConnect(tb))
}

// MustOpenAt is MustOpen on a given server.
func MustOpenAt(tb testing.TB, addr string) *chlog.Store {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b [6]byte
	_, _ = rand.Read(b[:])
	db := "test_" + hex.EncodeToString(b[:])
	st, err := chlog.Open(ctx, ConfigFor(addr, db), Logger(tb))
	if err != nil {
		tb.Fatalf("open clickhouse %s: %v", addr, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := st.Conn().Exec(ctx, "DROP DATABASE IF EXISTS `"+db+"`"); err != nil {
			tb.Logf("drop test database %s: %v", db, err)
		}
		st.Close()
	})
	return st
}

// Logger returns a logger that writes to the test's log, so that a failing
// test shows what the server and the sink said.
// Lines logged after the test has ended (by a goroutine that outlived it)
// are dropped: testing panics on a Log after the end.
func Logger(tb testing.TB) *slog.Logger {
	w := &tbWriter{tb: tb}
	tb.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tbWriter struct {
	tb   testing.TB
	done atomic.Bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.tb.Logf("%s", bytes.TrimRight(p, "\n"))
	}
	return len(p), nil
}

// ping dials the server without touching any database.
func ping(ctx context.Context, addr string) error {
	cfg := ConfigFor(addr, "")
	auth := clickhouse.Auth{Username: cfg.Username, Password: cfg.Password}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Auth: auth, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Ping(ctx)
}
