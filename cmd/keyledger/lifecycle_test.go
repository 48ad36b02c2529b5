package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
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

// TestServeStopsCleanlyOnSIGTERM stops the node with SIGTERM sent to its
// whole process group (systemd's KillMode=control-group, docker stop, a
// terminal's Ctrl-C), which reaches its clickhouse-server too, and with
// SIGTERM to keyledger alone: either way the node exits 0, the server is
// not restarted and nothing is logged at ERROR.
func TestServeStopsCleanlyOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary with its managed ClickHouse")
	}
	dir := t.TempDir()
	for i, group := range []bool{true, true, true, false} {
		s := spawnServeGroup(t, dir)
		waitAuditLogReady(t, s)
		target := s.cmd.Process.Pid
		if group {
			target = -target
		}
		if err := syscall.Kill(target, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-s.exited:
		case <-time.After(2 * time.Minute):
			t.Fatalf("stop %d (group %v): keyledger serve did not exit:\n%s", i, group, s.stderr.String())
		}
		log := s.stderr.String()
		if s.waitErr != nil {
			t.Errorf("stop %d (group %v): exit %v", i, group, s.waitErr)
		}
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, `"level":"ERROR"`) || strings.Contains(line, "level=ERROR") || strings.Contains(line, "restarting") {
				t.Errorf("stop %d (group %v): %s", i, group, line)
			}
		}
		if n := strings.Count(log, `"msg":"clickhouse started"`); n != 1 {
			t.Errorf("stop %d (group %v): clickhouse started %d times", i, group, n)
		}
		if pid := clickhousePID(dir); pid != 0 {
			t.Errorf("stop %d (group %v): clickhouse-server %d still runs after keyledger exited", i, group, pid)
		}
	}
}

// spawnServeGroup starts the built binary, as startE2EServer does, in a
// process group of its own, so that a signal can be sent to the group.
func spawnServeGroup(t *testing.T, dir string) *e2eServer {
	t.Helper()
	s := &e2eServer{stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command(e2eServerBin, "serve", "--http-addr", "127.0.0.1:0", "--data-dir", dir)
	s.cmd.Env = e2eEnv()
	s.cmd.Stdout, s.cmd.Stderr = s.stdout, s.stderr
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
			return
		default:
		}
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.exited
		}
	})
	checkFor(t, time.Minute, 10*time.Millisecond, func() error {
		select {
		case <-s.exited:
			t.Fatalf("keyledger serve exited (%v) before serving:\n%s", s.waitErr, s.stderr.String())
		default:
		}
		if addr := servingAddr(s.stderr.String()); addr != "" {
			s.url = "http://" + addr
			return nil
		}
		return errors.New(`no "keyledger serving" log line yet`)
	})
	return s
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
