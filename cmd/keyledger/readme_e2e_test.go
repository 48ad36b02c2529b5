package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readmeUsing returns the first sh block under "## Using it" in README.md.
func readmeUsing(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n## Using it\n")
	if !ok {
		t.Fatal(`README.md has no "## Using it" section`)
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	if !ok {
		t.Fatal(`README.md's "Using it" has no sh block`)
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("unterminated sh block")
	}
	return block
}

// TestReadmeUsingIt runs the README's first example, exactly as written,
// against the real binary on a fresh ledger: a new user who pastes it must
// get a VALID verification, not permission_not_held. The one change is the
// server's address, which is 127.0.0.1:0 here.
func TestReadmeUsingIt(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: builds and runs the binary")
	}
	block := readmeUsing(t)
	const readmeServer = "http://127.0.0.1:8080"
	if !strings.Contains(block, readmeServer) {
		t.Fatalf("the example no longer uses %s:\n%s", readmeServer, block)
	}
	dir := t.TempDir()
	srv := startE2EServer(t, filepath.Join(dir, "data"))
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(e2eCLIBin, filepath.Join(dir, "bin", "keyledger")); err != nil {
		t.Fatal(err)
	}
	script := "set -euo pipefail\n" + strings.ReplaceAll(block, readmeServer, srv.url)
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = e2eEnv()
	var out, errb lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("README example failed: %v\nscript:\n%s\nstdout:\n%s\nstderr:\n%s", err, script, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "\nVALID\n") {
		t.Fatalf("the example's verify did not print VALID:\n%s", out.String())
	}
	for _, f := range []string{"alice.token", "checkout.token", "ci.token"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || !strings.HasPrefix(string(b), "klk_") {
			t.Fatalf("%s: %q %v", f, b, err)
		}
		if fi, _ := os.Stat(filepath.Join(dir, f)); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	srv.stop(t)
}
