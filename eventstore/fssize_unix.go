//go:build unix

package eventstore

import "syscall"

// fsSize returns the size in bytes of the file system holding dir, or 0
// when it cannot tell.
func fsSize(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return int64(st.Blocks) * int64(st.Bsize)
}
