package chlog

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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

// pfExiting is the kernel's PF_EXITING: the process is being torn down.
const pfExiting = 0x4

// procStat returns a live process's parent pid and kernel flags, from
// /proc/<pid>/stat; ok is false when there is no such process, or it is
// already a zombie.
func procStat(pid int) (ppid int, flags uint64, ok bool) {
	if pid <= 0 {
		return 0, 0, false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	s := string(b)
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(s[i+1:])
	// f[0] is the state (field 3), f[1] the parent (4), f[6] the flags (9).
	if len(f) < 7 || f[0] == "Z" || f[0] == "X" {
		return 0, 0, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	flags, err2 := strconv.ParseUint(f[6], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return ppid, flags, true
}
