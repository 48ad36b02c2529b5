package eventstore

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// commitReq is one caller's share of a group commit.
type commitReq struct {
	ctx  context.Context
	msgs []*nats.Msg
	// aggs name the aggregates the request checks its versions against.
	// Two requests on one aggregate never share a batch: the server caches
	// a wildcard expected-subject check per batch and does not see messages
	// staged earlier in the same batch, so both could pass the same check.
	aggs []string
	// atomic requests are all-or-nothing (a lifecycle append). Others
	// (usage events) may be split into single messages when their batch
	// is rejected.
	atomic bool
	done   chan commitRes
}

type commitRes struct {
	ack pubAck // ack.Seq is the sequence of the request's last message
	err error
}

// committer is a group commit: one goroutine takes every request that is
// pending, stores them together and releases all waiters. A group big
// enough to gain from it goes as one atomic batch (one fsync on a
// SyncAlways server); a smaller one as pipelined single publishes. While a
// group is in flight new requests queue up and form the next one, so under
// load groups grow by themselves and an idle system pays no extra latency.
type committer struct {
	batcher
	log      *slog.Logger
	maxBatch int
	onCommit func(events int, took time.Duration) // optional

	in      chan *commitReq
	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once

	pending atomic.Int64 // messages submitted but not yet answered
}

// batcher stores requests and counts the round trips it takes.
type batcher struct {
	batchPolicy

	batches atomic.Uint64 // atomic batches and single publishes sent
}

// batchPolicy says how a batcher publishes.
type batchPolicy struct {
	pub      publisher
	useBatch bool // the stream accepts atomic batches
	// minBatch is the smallest group worth an atomic batch. On an R1 file
	// stream the server stages every batch in a file store of its own,
	// a fixed cost of about 3ms, against about 0.25ms for one fsynced
	// publish: below some 16 messages, pipelined single publishes are
	// faster. Replicated streams stage in memory and batch from 2.
	minBatch int
}

