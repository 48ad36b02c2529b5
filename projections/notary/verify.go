package notary

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go/jetstream"
)

// Failure names the first thing in the log that does not verify.
type Failure struct {
	Stream  string
	Seq     uint64
	EventID string
	Why     string
}

func (f *Failure) Error() string {
	id := f.EventID
	if id == "" {
		id = "(unknown event)"
	}
	return fmt.Sprintf("%s sequence %d, event %s: %s", f.Stream, f.Seq, id, f.Why)
}

// Row is one row of the ClickHouse log, for comparison with JetStream.
type Row struct {
	EventID string
	Stream  string
	Seq     uint64
	Raw     string
}

// VerifyOptions tunes Verify.
type VerifyOptions struct {
	// Rows, when set, walks the ClickHouse log (each event once) so every
	// row is compared with JetStream.
	Rows func(ctx context.Context, fn func(Row) error) error
	// Progress is called every ProgressEvery events.
	Progress      func(stream string, events uint64)
	ProgressEvery uint64
}

// Summary counts what Verify checked.
type Summary struct {
	Events      map[string]uint64
	Checkpoints int
	Rows        uint64
}

// Verify recomputes every event's hash, every key's chain and every
// stream's Merkle tree from JetStream, checks every checkpoint's signature,
// that its root is the recomputed one at its size and that it extends the
// previous checkpoint, and optionally compares the ClickHouse log. It
// returns the first failure, or nil when the log verifies.
func Verify(ctx context.Context, js jetstream.JetStream, pub ed25519.PublicKey, opt VerifyOptions) (Summary, *Failure, error) {
	sum := Summary{Events: map[string]uint64{}}
	if opt.ProgressEvery == 0 {
		opt.ProgressEvery = 100_000
	}
	// Checkpoints first: each must carry a valid signature.
	cps := map[string][]domain.CheckpointPublished{}
	var cpFail *Failure
	err := ReadStream(ctx, js, domain.StreamCheckpoints, 1, false, func(seq uint64, data []byte) error {
		env, err := domain.UnmarshalEnvelope(data)
		if err != nil {
			cpFail = &Failure{Stream: domain.StreamCheckpoints, Seq: seq, Why: "undecodable checkpoint: " + err.Error()}
			return errStop
		}
		ev, _ := env.Decode()
		c, ok := ev.(domain.CheckpointPublished)
		if !ok || env.ComputeHash() != env.Hash {
			cpFail = &Failure{Stream: domain.StreamCheckpoints, Seq: seq, EventID: env.ID.String(), Why: "checkpoint event altered"}
			return errStop
		}
		if err := c.Verify(pub); err != nil {
			cpFail = &Failure{Stream: domain.StreamCheckpoints, Seq: seq, EventID: env.ID.String(), Why: err.Error()}
			return errStop
		}
		cps[c.Stream] = append(cps[c.Stream], c)
		sum.Checkpoints++
		return nil
	})
	if err != nil && err != errStop {
		return sum, nil, err
	}
	if cpFail != nil {
		return sum, cpFail, nil
	}
	digests := map[string][32]byte{} // event id -> SHA-256 of its stored bytes, for the row comparison
	where := map[string]Failure{}
	var order []string
	for _, stream := range Streams {
		list := cps[stream]
		sort.SliceStable(list, func(i, j int) bool { return list[i].Size < list[j].Size })
		tree := NewTree()
		chains := map[string]string{}
		next := 0
		var prev *domain.CheckpointPublished
		var fail *Failure
		expect := uint64(1)
		err := ReadStream(ctx, js, stream, 1, false, func(seq uint64, data []byte) error {
			if seq != expect {
				fail = &Failure{Stream: stream, Seq: expect, Why: fmt.Sprintf("sequence %d is missing from the stream (next stored is %d)", expect, seq)}
				return errStop
			}
			expect++
			env, err := domain.UnmarshalEnvelope(data)
			if err != nil {
				fail = &Failure{Stream: stream, Seq: seq, Why: "stored bytes are not a valid event: " + err.Error()}
				return errStop
			}
			id := env.ID.String()
			if why := checkEvent(env, chains, stream); why != "" {
				fail = &Failure{Stream: stream, Seq: seq, EventID: id, Why: why}
				return errStop
			}
			tree.Append(data)
			if opt.Rows != nil {
				digests[id] = sha256.Sum256(data)
				where[id] = Failure{Stream: stream, Seq: seq, EventID: id}
				order = append(order, id)
			}
			for next < len(list) && list[next].Size == tree.Size() {
				c := list[next]
				if got := hex.EncodeToString(tree.Root()); got != c.Root {
					fail = &Failure{Stream: stream, Seq: seq, EventID: id, Why: fmt.Sprintf(
						"the tree of the first %d events does not match the checkpoint signed at %s: an event at or before this one was altered, removed, inserted or reordered",
						c.Size, c.At.Format("2006-01-02T15:04:05.000Z07:00"))}
					return errStop
				}
				if prev != nil {
					if f := consistent(tree, *prev, c); f != "" {
						fail = &Failure{Stream: stream, Seq: seq, EventID: id, Why: f}
						return errStop
					}
				}
				prev = &list[next]
				next++
			}
			sum.Events[stream]++
			if opt.Progress != nil && sum.Events[stream]%opt.ProgressEvery == 0 {
				opt.Progress(stream, sum.Events[stream])
			}
			return nil
		})
		if err != nil && err != errStop {
			return sum, nil, err
		}
		if fail != nil {
			return sum, fail, nil
		}
		if next < len(list) {
			c := list[next]
			return sum, &Failure{Stream: stream, Seq: tree.Size() + 1, Why: fmt.Sprintf(
				"a checkpoint covers %d events but the stream holds %d: events at the end were removed", c.Size, tree.Size())}, nil
		}
	}
	if opt.Rows == nil {
		return sum, nil, nil
	}
	// Every row must be an event of JetStream, byte for byte, and every
	// event must have its row.
	seen := map[string]bool{}
	var rowFail *Failure
	err = opt.Rows(ctx, func(r Row) error {
		sum.Rows++
		d, ok := digests[r.EventID]
		if !ok {
			rowFail = &Failure{Stream: r.Stream, Seq: r.Seq, EventID: r.EventID, Why: "ClickHouse has a row for an event JetStream does not have"}
			return errStop
		}
		if got := sha256.Sum256([]byte(r.Raw)); !bytes.Equal(got[:], d[:]) {
			f := where[r.EventID]
			f.Why = "the ClickHouse row differs from the event stored in JetStream"
			rowFail = &f
			return errStop
		}
		seen[r.EventID] = true
		return nil
	})
	if err != nil && err != errStop {
		return sum, nil, err
	}
	if rowFail != nil {
		return sum, rowFail, nil
	}
	for _, id := range order {
		if !seen[id] {
			f := where[id]
			f.Why = "the event has no row in ClickHouse"
			return sum, &f, nil
		}
	}
	return sum, nil, nil
}

// consistent checks, with the library's consistency proof, that checkpoint
// c extends prev.
func consistent(tree *Tree, prev, c domain.CheckpointPublished) string {
	r1, err1 := hex.DecodeString(prev.Root)
	r2, err2 := hex.DecodeString(c.Root)
	if err1 != nil || err2 != nil {
		return "a checkpoint root is not hex"
	}
	p, err := tree.ConsistencyProof(prev.Size, c.Size)
	if err == nil {
		err = VerifyConsistency(prev.Size, c.Size, p, r1, r2)
	}
	if err != nil {
		return fmt.Sprintf("checkpoint at size %d does not extend the one at size %d: %v", c.Size, prev.Size, err)
	}
	return ""
}

type stopErr struct{}

func (stopErr) Error() string { return "stop" }

var errStop error = stopErr{}
