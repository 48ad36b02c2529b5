package notary

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
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
	// Mismatch names a column that does not match what Raw maps to.
	Mismatch string
}

// VerifyOptions tunes Verify.
type VerifyOptions struct {
	// Rows, when set, walks the ClickHouse log so every row is compared
	// with JetStream. Walking every stored row, duplicates included, is
	// stricter than one row per event: a second, altered copy of a row
	// cannot hide behind the first.
	Rows func(ctx context.Context, fn func(Row) error) error
	// Live says the deployment is running: rows of events stored after
	// Verify read a stream are skipped, and events the audit sink has not
	// acknowledged yet (after its durable consumer's ack floor, read
	// before the rows: the sink inserts before it acks) count as the
	// log's lag, not as missing rows. Without that consumer, events after
	// the last row of their stream count as lag.
	Live bool
	// SinkDurable names the audit sink's durable consumer
	// (chlog.DefaultDurable when empty).
	SinkDurable string
	// Progress is called every ProgressEvery events.
	Progress      func(stream string, events uint64)
	ProgressEvery uint64
	// Writers, when set, are the trusted writers: every message of every
	// stream must carry a valid signature of one of them.
	Writers *domain.Writers
}

// verdict returns why the event of message m at index i is quarantined, or
// nil: the message's provenance under opt.Writers (at its first event),
// and whether the event decodes and is one that its stream, and a
// service's writer, may hold. It is the event store's verdict, taken one
// event at a time as Verify meets them: an event of a pack is quarantined
// with every later event of its message once one of them fails.
func (opt VerifyOptions) verdict(stream string, m Message, env domain.Envelope, decodeErr error) error {
	event := func(int) (string, string, bool) { return env.Type, env.Actor, decodeErr == nil }
	if opt.Writers == nil {
		return domain.CheckEvents(stream, m.Subject, "", 1, event)
	}
	_, err := opt.Writers.Verdict(stream, m.Subject, m.Data, m.Writer, m.Signature, m.Stored, 1, event)
	return err
}

// Quarantined is a stored message that the event store quarantines: it is
// in the tree (the notary folds what was stored) but no part of the
// accepted history, and Verify names every one.
type Quarantined struct {
	Stream  string
	Seq     uint64
	Subject string
	Writer  string
	// EventID is the message's first event, "" when it is not one.
	EventID string
	Why     string
}

func (q Quarantined) String() string {
	w := q.Writer
	if w == "" {
		w = "(unsigned)"
	}
	id := q.EventID
	if id == "" {
		id = "(not an event)"
	}
	return fmt.Sprintf("%s sequence %d, event %s on %s, writer %s: %s", q.Stream, q.Seq, id, q.Subject, w, q.Why)
}

// Summary counts what Verify checked.
type Summary struct {
	Events      map[string]uint64
	Checkpoints int
	Rows        uint64
	// Lagging counts, with Live, the events the ClickHouse log has not
	// reached yet.
	Lagging uint64
	// Quarantined names every quarantined message, in log order: the
	// log does not verify while it holds one.
	Quarantined []Quarantined
}

