package notary

import (
	"context"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
)

// TileHeight is the number of tree levels a tile spans: a tile holds the
// hashes of TileWidth consecutive nodes of a level that is a multiple of
// TileHeight, and every node up to TileHeight-1 levels above them is
// recomputed from one tile (at most TileWidth-1 hashes).
const (
	TileHeight = 8
	TileWidth  = 1 << TileHeight
)

// TileSink stores a complete tile: the TileWidth hashes, 32 bytes each, of
// tile index of tile level level (tree level level*TileHeight).
type TileSink func(level uint, index uint64, tile []byte) error

// TileSource returns the hashes stored for a tile, complete or not.
type TileSource func(ctx context.Context, level uint, index uint64) ([]byte, error)

// CompactTree is the Merkle tree of one stream kept in O(log n) memory:
// the compact range of its leaves (one hash per level) and, per tile level,
// the hashes of the last, incomplete tile. Complete tiles go to the sink as
// they fill up; proofs read them back through a TileSource.
type CompactTree struct {
	rf      *compact.RangeFactory
	rng     *compact.Range
	partial [][]byte // partial[l]: the hashes of the incomplete tile of tile level l
	sink    TileSink
	err     error
}

// NewCompactTree returns an empty tree that hands complete tiles to sink.
func NewCompactTree(sink TileSink) *CompactTree {
	rf := &compact.RangeFactory{Hash: hasher.HashChildren}
	return &CompactTree{rf: rf, rng: rf.NewEmptyRange(0), sink: sink}
}

// RestoreCompactTree rebuilds the tree of size leaves from its compact
// range hashes and its incomplete tiles, as Snapshot returned them.
func RestoreCompactTree(size uint64, hashes [][]byte, partial [][]byte, sink TileSink) (*CompactTree, error) {
	rf := &compact.RangeFactory{Hash: hasher.HashChildren}
	rng, err := rf.NewRange(0, size, hashes)
	if err != nil {
		return nil, err
	}
	levels := tileLevels(size)
	if len(partial) != levels {
		return nil, fmt.Errorf("%d incomplete tiles for a tree of %d leaves, want %d", len(partial), size, levels)
	}
	t := &CompactTree{rf: rf, rng: rng, sink: sink}
	for l := range levels {
		want := int(size>>(uint(l)*TileHeight)%TileWidth) * 32
		if len(partial[l]) < want {
			return nil, fmt.Errorf("tile level %d holds %d bytes, want %d", l, len(partial[l]), want)
		}
		t.partial = append(t.partial, append(make([]byte, 0, TileWidth*32), partial[l][:want]...))
	}
	return t, nil
}

// tileLevels is the number of tile levels a tree of size leaves has nodes at.
func tileLevels(size uint64) int {
	n := 0
	for s := size; s > 0; s >>= TileHeight {
		n++
	}
	return n
}

// Append adds the next message of the stream. An error is the sink's: the
// tree is then unusable.
func (t *CompactTree) Append(data []byte) error {
	if t.err != nil {
		return t.err
	}
	_ = t.rng.Append(LeafHash(data), t.visit) // appending to a range that starts at 0 never fails
	return t.err
}

func (t *CompactTree) visit(id compact.NodeID, hash []byte) {
	if id.Level%TileHeight != 0 || t.err != nil {
		return
	}
	l := id.Level / TileHeight
	for uint(len(t.partial)) <= l {
		t.partial = append(t.partial, make([]byte, 0, TileWidth*32))
	}
	t.partial[l] = append(t.partial[l], hash...)
	if len(t.partial[l]) == TileWidth*32 {
		if err := t.sink(l, id.Index/TileWidth, t.partial[l]); err != nil {
			t.err = fmt.Errorf("store tile %d/%d: %w", l, id.Index/TileWidth, err)
			return
		}
		t.partial[l] = t.partial[l][:0]
	}
}

// Size is the number of leaves.
func (t *CompactTree) Size() uint64 { return t.rng.End() }

// Root is the root hash of the whole tree.
func (t *CompactTree) Root() []byte {
	if t.Size() == 0 {
		return hasher.EmptyRoot()
	}
	r, _ := t.rng.GetRootHash(nil)
	return r
}

// Snapshot returns what RestoreCompactTree needs: the size, the compact
// range hashes and copies of the incomplete tiles (which the caller
// stores so that proofs survive a restart).
func (t *CompactTree) Snapshot() (size uint64, hashes [][]byte, partial [][]byte) {
	for _, h := range t.rng.Hashes() {
		hashes = append(hashes, append([]byte(nil), h...))
	}
	for _, p := range t.partial {
		partial = append(partial, append([]byte(nil), p...))
	}
	return t.Size(), hashes, partial
}

// Prover answers proofs for trees up to size leaves from stored tiles and
// the incomplete tiles of a Snapshot taken at size or later.
type Prover struct {
	Size    uint64
	Partial [][]byte
	Tiles   TileSource
}

// tile returns the hashes of tile index of tile level l.
func (p Prover) tile(ctx context.Context, l uint, index uint64) ([]byte, error) {
	if int(l) < len(p.Partial) && index == (p.Size>>(l*TileHeight))/TileWidth {
		return p.Partial[l], nil
	}
	return p.Tiles(ctx, l, index)
}

// nodeHash is the hash of a complete subtree: level 0 is a leaf.
func (p Prover) nodeHash(ctx context.Context, id compact.NodeID) ([]byte, error) {
	l, r := id.Level/TileHeight, id.Level%TileHeight
	first := id.Index << r // the first node of the tile level below it
	tile, err := p.tile(ctx, l, first/TileWidth)
	if err != nil {
		return nil, err
	}
	from, to := int(first%TileWidth)*32, int(first%TileWidth+1<<r)*32
	if len(tile) < to {
		return nil, fmt.Errorf("tile %d/%d holds %d hashes, node %d/%d needs %d", l, first/TileWidth, len(tile)/32, id.Level, id.Index, to/32)
	}
	if r == 0 {
		return tile[from:to], nil
	}
	rng := compactFactory.NewEmptyRange(0)
	for i := from; i < to; i += 32 {
		_ = rng.Append(tile[i:i+32], nil)
	}
	return rng.GetRootHash(nil)
}

var compactFactory = &compact.RangeFactory{Hash: hasher.HashChildren}

func (p Prover) fetch(ctx context.Context, nodes proof.Nodes) ([][]byte, error) {
	hs := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		h, err := p.nodeHash(ctx, id)
		if err != nil {
			return nil, err
		}
		hs[i] = h
	}
	return nodes.Rehash(hs, hasher.HashChildren)
}

// InclusionProof proves leaf index is in the tree of the first size leaves.
func (p Prover) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	if index >= size || size > p.Size {
		return nil, fmt.Errorf("no leaf %d in a tree of %d", index, size)
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, err
	}
	return p.fetch(ctx, nodes)
}

// ConsistencyProof proves the tree of size2 extends the tree of size1.
func (p Prover) ConsistencyProof(ctx context.Context, size1, size2 uint64) ([][]byte, error) {
	if size1 > size2 || size2 > p.Size {
		return nil, fmt.Errorf("no consistency between %d and %d in a tree of %d", size1, size2, p.Size)
	}
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return p.fetch(ctx, nodes)
}

// Prover returns a Prover of the tree as it is now.
func (t *CompactTree) Prover(tiles TileSource) Prover {
	_, _, partial := t.Snapshot()
	return Prover{Size: t.Size(), Partial: partial, Tiles: tiles}
}
