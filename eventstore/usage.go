package eventstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// UsageConfig tunes a UsagePublisher.
type UsageConfig struct {
	// Async makes Publish return once the events are buffered instead of
	// stored. The default waits until they are durably stored.
	Async bool
	// BufferSize is how many events the async buffer holds before Publish
	// blocks; 8192 when zero.
	BufferSize int
	// MaxBatch caps the events of one group commit (one packed message);
	// 500 when zero. A pack is also kept under maxPackBytes.
	MaxBatch int
	// Linger is how long the async collector waits for more events
	// after the first of a pack (5ms when zero): nobody waits for an
	// async pack, and every message costs the same fsync, signature and
	// delivery to each reader however few events it carries.
	Linger time.Duration
	// OnCommit, when set, hears of every pack stored: how many events it
	// held and how long storing it took.
	OnCommit func(events int, took time.Duration)
}

// UsageStats counts a UsagePublisher's work.
type UsageStats struct {
	Calls     uint64 // Publish calls that succeeded
	Events    uint64 // events stored (async) or acknowledged to callers (sync)
	Batches   uint64 // messages sent: packs, and single events after a refusal
	Rejected  uint64 // events the server refused for good (logged one by one)
	Abandoned uint64 // async events still unstored when Close gave up (logged)
}

// maxPackBytes keeps a packed message well under NATS's default 1 MB
// payload limit (and under a smaller limit of an external server).
const maxPackBytes = 768 << 10

// usageEvent is one encoded usage event waiting for its pack.
type usageEvent struct {
	raw []byte
	id  uuid.UUID
}

// usageReq is one durable caller's share of a group commit.
type usageReq struct {
	ctx    context.Context
	events []usageEvent
	done   chan error
}

// UsagePublisher stores used/denied events in the USAGE stream with group
// commit: the events of concurrent callers are packed into one message
// (domain.Pack), so a group costs one stored message, one fsync on a
// SyncAlways server and one signature, and every event keeps its own id,
// hash and encoding for the readers that unpack it.
type UsagePublisher struct {
	cfg      UsageConfig
	log      *slog.Logger
	pub      publisher
	wait     time.Duration // how long a durable Publish waits at most
	signer   *signer
	maxBytes int

	// once stores PublishOnce's events, each as its own message.
	once *committer

	// Sync mode: callers' requests, gathered by the committer goroutine.
	in      chan *usageReq
	pending atomic.Int64 // events submitted, not yet answered

	// Async mode.
	buf      chan usageEvent
	inflight atomic.Int64

	quit chan struct{} // closed when Close gives up waiting (async) or stops (sync)
	done chan struct{} // closed when the worker has exited

	mu      sync.RWMutex
	closed  bool
	senders sync.WaitGroup

	calls, events, batches, rejected, abandoned atomic.Uint64
}

// NewUsagePublisher starts a publisher of usage events on s. Close it
// before closing s.
func NewUsagePublisher(s *Store, cfg UsageConfig) *UsagePublisher {
	if cfg.BufferSize <= 0 {
		cfg.BufferSize = 8192
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 500
	}
	if cfg.Linger <= 0 {
		cfg.Linger = 5 * time.Millisecond
	}
	p := &UsagePublisher{cfg: cfg, log: s.log.With("publisher", "usage"), pub: s.pub, signer: s.signer,
		wait: 2 * s.cfg.Timeout, maxBytes: maxPackBytes, quit: make(chan struct{}), done: make(chan struct{})}
	p.once = newCommitter(s.batchPolicy(), p.log, min(cfg.MaxBatch, maxAtomicBatch))
	if mp := s.nc.MaxPayload(); mp > 0 {
		// Room for the headers: Msg-Id, signature, count.
		p.maxBytes = min(p.maxBytes, int(mp)-4096)
	}
	if !cfg.Async {
		p.in = make(chan *usageReq, 4096)
		go p.commitLoop()
		return p
	}
	p.buf = make(chan usageEvent, cfg.BufferSize)
	go p.work()
	return p
}

