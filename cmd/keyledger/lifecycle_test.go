package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api"
)

// TestServeReadyRightAfterKill9 kills keyledger alone with SIGKILL, ten
// times in a row, and starts it again on the same data dir at once, as a
// service manager with Restart=always does. The kernel stops the managed
// clickhouse-server with SIGTERM when keyledger dies, and that takes a
// moment: the new node must wait for it (or stop it), never refuse the data
// dir, and become ready with its audit log up each time.
func TestServeReadyRightAfterKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary with its managed ClickHouse")
	}
	dir := t.TempDir()
	s := startE2EServer(t, dir)
	waitAuditLogReady(t, s)
	for round := range 10 {
		if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-s.exited
		s = startE2EServer(t, dir)
		waitAuditLogReady(t, s)
		t.Logf("round %d: ready again", round+1)
	}
	if log := s.stderr.String(); strings.Contains(log, "in use by") {
		t.Errorf("the last start was refused a data dir:\n%s", log)
	}
}

// waitAuditLogReady waits until the node answers /readyz with 200 and its
// audit log check (the managed ClickHouse) is ok.
func waitAuditLogReady(t *testing.T, s *e2eServer) {
	t.Helper()
	checkFor(t, 2*time.Minute, 20*time.Millisecond, func() error {
		select {
		case <-s.exited:
			t.Fatalf("keyledger serve exited (%v):\n%s", s.waitErr, s.stderr.String())
		default:
		}
		for _, path := range []string{"/readyz", "/readyz?check=audit_log"} {
			res, err := http.Get(s.url + path)
			if err != nil {
				return err
			}
			var r api.Readiness
			_ = json.NewDecoder(res.Body).Decode(&r)
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %d %v", path, res.StatusCode, r.Checks)
			}
		}
		return nil
	})
}
