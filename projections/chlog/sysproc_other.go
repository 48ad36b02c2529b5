//go:build !linux

package chlog

import "syscall"

// childSysProcAttr has nothing to add where the kernel cannot stop a child
// when its parent dies; Stop is then the only way the server ends.
func childSysProcAttr() *syscall.SysProcAttr { return nil }

// dataDirLocked cannot tell here; the server itself refuses to start on a
// directory another instance uses.
func dataDirLocked(string) bool { return false }

const pfExiting = 0

// procStat cannot tell here.
func procStat(int) (ppid int, flags uint64, ok bool) { return 0, 0, false }
