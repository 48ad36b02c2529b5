// Package disktest makes the small file systems the full-disk tests fill.
package disktest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// SmallFS mounts a tmpfs of size bytes on a fresh directory and unmounts it
// when the test ends, after everything registered later (a node) has
// stopped. It fails the test, rather than skip it, where the file system
// cannot be made (not root).
func SmallFS(tb testing.TB, size int) string {
	tb.Helper()
	dir := tb.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "keyledger-test", dir).CombinedOutput()
	if err != nil {
		tb.Fatalf("mount a %d-byte tmpfs (the full-disk tests need root): %v: %s", size, err, out)
	}
	tb.Cleanup(func() {
		// Lazily: a server that was shut down on a full disk may take a
		// moment to close its last file.
		if out, err := exec.Command("umount", "--lazy", dir).CombinedOutput(); err != nil {
			tb.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// Fill writes a file into dir until its file system has no byte left, and
// returns the file's path.
func Fill(tb testing.TB, dir string) string {
	tb.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for _, n := range []int{len(buf), 4096, 1} {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
	return path
}
