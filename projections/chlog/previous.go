package chlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// How long a start waits for a clickhouse-server that still holds the data
// directory. After a crash of keyledger (kill -9, the OOM killer) its server
// gets SIGTERM from the kernel and shuts down on its own, which takes a
// moment; a service manager that restarts keyledger at once must find the
// directory free rather than be refused.
var (
	// previousWait bounds the whole wait.
	previousWait = 45 * time.Second
	// orphanTermWait is how long a server whose keyledger is gone is
	// given to stop after SIGTERM before it is killed.
	orphanTermWait = 15 * time.Second
)

// ownerFile names the file, under the server's directory, that holds the
// pid of the keyledger process that started the server: a server whose
// parent is no longer that process was left behind by a crash.
const ownerFile = "owner.pid"

// awaitPreviousServer returns once no clickhouse-server holds the lock of
// dir's data: at once when none does; after the server has exited when it
// belongs to a keyledger that is exiting or gone (the one left by a crash,
// which it stops with SIGTERM and, if that is not enough, SIGKILL). It
// refuses, with an error, a directory whose server belongs to a keyledger
// that is running, and one still held when the bounded wait is over.
func awaitPreviousServer(ctx context.Context, dir string, logger *slog.Logger) error {
	status := filepath.Join(dir, "data", "status")
	if !dataDirLocked(status) {
		return nil
	}
	owner := readPID(filepath.Join(dir, ownerFile), "")
	deadline := time.Now().Add(previousWait)
	var termAt time.Time
	killed, told := false, false
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if !dataDirLocked(status) {
			if told {
				logger.Info("the previous clickhouse-server has exited; starting a new one", "dir", dir)
			}
			return nil
		}
		pid := readPID(status, "PID:")
		ppid, _, ok := procStat(pid)
		_, ownerFlags, ownerOK := procStat(owner)
		// A server whose keyledger is gone has been handed to a reaper;
		// one started before keyledger said who started it counts as
		// orphaned only when init has it.
		orphan := ok && ((owner != 0 && ppid != owner) || (owner == 0 && ppid == 1))
		switch {
		case !ok:
			// The holder is unknown or exiting: wait for the lock.
		case !orphan && ppid == owner && ownerOK && ownerFlags&pfExiting == 0:
			return fmt.Errorf("clickhouse data dir %s is in use by the clickhouse-server (pid %d) of a running keyledger (pid %d)", dir, pid, owner)
		case !orphan:
			// Its keyledger is exiting (the kernel sends the server
			// SIGTERM once it is gone), or it is not known whose it is.
			if !told {
				logger.Info("waiting for the previous clickhouse-server to stop", "pid", pid, "parent", ppid)
				told = true
			}
		case termAt.IsZero():
			logger.Warn("a clickhouse-server left by a keyledger that is gone holds the data dir; stopping it", "pid", pid, "parent", ppid, "dir", dir)
			told = true
			termAt = time.Now()
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("stop the previous clickhouse-server (pid %d): %w", pid, err)
			}
		case !killed && time.Since(termAt) > orphanTermWait:
			logger.Warn("the previous clickhouse-server did not stop after SIGTERM; killing it", "pid", pid)
			killed = true
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("kill the previous clickhouse-server (pid %d): %w", pid, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("clickhouse data dir %s is still in use by another clickhouse-server (pid %d) after %s", dir, pid, previousWait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the previous clickhouse-server to stop: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// readPID reads a pid from file: from its line that starts with prefix, or
// from the whole file when prefix is empty. It returns 0 when there is none.
func readPID(file, prefix string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			if pid, err := strconv.Atoi(strings.TrimSpace(rest)); err == nil && pid > 0 {
				return pid
			}
			return 0
		}
	}
	return 0
}

// writeOwner records this process as the owner of the server in dir.
func writeOwner(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o640); err != nil {
		return fmt.Errorf("clickhouse owner: %w", err)
	}
	return nil
}
