package notary_test

import (
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
