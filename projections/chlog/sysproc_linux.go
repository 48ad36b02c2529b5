package chlog

import (
	"errors"
	"os"
	"syscall"
)

// childSysProcAttr asks the kernel to stop clickhouse-server when keyledger
// dies without calling Stop (a crash, SIGKILL), so that no orphan keeps the
// data directory locked for the next start. The signal is tied to the OS
// thread that started the child; the Go runtime does not end its threads
// while the process runs, so in practice it fires when the process exits.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}

// dataDirLocked reports whether a running clickhouse-server holds the lock
// on the status file of its data directory (it takes an exclusive flock on
// it for as long as it runs).
func dataDirLocked(statusFile string) bool {
	f, err := os.Open(statusFile)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}
