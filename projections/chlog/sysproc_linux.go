package chlog

import "syscall"

// childSysProcAttr asks the kernel to stop clickhouse-server when keyledger
// dies without calling Stop (a crash, SIGKILL), so that no orphan keeps the
// data directory locked for the next start. The signal is tied to the OS
// thread that started the child; the Go runtime does not end its threads
// while the process runs, so in practice it fires when the process exits.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