// Publish stores usage events (key.used, key.denied). In sync mode it
// returns once they are durably stored, or with the last error once they
// could not be for twice the store's Timeout (NATS away, no quorum: their
// outcome is then unknown, and no caller may take them as stored); in
// async mode once they are
// buffered, blocking while the buffer is full until there is room or ctx
// ends, so an event is never dropped silently.
//
// Returns EINVALID for events that are not usage events or whose key id
// cannot be a subject token, and ErrClosed after Close.
func (p *UsagePublisher) Publish(ctx context.Context, envs ...domain.Envelope) error {
	if len(envs) == 0 {
		return nil
	}
	events, err := usageEvents(envs)
	if err != nil {
		return err
	}
	if !p.enter() {
		return ErrClosed
	}
	defer p.senders.Done()

	if p.cfg.Async {
		return p.enqueue(ctx, events)
	}
	// A caller waits for its events within a deadline, queued and
	// retried, then fails (a verification answers 503): waiting until it
	// hangs up would hold every request for as long as NATS is away.
	ctx, cancel := context.WithTimeout(ctx, p.wait)
	defer cancel()
	r := &usageReq{ctx: ctx, events: events, done: make(chan error, 1)}
	p.pending.Add(int64(len(events)))
	select {
	case p.in <- r:
	case <-ctx.Done():
		p.pending.Add(-int64(len(events)))
		return fmt.Errorf("publish usage: %w", ctx.Err())
	}
	select {
	case err = <-r.done:
	case <-ctx.Done():
		// The pack may still be stored: the caller learns only that the
		// outcome is unknown.
		err = ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("publish usage: %w", err)
	}
	p.calls.Add(1)
	p.events.Add(uint64(len(events)))
	return nil
}

// enter counts a caller in, for Close to wait for; false once closed. A
// caller that entered calls p.senders.Done when it returns.
func (p *UsagePublisher) enter() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return false
	}
	p.senders.Add(1)
	return true
}

// PublishOnce stores usage events durably, each as a message of its own
// whose Msg-Id is the event's id, so that a call retried with the same
// events (a service resending a batch of records) stores none of them
// twice, within the server's duplicate window. It costs a message per
// event, where Publish packs concurrent events into one; verifications,
// whose events are new, use Publish.
func (p *UsagePublisher) PublishOnce(ctx context.Context, envs ...domain.Envelope) error {
	if len(envs) == 0 {
		return nil
	}
	msgs, err := usageMsgs(envs, p.signer)
	if err != nil {
		return err
	}
	if !p.enter() {
		return ErrClosed
	}
	defer p.senders.Done()
	for attempt := 1; ; attempt++ {
		_, err := p.once.submit(ctx, msgs, nil, false)
		if err == nil {
			p.calls.Add(1)
			p.events.Add(uint64(len(msgs)))
			return nil
		}
		if ctx.Err() != nil || errors.Is(err, ErrClosed) || !transient(err) || attempt >= maxAppendAttempts {
			return fmt.Errorf("publish %s: %w", msgs[0].Subject, err)
		}
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return fmt.Errorf("publish %s: %w", msgs[0].Subject, err)
		}
	}
}

// commitLoop is the durable mode's group commit: it takes every request
// that is pending, packs them into one message and answers them all once it
// is stored. While a pack is in flight new requests queue up and form the
// next one, so under load packs grow by themselves and an idle system pays
// no extra latency.
func (p *UsagePublisher) commitLoop() {
	defer close(p.done)
	var carry *usageReq
	for {
		r := carry
		carry = nil
		if r == nil {
			var ok bool
			if r, ok = <-p.in; !ok {
				return
			}
		}
		round, n, size := []*usageReq{r}, len(r.events), reqBytes(r)
	gather:
		for n < p.cfg.MaxBatch {
			select {
			case r, ok := <-p.in:
				if !ok {
					break gather
				}
				if s := reqBytes(r); size+s > p.maxBytes || n+len(r.events) > p.cfg.MaxBatch {
					carry = r
					break gather
				}
				round = append(round, r)
				n, size = n+len(r.events), size+reqBytes(r)
			default:
				break gather
			}
		}
		p.commit(round)
	}
}

func reqBytes(r *usageReq) int {
	n := 0
	for _, e := range r.events {
		n += len(e.raw) + 1
	}
	return n
}

// commit stores one round as one pack and answers its callers. A pack the
// server refuses (which a retry will not change) is split: each caller's
// events are stored as a pack of their own, so only the culprit fails.
func (p *UsagePublisher) commit(round []*usageReq) {
	var events []usageEvent
	live := round[:0:0]
	for _, r := range round {
		if err := r.ctx.Err(); err != nil {
			p.reply(r, err) // the caller gave up before its pack was sent
			continue
		}
		live = append(live, r)
		events = append(events, r.events...)
	}
	round = live
	if len(events) == 0 {
		return
	}
	start := time.Now()
	err := p.store(events, func() bool { return allGone(round) })
	if p.cfg.OnCommit != nil && err == nil {
		p.cfg.OnCommit(len(events), time.Since(start))
	}
	if err != nil && refused(err) && len(round) > 1 {
		for _, r := range round {
			p.commit([]*usageReq{r})
		}
		return
	}
	for _, r := range round {
		p.reply(r, err)
	}
}

