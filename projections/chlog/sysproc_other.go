//go:build !linux

package chlog

import "syscall"

// childSysProcAttr has nothing to add where the kernel cannot stop a child
// when its parent dies; Stop is then the only way the server ends.
func childSysProcAttr() *syscall.SysProcAttr { return nil }
