package eventstore_test

import (
	"errors"
	"testing"

	"github.com/keyledger/keyledger/eventstore"
)

// TestDataDirIsLockedWhileOpen checks that a second embedded server on a
// data dir in use is refused (two servers would write over each other's
// files) and that closing the first frees the dir.
func TestDataDirIsLockedWhileOpen(t *testing.T) {
	dir := t.TempDir()
	cfg := eventstore.Config{DataDir: dir, NoSync: true, Logger: testLogger()}
	first, err := eventstore.Open(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := eventstore.Open(testCtx(t), cfg); !errors.Is(err, eventstore.ErrDataDirInUse) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("second open: %v, want ErrDataDirInUse", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := eventstore.Open(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	again.Close()
}
