//go:build unix

package eventstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// ErrDataDirInUse means another process (a running node, or an offline
// tool) already has the embedded server's data dir open.
var ErrDataDirInUse = errors.New("data dir is in use by another process")

// lockDataDir takes an exclusive advisory lock on dir/LOCK for as long as
// the embedded server runs. Two servers on one JetStream directory would
// write over each other's files, and an offline tool such as audit verify
// must refuse a live node's data dir rather than open it beside the node.
// The kernel drops the lock when the process dies, so a crash never leaves
// a stale lock behind.
func lockDataDir(dir string) (unlock func(), err error) {
	if dir == "" {
		return func() {}, nil // startEmbedded refuses it with a better error
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", dir, ErrDataDirInUse)
		}
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	return func() { f.Close() }, nil
}