// stored is what the row comparison keeps of an event: 56 bytes, so a
// million events cost about 100 MB with the map.
type stored struct {
	digest [32]byte
	stream int // index in Streams
	seq    uint64
	seen   bool
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
	err := ReadMessages(ctx, js, domain.StreamCheckpoints, 1, false, func(m Message) error {
		seq, data := m.Seq, m.Data
		env, err := domain.UnmarshalEnvelope(data)
		if q := opt.verdict(domain.StreamCheckpoints, m, env, err); q != nil {
			qm := Quarantined{Stream: domain.StreamCheckpoints, Seq: seq, Subject: m.Subject, Writer: m.Writer, Why: domain.ErrorMessage(q)}
			if err == nil {
				qm.EventID = env.ID.String()
			}
			sum.Quarantined = append(sum.Quarantined, qm)
			return nil
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
	events := map[uuid.UUID]*stored{} // for the row comparison
	// quarantinedSeqs holds "STREAM:seq" of every quarantined message,
	// whose rows the comparison leaves out (a message that is not an
	// event has a row without an event id).
	quarantinedSeqs := map[string]bool{}
	order := make([][]uuid.UUID, len(Streams))
	for si, stream := range Streams {
		list := cps[stream]
		sort.SliceStable(list, func(i, j int) bool { return list[i].Size < list[j].Size })
		tree := NewTree()
		chains := map[string]string{}
		next := 0
		var prev *domain.CheckpointPublished
		var fail *Failure
		expect := uint64(1)
		var quarantined error // the verdict on the message being read
		err := readDecoded(ctx, js, stream, func(m *decoded) error {
			seq, data := m.seq, m.data
			if m.first {
				if seq != expect {
					fail = &Failure{Stream: stream, Seq: expect, Why: fmt.Sprintf("sequence %d is missing from the stream (next stored is %d)", expect, seq)}
					return errStop
				}
				expect++
			}
			env := m.env
			id := env.ID.String()
			if m.first {
				quarantined = nil
			}
			if quarantined == nil {
				if q := opt.verdict(stream, m.msg, env, m.err); q != nil {
					quarantined = q
					qm := Quarantined{Stream: stream, Seq: seq, Subject: m.msg.Subject, Writer: m.msg.Writer, Why: domain.ErrorMessage(q)}
					if m.err == nil {
						qm.EventID = id
					}
					sum.Quarantined = append(sum.Quarantined, qm)
					quarantinedSeqs[stream+":"+strconv.FormatUint(seq, 10)] = true
				}
			}
			if quarantined == nil {
				if why := checkEventHashed(env, m.hash, chains, stream); why != "" {
					fail = &Failure{Stream: stream, Seq: seq, EventID: id, Why: why}
					return errStop
				}
			}
			if quarantined == nil && opt.Writers != nil && env.Kind() == domain.KindWriter {
				// The set of trusted writers is kept in KEYS, which is
				// read before the streams its writers sign.
				w := opt.Writers.Apply(env)
				opt.Writers = &w
			}
			tree.Append(data)
			if opt.Rows != nil && quarantined == nil {
				events[env.ID] = &stored{digest: sha256.Sum256(data), stream: si, seq: seq}
				order[si] = append(order[si], env.ID)
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
	// The sink's ack floors, read before the rows: every event at or
	// before one has its row in what the walk below reads.
	floors := map[string]uint64{}
	if opt.Live {
		durable := cmp.Or(opt.SinkDurable, chlog.DefaultDurable)
		for _, stream := range Streams {
			if c, err := js.Consumer(ctx, stream, durable); err == nil {
				if info, err := c.Info(ctx); err == nil {
					floors[stream] = info.AckFloor.Stream
				}
			}
		}
	}
	// Every row must be an event of JetStream, byte for byte, and every
	// event must have its row. Rows arrive in no particular order, so the
	// walk goes on after a bad row to name the first one in log order.
	last := map[string]uint64{} // stream -> highest sequence with a row
	var first *Failure
	note := func(f *Failure) {
		if first == nil || before(f, first) {
			first = f
		}
	}
	err = opt.Rows(ctx, func(r Row) error {
		sum.Rows++
		id, err := uuid.Parse(r.EventID)
		e := events[id]
		if quarantinedSeqs[r.Stream+":"+strconv.FormatUint(r.Seq, 10)] {
			return nil // the row of a quarantined message, named already
		}
		if err != nil || e == nil {
			if opt.Live && slices.Contains(Streams, r.Stream) && r.Seq > sum.Events[r.Stream] {
				return nil // stored after Verify read the stream
			}
			note(&Failure{Stream: r.Stream, Seq: r.Seq, EventID: r.EventID, Why: "ClickHouse has a row for an event JetStream does not have"})
			return nil
		}
		stream := Streams[e.stream]
		e.seen = true
		last[stream] = max(last[stream], e.seq)
		if got := sha256.Sum256([]byte(r.Raw)); got != e.digest || r.Stream != stream || r.Seq != e.seq {
			note(&Failure{Stream: stream, Seq: e.seq, EventID: r.EventID, Why: fmt.Sprintf(
				"the ClickHouse row (%s sequence %d) differs from the event stored in JetStream", r.Stream, r.Seq)})
		} else if r.Mismatch != "" {
			note(&Failure{Stream: stream, Seq: e.seq, EventID: r.EventID, Why: fmt.Sprintf(
				"the ClickHouse row's %s column does not match its raw event", r.Mismatch)})
		}
		return nil
	})
	if err != nil {
		return sum, nil, err
	}
	for si, ids := range order {
		stream := Streams[si]
		for _, id := range ids {
			e := events[id]
			if e.seen {
				continue
			}
			floor, ok := floors[stream]
			if opt.Live && ((ok && e.seq > floor) || (!ok && e.seq > last[stream])) {
				sum.Lagging++
				continue
			}
			note(&Failure{Stream: stream, Seq: e.seq, EventID: id.String(), Why: "the event has no row in ClickHouse"})
			break
		}
	}
	return sum, first, nil
}

// before orders failures by their place in the log: stream, then sequence.
func before(a, b *Failure) bool {
	ai, bi := slices.Index(Streams, a.Stream), slices.Index(Streams, b.Stream)
	if ai < 0 {
		ai = len(Streams)
	}
	if bi < 0 {
		bi = len(Streams)
	}
	if ai != bi {
		return ai < bi
	}
	return a.Seq < b.Seq
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

// decoded is a stored event with its decoding and its recomputed hash:
// a message, or one event of a pack (first marks a message's first event).
type decoded struct {
	seq   uint64
	data  []byte
	msg   Message
	first bool
	env   domain.Envelope
	err   error
	hash  string
}

// readDecoded calls fn with every message of a stream, in order, decoded
// and hashed. Reading, decoding and folding overlap: a goroutine reads
// batches while the previous batch is decoded and hashed on every core
// (the costly part, JSON and SHA-256) and then folded in order by fn, so
// verification runs close to the speed of a raw replay.
func readDecoded(ctx context.Context, js jetstream.JetStream, stream string, fn func(*decoded) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	const batch = 512
	batches := make(chan []decoded, 8)
	var readErr error
	go func() {
		defer close(batches)
		cur := make([]decoded, 0, batch)
		send := func() bool {
			select {
			case batches <- cur:
				cur = make([]decoded, 0, batch)
				return true
			case <-ctx.Done():
				return false
			}
		}
		readErr = ReadMessages(ctx, js, stream, 1, false, func(m Message) error {
			for i, data := range m.Events {
				cur = append(cur, decoded{seq: m.Seq, data: data, msg: m, first: i == 0})
				if len(cur) >= batch && !send() {
					return ctx.Err()
				}
			}
			return nil
		})
		if readErr == nil && len(cur) > 0 {
			send()
		}
	}()
	workers := runtime.GOMAXPROCS(0)
	for b := range batches {
		decodeAll(b, workers)
		for i := range b {
			if err := fn(&b[i]); err != nil {
				cancel()
				for range batches { // let the reader see the cancellation and end
				}
				return err
			}
		}
	}
	return readErr
}

// decodeAll decodes and hashes a batch on up to workers goroutines.
func decodeAll(b []decoded, workers int) {
	var wg sync.WaitGroup
	chunk := (len(b) + workers - 1) / workers
	for lo := 0; lo < len(b); lo += chunk {
		part := b[lo:min(lo+chunk, len(b))]
		wg.Go(func() {
			for i := range part {
				d := &part[i]
				if d.env, d.err = domain.UnmarshalEnvelope(d.data); d.err == nil {
					d.hash = d.env.ComputeHash()
				}
			}
		})
	}
	wg.Wait()
}