func (p *UsagePublisher) reply(r *usageReq, err error) {
	p.pending.Add(-int64(len(r.events)))
	r.done <- err
}

// allGone reports whether every caller of a round has stopped waiting.
func allGone(round []*usageReq) bool {
	for _, r := range round {
		if r.ctx.Err() == nil {
			return false
		}
	}
	return true
}

// store publishes events as one pack, retrying with the same Msg-Id (so
// that a pack whose ack was lost is stored once) while the failure may pass,
// until it is stored, refused, the publisher quits, or giveUp says nobody
// waits for it any more.
func (p *UsagePublisher) store(events []usageEvent, giveUp func() bool) error {
	m := p.packMsg(events)
	for attempt := 1; ; attempt++ {
		p.batches.Add(1)
		_, err := p.pub.publishOne(context.Background(), m)
		// A store that cannot write now (a full disk) fails a durable
		// caller at once (503); buffered events wait for it to recover.
		if err == nil || !(transient(err) || (p.cfg.Async && errors.Is(err, ErrNotWritable))) {
			return err
		}
		if giveUp() {
			return err
		}
		level := slog.LevelDebug
		if attempt%10 == 1 {
			level = slog.LevelWarn // The first failure, then every tenth.
		}
		p.log.Log(context.Background(), level, "usage pack not stored, retrying", "events", len(events), "attempt", attempt, "err", err)
		if !p.pause(attempt) {
			return err
		}
	}
}

// packMsg builds the message of a pack: the events one per line, its own
// Msg-Id, and the writer's signature over the whole.
func (p *UsagePublisher) packMsg(events []usageEvent) *nats.Msg {
	raws := make([][]byte, len(events))
	for i, e := range events {
		raws[i] = e.raw
	}
	m := nats.NewMsg(domain.PackSubject)
	m.Data = domain.Pack(raws)
	m.Header.Set(hdrMsgID, "pack-"+nuid.Next())
	m.Header.Set(hdrExpectedStream, domain.StreamUsage)
	m.Header.Set(domain.HdrEvents, strconv.Itoa(len(events)))
	p.signer.sign(m)
	return m
}

func (p *UsagePublisher) enqueue(ctx context.Context, events []usageEvent) error {
	for i, e := range events {
		select {
		case p.buf <- e:
		case <-ctx.Done():
			return fmt.Errorf("publish usage: %d of %d events buffered: %w", i, len(events), ctx.Err())
		case <-p.quit:
			return ErrClosed
		}
	}
	p.calls.Add(1)
	return nil
}

// work is the async mode's collector: after the first event of a pack it
// gathers what comes within Linger, up to MaxBatch events, and stores it
// as one pack.
func (p *UsagePublisher) work() {
	defer close(p.done)
	linger := time.NewTimer(p.cfg.Linger)
	for e := range p.buf {
		batch, size := []usageEvent{e}, len(e.raw)
		p.inflight.Store(1) // what is gathered is waiting too (Depth)
		linger.Reset(p.cfg.Linger)
	gather:
		for len(batch) < p.cfg.MaxBatch && size < p.maxBytes-64<<10 {
			select {
			case e, ok := <-p.buf:
				if !ok {
					break gather
				}
				batch = append(batch, e)
				size += len(e.raw) + 1
				p.inflight.Store(int64(len(batch)))
			case <-linger.C:
				break gather
			case <-p.quit:
				break gather
			}
		}
		p.inflight.Store(int64(len(batch)))
		p.flush(batch)
		p.inflight.Store(0)
	}
}

// flush stores an async batch, retrying for as long as the failure may pass
// (the server is away, a leader is being elected, the connection is
// reconnecting). It gives up only when Close runs out of time, and then
// counts and logs what it abandons. A refused pack is stored event by event
// so only the culprit is left out.
func (p *UsagePublisher) flush(batch []usageEvent) {
	start := time.Now()
	err := p.store(batch, p.quitting)
	switch {
	case err == nil:
		p.events.Add(uint64(len(batch)))
		if p.cfg.OnCommit != nil {
			p.cfg.OnCommit(len(batch), time.Since(start))
		}
	case refused(err) && len(batch) > 1:
		for _, e := range batch {
			p.flush([]usageEvent{e})
		}
	case refused(err):
		p.rejected.Add(1)
		p.log.Error("usage event refused by the server", "id", batch[0].id, "err", err)
	default:
		p.abandon(batch)
	}
}

