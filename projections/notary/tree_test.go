package notary_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/keyledger/keyledger/projections/notary"
)

// TestTreeProofs checks every inclusion proof and every consistency proof
// of trees up to 33 leaves, against roots recomputed from scratch.
func TestTreeProofs(t *testing.T) {
	tr := notary.NewTree()
	const n = 33
	for i := range n {
		tr.Append([]byte(fmt.Sprint("leaf ", i)))
	}
	for size := uint64(1); size <= n; size++ {
		root, err := tr.RootAt(size)
		if err != nil {
			t.Fatal(err)
		}
		for i := uint64(0); i < size; i++ {
			p, err := tr.InclusionProof(i, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := notary.VerifyInclusion([]byte(fmt.Sprint("leaf ", i)), i, size, p, root); err != nil {
				t.Fatalf("inclusion %d in %d: %v", i, size, err)
			}
			if err := notary.VerifyInclusion([]byte(fmt.Sprint("leaf ", i+1)), i, size, p, root); err == nil {
				t.Fatalf("inclusion of a wrong leaf %d in %d verifies", i, size)
			}
		}
		for size2 := size; size2 <= n; size2++ {
			root2, _ := tr.RootAt(size2)
			p, err := tr.ConsistencyProof(size, size2)
			if err != nil {
				t.Fatal(err)
			}
			if err := notary.VerifyConsistency(size, size2, p, root, root2); err != nil {
				t.Fatalf("consistency %d→%d: %v", size, size2, err)
			}
		}
	}
}

// TestCompactTreeProofs checks the proofs of the compact tree, read from
// its tiles, against those of the full tree, for every size up to three
// tile levels' worth of corners, after a restore at every size too.
func TestCompactTreeProofs(t *testing.T) {
	ctx := context.Background()
	tiles := map[string][]byte{}
	key := func(l uint, i uint64) string { return fmt.Sprint(l, "/", i) }
	sink := func(l uint, i uint64, tile []byte) error {
		if len(tile) != notary.TileWidth*32 {
			t.Fatalf("tile %d/%d of %d bytes", l, i, len(tile))
		}
		tiles[key(l, i)] = bytes.Clone(tile)
		return nil
	}
	source := func(_ context.Context, l uint, i uint64) ([]byte, error) { return tiles[key(l, i)], nil }
	full, ct := notary.NewTree(), notary.NewCompactTree(sink)
	const n = 2*notary.TileWidth*notary.TileWidth + 3*notary.TileWidth + 5
	check := func(p notary.Prover, size uint64) {
		t.Helper()
		root := ct.Root()
		for _, i := range []uint64{0, 1, size / 3, size / 2, size - 2, size - 1} {
			if i >= size {
				continue
			}
			want, _ := full.InclusionProof(i, size)
			got, err := p.InclusionProof(ctx, i, size)
			if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("inclusion %d in %d: %x (%v), want %x", i, size, got, err, want)
			}
			if err := notary.VerifyInclusion([]byte(fmt.Sprint("leaf ", i)), i, size, got, root); err != nil {
				t.Fatal(err)
			}
		}
		for _, s1 := range []uint64{1, size / 2, size - 1} {
			if s1 == 0 || s1 > size {
				continue
			}
			want, _ := full.ConsistencyProof(s1, size)
			got, err := p.ConsistencyProof(ctx, s1, size)
			if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("consistency %d→%d: %x (%v), want %x", s1, size, got, err, want)
			}
		}
	}
	for i := range n {
		leaf := []byte(fmt.Sprint("leaf ", i))
		full.Append(leaf)
		if err := ct.Append(leaf); err != nil {
			t.Fatal(err)
		}
		size := uint64(i + 1)
		if !bytes.Equal(ct.Root(), full.Root()) {
			t.Fatalf("root at %d differs", size)
		}
		big := uint64(16 * notary.TileWidth)
		corner := size <= 2*notary.TileWidth+2 || size%big <= 1 || size%big == big-1 || size == n
		if !corner {
			continue
		}
		check(ct.Prover(source), size)
		// Restored from what a save keeps, the tree goes on the same.
		sz, hashes, partial := ct.Snapshot()
		rt, err := notary.RestoreCompactTree(sz, hashes, partial, sink)
		if err != nil {
			t.Fatal(err)
		}
		check(rt.Prover(source), size)
		ct = rt
	}
}
