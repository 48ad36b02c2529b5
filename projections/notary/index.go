package notary

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/google/uuid"
)

// The event index finds the sequence of an event by its id in O(log n)
// memory and stored keys: the ids of a stream are kept in leaf order, in
// segments of SegmentSize entries (the id, 16 bytes, and the sequence, 8),
// each stored under its own key once complete; the incomplete last one is
// in memory and stored with every saved state, like the tiles. A key per
// event would cost the server its per-subject state, about 200 bytes an
// event of memory.
//
// Ids are UUIDv7 (time first) and a stream is stored in about the order of
// its ids' times, so a lookup binary-searches the segments by the time of
// their first id and reads the few around it; an id out of that order, or
// not a UUIDv7, is found by reading every segment, newest first: so is the
// answer that an id is not there, n/SegmentSize reads.
const SegmentSize = 1024

const entrySize = 16 + 8

func segmentKey(stream string, index uint64) string {
	return fmt.Sprintf("ids.%s.%d", stream, index)
}

// appendEntry adds the entry of the next leaf to an incomplete segment.
func appendEntry(seg []byte, id uuid.UUID, seq uint64) []byte {
	seg = append(seg, id[:]...)
	return binary.BigEndian.AppendUint64(seg, seq)
}

// findEntry returns the sequence of id in a segment and its place there,
// or 0.
func findEntry(seg []byte, id uuid.UUID) (uint64, uint64) {
	for i := 0; i+entrySize <= len(seg); i += entrySize {
		if bytes.Equal(seg[i:i+16], id[:]) {
			return binary.BigEndian.Uint64(seg[i+16 : i+entrySize]), uint64(i / entrySize)
		}
	}
	return 0, 0
}

// idTime is what orders UUIDv7s by time: their first 6 bytes.
func idTime(b []byte) []byte { return b[:6] }

// locate finds the sequence of id among the complete segments of a stream
// (there are complete of them) and the incomplete one, or returns 0.
// Reading every segment is serialised on scan: the requests for unknown
// ids share one reader.
//
// It returns the event's message sequence and its leaf index in the tree.
func locate(ctx context.Context, store stateStore, stream string, complete uint64, partial []byte, id uuid.UUID, scan *sync.Mutex) (uint64, uint64, error) {
	if seq, at := findEntry(partial, id); seq != 0 {
		return seq, complete*SegmentSize + at, nil
	}
	var leaf uint64
	seq, err := locateComplete(ctx, store, stream, complete, id, scan, &leaf)
	return seq, leaf, err
}

// locateComplete searches the complete segments, setting *leaf when it
// finds id.
func locateComplete(ctx context.Context, store stateStore, stream string, complete uint64, id uuid.UUID, scan *sync.Mutex, leaf *uint64) (uint64, error) {
	segs := map[uint64][]byte{}
	get := func(k uint64) ([]byte, uint64, error) {
		if seg, ok := segs[k]; ok {
			return seg, 0, nil // read already, and id was not in it
		}
		seg, err := store.Get(ctx, segmentKey(stream, k))
		if err != nil {
			return nil, 0, err
		}
		segs[k] = seg
		seq, at := findEntry(seg, id)
		if seq != 0 {
			*leaf = k*SegmentSize + at
		}
		return seg, seq, nil
	}
	if id.Version() == 7 && complete > 0 {
		// Segments whose first id is of the same millisecond as id or
		// of the ones around it: lower is the first of them not earlier
		// than id, upper the last not later. Time-ordered, id is in one
		// of lower-1..upper.
		t := idTime(id[:])
		search := func(later func(c int) bool) (uint64, uint64, error) {
			lo, hi := uint64(0), complete // the first k in [0, complete] for which later holds
			for lo < hi {
				mid := lo + (hi-lo)/2
				seg, seq, err := get(mid)
				if err != nil || seq != 0 {
					return 0, seq, err
				}
				if len(seg) >= entrySize && later(bytes.Compare(idTime(seg), t)) {
					hi = mid
				} else {
					lo = mid + 1
				}
			}
			return lo, 0, nil
		}
		lower, seq, err := search(func(c int) bool { return c >= 0 })
		if err != nil || seq != 0 {
			return seq, err
		}
		upper, seq, err := search(func(c int) bool { return c > 0 })
		if err != nil || seq != 0 {
			return seq, err
		}
		for k := max(lower, 2) - 2; k <= upper && k < complete; k++ {
			if _, seq, err := get(k); err != nil || seq != 0 {
				return seq, err
			}
		}
	}
	scan.Lock()
	defer scan.Unlock()
	for k := complete; k > 0; k-- {
		if _, seq, err := get(k - 1); err != nil || seq != 0 {
			return seq, err
		}
	}
	return 0, nil
}