// refused reports whether the server answered a publish with an error
// that a retry will not change. Anything else (no answer, no connection)
// may pass, so events are retried rather than given up.
func refused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && !transient(err)
}

// pause waits before retry number attempt; false when the publisher quits
// first.
func (p *UsagePublisher) pause(attempt int) bool {
	t := time.NewTimer(backoff(attempt))
	defer t.Stop()
	select {
	case <-p.quit:
		return false
	case <-t.C:
		return true
	}
}

func (p *UsagePublisher) quitting() bool {
	select {
	case <-p.quit:
		return true
	default:
		return false
	}
}

func (p *UsagePublisher) abandon(batch []usageEvent) {
	p.abandoned.Add(uint64(len(batch)))
	for _, e := range batch {
		p.log.Error("usage event not stored at shutdown", "id", e.id)
	}
}

// Depth is how many events are waiting to be stored: buffered or in flight
// (async), or waiting for their group commit (sync).
func (p *UsagePublisher) Depth() int {
	if p.cfg.Async {
		return len(p.buf) + int(p.inflight.Load()+p.once.pending.Load())
	}
	return int(p.pending.Load() + p.once.pending.Load())
}

// Stats returns the publisher's counters.
func (p *UsagePublisher) Stats() UsageStats {
	return UsageStats{
		Calls:     p.calls.Load(),
		Events:    p.events.Load(),
		Batches:   p.batches.Load() + p.once.batches.Load(),
		Rejected:  p.rejected.Load(),
		Abandoned: p.abandoned.Load(),
	}
}

// Close stops accepting events and waits until everything accepted is
// stored (graceful shutdown). If ctx ends first, the events still pending
// are logged and counted as abandoned and the error says how many.
func (p *UsagePublisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()

	giveUp := sync.OnceFunc(func() { close(p.quit) })
	if !p.cfg.Async {
		// Callers already waiting get their answer; then the committer
		// stops.
		err := waitCtx(ctx, func() { p.senders.Wait() })
		if err != nil {
			giveUp() // A pack being retried answers its callers now.
		}
		p.senders.Wait()
		close(p.in)
		<-p.done
		p.once.close()
		if err != nil {
			return fmt.Errorf("close usage publisher: %w", err)
		}
		return nil
	}
	if err := waitCtx(ctx, func() { p.senders.Wait() }); err != nil {
		giveUp() // Unblocks senders waiting for room.
	}
	p.senders.Wait()
	p.once.close()
	close(p.buf)
	err := waitCtx(ctx, func() { <-p.done })
	if err != nil {
		giveUp()
		<-p.done
	}
	if n := p.abandoned.Load(); n > 0 {
		return fmt.Errorf("close usage publisher: %d events not stored: %w", n, context.Cause(ctx))
	}
	return nil
}

// waitCtx runs wait in a goroutine and returns when it returns or when
// ctx ends, whichever comes first.
func waitCtx(ctx context.Context, wait func()) error {
	done := make(chan struct{})
	go func() {
		wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// usageEvents checks and encodes usage events.
func usageEvents(envs []domain.Envelope) ([]usageEvent, error) {
	out := make([]usageEvent, len(envs))
	for i, env := range envs {
		if env.StreamName() != domain.StreamUsage {
			return nil, domain.Errorf(domain.EINVALID, "bad_event", "event type %q is not a usage event", env.Type)
		}
		if env.ID == uuid.Nil {
			return nil, domain.Errorf(domain.EINVALID, "bad_event", "event without id")
		}
		if env.KeyID != "" && !validToken(env.KeyID) {
			return nil, domain.Errorf(domain.EINVALID, "bad_event", "invalid key id %q", env.KeyID)
		}
		b, err := env.Marshal()
		if err != nil {
			return nil, fmt.Errorf("publish %s: %w", env.Subject(), err)
		}
		out[i] = usageEvent{raw: b, id: env.ID}
	}
	return out, nil
}

// usageMsgs turns usage events into messages of one event each, carrying
// their Msg-Id (PublishOnce).
func usageMsgs(envs []domain.Envelope, sg *signer) ([]*nats.Msg, error) {
	events, err := usageEvents(envs)
	if err != nil {
		return nil, err
	}
	msgs := make([]*nats.Msg, len(envs))
	for i, e := range events {
		m := nats.NewMsg(envs[i].Subject())
		m.Data = e.raw
		m.Header.Set(hdrMsgID, e.id.String())
		m.Header.Set(hdrExpectedStream, domain.StreamUsage)
		sg.sign(m)
		msgs[i] = m
	}
	return msgs, nil
}
