// Package notary makes the event log tamper-evident: it folds each stream
// into an RFC 6962 Merkle tree whose leaves are the stored bytes of its
// messages, publishes Ed25519-signed checkpoints of those trees, serves
// inclusion proofs, and verifies a whole ledger against its checkpoints.
package notary

import (
	"crypto"
	_ "crypto/sha256" // the hasher's hash
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

var hasher = rfc6962.New(crypto.SHA256)

// Tree is the Merkle tree of one stream held whole in memory, as audit
// verify recomputes it (the notary keeps a CompactTree). It keeps every leaf
// hash (32 bytes per event) so that it can answer proofs for any size. Hashes are kept as
// arrays, not slices: a million leaves are then one pointer-free block that
// the garbage collector never scans, at 32 bytes each instead of 56.
type Tree struct {
	leaves [][32]byte
	// levels[l][i] is the hash of complete subtree i at level l >= 1, as
	// the compact range reports them while it grows: proofs then cost a
	// lookup per node instead of a rehash of its leaves. They add about
	// as many hashes again as there are leaves.
	levels [][][32]byte
	rng    *compact.Range
	rf     *compact.RangeFactory
}

// NewTree returns an empty tree.
func NewTree() *Tree {
	rf := &compact.RangeFactory{Hash: hasher.HashChildren}
	return &Tree{rf: rf, rng: rf.NewEmptyRange(0)}
}

// LeafHash is the RFC 6962 hash of a stored message.
func LeafHash(data []byte) []byte { return hasher.HashLeaf(data) }

// Append adds the next message of the stream.
func (t *Tree) Append(data []byte) {
	h := LeafHash(data)
	t.leaves = append(t.leaves, [32]byte(h))
	_ = t.rng.Append(h, t.visit) // appending to a range that starts at 0 never fails
}

func (t *Tree) visit(id compact.NodeID, hash []byte) {
	if id.Level == 0 {
		return
	}
	for uint(len(t.levels)) <= id.Level {
		t.levels = append(t.levels, nil)
	}
	if l := t.levels[id.Level]; uint64(len(l)) == id.Index {
		t.levels[id.Level] = append(l, [32]byte(hash))
	}
}

// Size is the number of leaves.
func (t *Tree) Size() uint64 { return uint64(len(t.leaves)) }

// Root is the root hash of the whole tree.
func (t *Tree) Root() []byte {
	if len(t.leaves) == 0 {
		return hasher.EmptyRoot()
	}
	r, _ := t.rng.GetRootHash(nil)
	return r
}

// RootAt is the root hash of the tree of the first size leaves.
func (t *Tree) RootAt(size uint64) ([]byte, error) {
	if size > t.Size() {
		return nil, fmt.Errorf("tree has %d leaves, not %d", t.Size(), size)
	}
	if size == 0 {
		return hasher.EmptyRoot(), nil
	}
	r := t.rf.NewEmptyRange(0)
	for _, l := range t.leaves[:size] {
		_ = r.Append(l[:], nil)
	}
	return r.GetRootHash(nil)
}

// nodeHash is the hash of a complete subtree: level 0 is a leaf.
func (t *Tree) nodeHash(id compact.NodeID) []byte {
	if id.Level == 0 && id.Index < uint64(len(t.leaves)) {
		h := t.leaves[id.Index]
		return h[:]
	}
	if id.Level < uint(len(t.levels)) && id.Index < uint64(len(t.levels[id.Level])) {
		h := t.levels[id.Level][id.Index]
		return h[:]
	}
	begin, end := id.Coverage()
	// A range over a complete subtree holds exactly one hash: its root.
	// (GetRootHash is only defined for ranges that start at 0.)
	r := t.rf.NewEmptyRange(begin)
	for _, l := range t.leaves[begin:end] {
		_ = r.Append(l[:], nil)
	}
	if hs := r.Hashes(); len(hs) == 1 {
		return hs[0]
	}
	return nil
}

func (t *Tree) fetch(nodes proof.Nodes) ([][]byte, error) {
	hs := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		hs[i] = t.nodeHash(id)
	}
	return nodes.Rehash(hs, hasher.HashChildren)
}

// InclusionProof proves leaf index is in the tree of the first size leaves.
func (t *Tree) InclusionProof(index, size uint64) ([][]byte, error) {
	if index >= size || size > t.Size() {
		return nil, fmt.Errorf("no leaf %d in a tree of %d", index, size)
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, err
	}
	return t.fetch(nodes)
}

// ConsistencyProof proves the tree of size2 extends the tree of size1.
func (t *Tree) ConsistencyProof(size1, size2 uint64) ([][]byte, error) {
	if size1 > size2 || size2 > t.Size() {
		return nil, fmt.Errorf("no consistency between %d and %d in a tree of %d", size1, size2, t.Size())
	}
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return t.fetch(nodes)
}

// VerifyInclusion checks an inclusion proof of a message's stored bytes.
func VerifyInclusion(data []byte, index, size uint64, p [][]byte, root []byte) error {
	return proof.VerifyInclusion(hasher, index, size, LeafHash(data), p, root)
}

// VerifyConsistency checks that the tree of size2 extends that of size1.
func VerifyConsistency(size1, size2 uint64, p [][]byte, root1, root2 []byte) error {
	return proof.VerifyConsistency(hasher, size1, size2, p, root1, root2)
}
