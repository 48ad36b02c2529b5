package chlog_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// The message is what `serve` prints when ClickHouse is missing, so it must
// say how to install it and how to do without.
func TestStartLocalNotInstalled(t *testing.T) {
	t.Setenv(chlog.ServerBinaryEnv, "/nonexistent/clickhouse-server")
	_, err := chlog.StartLocal(context.Background(), t.TempDir(), nil)
	if !errors.Is(err, chlog.ErrNotInstalled) {
		t.Fatalf("StartLocal: %v, want ErrNotInstalled", err)
	}
	for _, want := range []string{"apt-get install clickhouse-server", "--clickhouse host:port"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestLocalServerKeepsDataAndPortsAcrossRestarts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	first := chlogtest.MustStartLocal(t, dir)
	if !strings.HasPrefix(first.Addr(), "127.0.0.1:") || !strings.HasPrefix(first.HTTPAddr(), "127.0.0.1:") {
		t.Errorf("listens on %s and %s, want loopback only", first.Addr(), first.HTTPAddr())
	}
	// The audit log's server yields the CPU to the node.
	if nice := niceOf(t, first.PID()); nice != 10 {
		t.Errorf("clickhouse-server runs at nice %d, want 10", nice)
	}

	// A second server on the same directory is refused before it can
	// disturb the first.
	if _, err := chlog.StartLocal(ctx, dir, chlogtest.Logger(t)); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second StartLocal on a busy dir: %v, want an 'in use' error", err)
	}

	st, err := chlog.Open(ctx, chlogtest.ConfigFor(first.Addr(), ""), chlogtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Insert(ctx, roundTripRows()); err != nil {
		t.Fatal(err)
	}
	// Stop does not hang on the pool's idle connections: the server
	// exits by itself after SIGTERM, not killed when Stop gives up on it.
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := first.WaitErr(); err != nil {
		t.Errorf("the server stopped with idle connections open exited with %v, want a clean exit", err)
	}
	select {
	case <-first.Done():
	default:
		t.Error("Done is not closed after Stop")
	}

	second, err := chlog.StartLocal(ctx, dir, chlogtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer second.Stop()
	if got, want := second.Addr(), first.Addr(); got != want {
		t.Errorf("restarted on %s, want %s", got, want)
	}
	// The same pool reconnects, and the data is still there.
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		n, err := st.CountEvents(ctx)
		if err != nil {
			return err
		}
		if n != uint64(len(roundTripRows())) {
			t.Fatalf("after restart the log has %d events, want %d", n, len(roundTripRows()))
		}
		return nil
	})
	st.Close()
}

// A managed server killed with SIGKILL comes back by itself, where it was,
// with its data.
func TestSupervisorRestartsAKilledServer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	sup, err := chlog.Supervise(ctx, t.TempDir(), chlogtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	sup.MinBackoff = 20 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	user, password := sup.Credentials()
	st, err := chlog.Open(ctx, chlog.Config{Addr: sup.Addr(), Username: user, Password: password}, chlogtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Insert(ctx, roundTripRows()); err != nil {
		t.Fatal(err)
	}
	first := sup.Server()
	if err := syscall.Kill(first.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-first.Done()
	checkFor(t, time.Minute, 20*time.Millisecond, func() error {
		if sup.Restarts() != 1 || sup.Up() != nil {
			return fmt.Errorf("restarts %d, up: %v", sup.Restarts(), sup.Up())
		}
		return nil
	})
	if got, want := sup.Addr(), first.Addr(); got != want || sup.Server().Addr() != want {
		t.Errorf("restarted on %s, want %s", sup.Server().Addr(), want)
	}
	// The same pool reconnects, and the data is still there.
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		n, err := st.CountEvents(ctx)
		if err != nil {
			return err
		}
		if n != uint64(len(roundTripRows())) {
			t.Fatalf("after the restart the log has %d events, want %d", n, len(roundTripRows()))
		}
		return nil
	})
}

// niceOf reads a process's nice value (field 19 of /proc/pid/stat).
func niceOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	n, err := strconv.Atoi(fields[19-3])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A signal to keyledger's whole process group reaches its clickhouse-server
// too, and the server may be gone before keyledger has said it is stopping:
// a server that exited as asked (SIGTERM) is not restarted, and nothing is
// logged as an error, when keyledger says it is stopping soon after.
func TestSupervisorLetsTheServerStopWithKeyledger(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sup, err := chlog.Supervise(ctx, t.TempDir(), logger)
	if err != nil {
		t.Fatal(err)
	}
	sup.MinBackoff = 20 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	srv := sup.Server()
	if err := syscall.Kill(srv.PID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-srv.Done()
	sup.Stopping()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if n := sup.Restarts(); n != 0 {
		t.Errorf("restarted %d times while keyledger stopped", n)
	}
	if out := logs.String(); strings.Contains(out, "level=ERROR") || strings.Contains(out, "restarting") {
		t.Errorf("a server stopped with keyledger was reported as a failure:\n%s", out)
	}
}

// lockedBuffer collects log output written from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
