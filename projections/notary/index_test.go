package notary

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/google/uuid"
)

// countingState counts the reads of a memState.
type countingState struct {
	memState
	gets int
}

func (s *countingState) Get(ctx context.Context, key string) ([]byte, error) {
	s.gets++
	return s.memState.Get(ctx, key)
}

// TestIndexLocatesEveryEvent fills 20 segments and a part of the next with
// time-ordered UUIDv7s, a few out of order and some random (v4) ids, then
// finds every one: the time-ordered ones in a handful of reads.
func TestIndexLocatesEveryEvent(t *testing.T) {
	ctx := context.Background()
	store := &countingState{memState: memState{m: map[string][]byte{}}}
	const n = 20*SegmentSize + 300
	ids := make([]uuid.UUID, n)
	// UUIDv7s a millisecond apart, but for bursts of 300 in one.
	ms := uint64(1_700_000_000_000)
	v7 := func() uuid.UUID {
		id := uuid.New()
		binary.BigEndian.PutUint16(id[0:2], uint16(ms>>32))
		binary.BigEndian.PutUint32(id[2:6], uint32(ms))
		id[6] = 0x70 | id[6]&0x0f
		return id
	}
	var early []uuid.UUID
	for range 5 {
		early = append(early, v7())
	}
	var seg []byte
	for i := range n {
		switch {
		case i%997 == 5:
			ids[i] = uuid.New()
		case i%4001 == 7 && len(early) > 0:
			ids[i], early = early[0], early[1:] // created long before it was stored
		default:
			ids[i] = v7()
		}
		if i%5000 > 300 {
			ms++
		}
		seg = appendEntry(seg, ids[i], uint64(i+1))
		if len(seg) == SegmentSize*entrySize {
			_ = store.Put(ctx, segmentKey("USAGE", uint64(i)/SegmentSize), seg)
			seg = nil
		}
	}
	complete := uint64(n / SegmentSize)
	var scan sync.Mutex
	maxOrdered := 0
	for i, id := range ids {
		store.gets = 0
		seq, leaf, err := locate(ctx, store, "USAGE", complete, seg, id, &scan)
		if err != nil || seq != uint64(i+1) || leaf != uint64(i) {
			t.Fatalf("id %d (v%d): seq %d, leaf %d (%v)", i, id.Version(), seq, leaf, err)
		}
		if i%997 != 5 && i%4001 != 7 {
			maxOrdered = max(maxOrdered, store.gets)
		}
	}
	if maxOrdered > 10 {
		t.Fatalf("a time-ordered id took %d segment reads of %d", maxOrdered, complete)
	}
	if seq, _, err := locate(ctx, store, "USAGE", complete, seg, uuid.Must(uuid.NewV7()), &scan); err != nil || seq != 0 {
		t.Fatalf("an unknown id: seq %d (%v)", seq, err)
	}
	t.Logf("time-ordered ids: at most %d of %d segments read", maxOrdered, complete)
}