func newCommitter(policy batchPolicy, log *slog.Logger, maxBatch int) *committer {
	if maxBatch <= 0 || maxBatch > maxAtomicBatch {
		maxBatch = maxAtomicBatch
	}
	c := &committer{
		batcher:  batcher{batchPolicy: policy},
		log:      log,
		maxBatch: maxBatch,
		in:       make(chan *commitReq, 4096),
		stop:     make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	go c.run()
	return c
}

// submit hands msgs to the collector and waits for the outcome of their
// batch. When ctx ends first the messages may still be stored: the caller
// learns only that the outcome is unknown, and a retry is safe because
// every message carries a Msg-Id.
func (c *committer) submit(ctx context.Context, msgs []*nats.Msg, aggs []string, atomicReq bool) (pubAck, error) {
	r := &commitReq{ctx: ctx, msgs: msgs, aggs: aggs, atomic: atomicReq, done: make(chan commitRes, 1)}
	c.pending.Add(int64(len(msgs)))
	select {
	case c.in <- r:
	case <-ctx.Done():
		c.pending.Add(-int64(len(msgs)))
		return pubAck{}, ctx.Err()
	case <-c.stop:
		c.pending.Add(-int64(len(msgs)))
		return pubAck{}, ErrClosed
	}
	select {
	case res := <-r.done:
		return res.ack, res.err
	case <-ctx.Done():
		return pubAck{}, ctx.Err()
	case <-c.stopped:
		// The collector may have answered just before it stopped.
		select {
		case res := <-r.done:
			return res.ack, res.err
		default:
			return pubAck{}, ErrClosed
		}
	}
}

// close stops the collector after the batch in flight; requests still
// queued are answered with ErrClosed.
func (c *committer) close() {
	c.once.Do(func() { close(c.stop) })
	<-c.stopped
}

func (c *committer) reply(r *commitReq, res commitRes) {
	c.pending.Add(-int64(len(r.msgs)))
	r.done <- res
}

func (c *committer) run() {
	defer close(c.stopped)
	var carry []*commitReq
	for {
		if len(carry) == 0 {
			select {
			case r := <-c.in:
				carry = append(carry, r)
			case <-c.stop:
				c.drainClosed(nil)
				return
			}
		}
		select {
		case <-c.stop:
			c.drainClosed(carry)
			return
		default:
		}
		pending := carry
	gather:
		for len(pending) < 4*c.maxBatch {
			select {
			case r := <-c.in:
				pending = append(pending, r)
			default:
				break gather
			}
		}
		round, rest := c.pick(pending)
		carry = rest
		if len(round) > 0 {
			c.commit(round)
		}
	}
}

// pick chooses the requests of the next batch: in arrival order, at most
// one per aggregate, at most maxBatch messages. The rest wait for the next
// round, in order. Requests whose caller gave up are answered right away.
func (c *committer) pick(pending []*commitReq) (round, rest []*commitReq) {
	var aggs map[string]bool
	n := 0
	for _, r := range pending {
		if err := r.ctx.Err(); err != nil {
			c.reply(r, commitRes{err: err})
			continue
		}
		if slices.ContainsFunc(r.aggs, func(a string) bool { return aggs[a] }) || (n > 0 && n+len(r.msgs) > c.maxBatch) {
			rest = append(rest, r)
			continue
		}
		for _, a := range r.aggs {
			if aggs == nil {
				aggs = make(map[string]bool)
			}
			aggs[a] = true
		}
		round = append(round, r)
		n += len(r.msgs)
	}
	return round, rest
}

func (c *committer) drainClosed(carry []*commitReq) {
	for _, r := range carry {
		c.reply(r, commitRes{err: ErrClosed})
	}
	for {
		select {
		case r := <-c.in:
			c.reply(r, commitRes{err: ErrClosed})
		default:
			return
		}
	}
}

// commit stores one round. The batch is not bound to any one caller's
// context: it serves all of them and each caller stops waiting on its own.
func (c *committer) commit(round []*commitReq) {
	ctx := context.Background()
	var msgs []*nats.Msg
	for _, r := range round {
		msgs = append(msgs, r.msgs...)
	}
	if c.onCommit != nil {
		start := time.Now()
		defer func() { c.onCommit(len(msgs), time.Since(start)) }()
	}
	if len(round) == 1 || !c.useBatch || len(msgs) < c.minBatch {
		c.commitEach(ctx, round)
		return
	}
	c.batches.Add(1)
	ack, err := c.pub.publishAtomic(ctx, msgs)
	switch {
	case err == nil:
		// The batch occupies consecutive sequences ending at ack.Seq.
		seq := ack.Seq - uint64(len(msgs))
		for _, r := range round {
			seq += uint64(len(r.msgs))
			a := ack
			a.Seq = seq
			c.reply(r, commitRes{ack: a})
		}
	case transient(err):
		// The batch may or may not be stored; every caller retries its own
		// request, and Msg-Ids and version checks sort out what was stored.
		for _, r := range round {
			c.reply(r, commitRes{err: err})
		}
	default:
		// One request spoiled the batch (a version conflict, a duplicate
		// Msg-Id from a retry). The batch does not say which, so each
		// request is stored on its own and gets its own answer.
		c.log.Debug("group commit rejected, storing requests one by one", "requests", len(round), "err", err)
		c.commitEach(ctx, round)
	}
}

// commitEach stores each request on its own, concurrently: they belong to
// different aggregates, so their relative order does not matter.
func (c *committer) commitEach(ctx context.Context, round []*commitReq) {
	if len(round) == 1 {
		r := round[0]
		ack, err := c.publishReq(ctx, r)
		c.reply(r, commitRes{ack: ack, err: err})
		return
	}
	var wg sync.WaitGroup
	for _, r := range round {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ack, err := c.publishReq(ctx, r)
			c.reply(r, commitRes{ack: ack, err: err})
		}()
	}
	wg.Wait()
}

// publishReq stores one request: a single message as a plain publish, an
// atomic request as an atomic batch. Other requests go as an atomic batch
// when they are big enough to gain from it; if the batch is rejected (a
// duplicate among retried usage events) they fall back to single
// publishes, which the server de-duplicates one by one.
func (c *batcher) publishReq(ctx context.Context, r *commitReq) (pubAck, error) {
	if len(r.msgs) == 1 {
		c.batches.Add(1)
		return c.pub.publishOne(ctx, r.msgs[0])
	}
	if r.atomic && !c.useBatch {
		// Callers never send multi-message atomic requests to a stream
		// without atomic batches (Append publishes them one by one).
		panic("eventstore: atomic request without atomic batch support")
	}
	if r.atomic || (c.useBatch && len(r.msgs) >= c.minBatch) {
		c.batches.Add(1)
		ack, err := c.pub.publishAtomic(ctx, r.msgs)
		if err == nil || r.atomic || transient(err) {
			return ack, err
		}
	}
	return c.publishSingles(ctx, r.msgs)
}

// publishSingles publishes msgs one by one, pipelined, and returns the ack
// of the last one or the first error.
func (c *batcher) publishSingles(ctx context.Context, msgs []*nats.Msg) (pubAck, error) {
	c.batches.Add(uint64(len(msgs)))
	acks := make([]pubAck, len(msgs))
	errs := make([]error, len(msgs))
	var wg sync.WaitGroup
	for i, m := range msgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acks[i], errs[i] = c.pub.publishOne(ctx, m)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return pubAck{}, err
		}
	}
	return acks[len(acks)-1], nil
}
