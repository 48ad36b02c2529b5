package eventstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// UsageConfig tunes a UsagePublisher.
type UsageConfig struct {
	// Async makes Publish return once the events are buffered instead of
	// stored. The default waits until they are durably stored.
	Async bool
	// BufferSize is how many events the async buffer holds before Publish
	// blocks; 8192 when zero.
	BufferSize int
	// MaxBatch caps the events of one group commit; 500 when zero, at most
	// 1000 (nats-server's atomic batch limit).
	MaxBatch int
	// OnCommit, when set, hears of every group commit of the durable
	// publisher: how many events it stored and how long it took.
	OnCommit func(events int, took time.Duration)
}

// UsageStats counts a UsagePublisher's work.
type UsageStats struct {
	Calls     uint64 // Publish calls that succeeded
	Events    uint64 // events stored (async) or acknowledged to callers (sync)
	Batches   uint64 // round trips to the server: atomic batches and single publishes
	Rejected  uint64 // async events the server refused for good (logged one by one)
	Abandoned uint64 // async events still unstored when Close gave up (logged)
}

// UsagePublisher stores used/denied events in the USAGE stream with group
// commit: concurrent callers share one atomic batch and one fsync.
type UsagePublisher struct {
	cfg UsageConfig
	log *slog.Logger
	b   *batcher

	// Sync mode.
	c *committer

	// Async mode.
	buf      chan *nats.Msg
	inflight atomic.Int64
	quit     chan struct{} // closed when Close gives up waiting
	done     chan struct{} // closed when the worker has exited

	mu      sync.RWMutex
	closed  bool
	senders sync.WaitGroup

	calls, events, rejected, abandoned atomic.Uint64

	signer *signer
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
	cfg.MaxBatch = min(cfg.MaxBatch, maxAtomicBatch)
	p := &UsagePublisher{cfg: cfg, log: s.log.With("publisher", "usage"), signer: s.signer}
	if !cfg.Async {
		p.c = newCommitter(s.batchPolicy(), p.log, cfg.MaxBatch)
		p.c.onCommit = cfg.OnCommit
		p.b = &p.c.batcher
		return p
	}
	p.b = &batcher{batchPolicy: s.batchPolicy()}
	p.buf = make(chan *nats.Msg, cfg.BufferSize)
	p.quit = make(chan struct{})
	p.done = make(chan struct{})
	go p.work()
	return p
}

// Publish stores usage events (key.used, key.denied). In sync mode it
// returns once they are durably stored; in async mode once they are
// buffered, blocking while the buffer is full until there is room or ctx
// ends, so an event is never dropped silently.
//
// Returns EINVALID for events that are not usage events or whose key id
// cannot be a subject token, and ErrClosed after Close.
func (p *UsagePublisher) Publish(ctx context.Context, envs ...domain.Envelope) error {
	if len(envs) == 0 {
		return nil
	}
	msgs, err := usageMsgs(envs, p.signer)
	if err != nil {
		return err
	}
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return ErrClosed
	}
	p.senders.Add(1)
	p.mu.RUnlock()
	defer p.senders.Done()

	if p.cfg.Async {
		return p.enqueue(ctx, msgs)
	}
	for attempt := 1; ; attempt++ {
		_, err := p.c.submit(ctx, msgs, nil, false)
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

func (p *UsagePublisher) enqueue(ctx context.Context, msgs []*nats.Msg) error {
	for i, m := range msgs {
		select {
		case p.buf <- m:
		case <-ctx.Done():
			return fmt.Errorf("publish %s: %d of %d events buffered: %w", m.Subject, i, len(msgs), ctx.Err())
		case <-p.quit:
			return ErrClosed
		}
	}
	p.calls.Add(1)
	return nil
}

// work is the async mode's collector: it takes whatever is buffered, up to
// MaxBatch events, and stores it as one batch.
func (p *UsagePublisher) work() {
	defer close(p.done)
	for m := range p.buf {
		batch := []*nats.Msg{m}
	gather:
		for len(batch) < p.cfg.MaxBatch {
			select {
			case m, ok := <-p.buf:
				if !ok {
					break gather
				}
				batch = append(batch, m)
			default:
				break gather
			}
		}
		p.inflight.Store(int64(len(batch)))
		p.flush(batch)
		p.inflight.Store(0)
	}
}

// flush stores batch, retrying for as long as the failure may pass (the
// server is away, a leader is being elected, the connection is
// reconnecting). It gives up only when Close runs out of time, and then
// counts and logs what it abandons.
func (p *UsagePublisher) flush(batch []*nats.Msg) {
	for attempt := 1; ; attempt++ {
		if p.quitting() {
			p.abandon(batch)
			return
		}
		_, err := p.b.publishReq(context.Background(), &commitReq{msgs: batch})
		if err == nil {
			p.events.Add(uint64(len(batch)))
			return
		}
		if refused(err) {
			// Something in the batch was refused; store the events one
			// by one so only the culprit is left out.
			for _, m := range batch {
				p.flushOne(m)
			}
			return
		}
		level := slog.LevelDebug
		if attempt%10 == 1 {
			level = slog.LevelWarn // The first failure, then every tenth.
		}
		p.log.Log(context.Background(), level, "usage batch not stored, retrying", "events", len(batch), "attempt", attempt, "err", err)
		p.pause(attempt)
	}
}

func (p *UsagePublisher) flushOne(m *nats.Msg) {
	for attempt := 1; ; attempt++ {
		if p.quitting() {
			p.abandon([]*nats.Msg{m})
			return
		}
		_, err := p.b.publishReq(context.Background(), &commitReq{msgs: []*nats.Msg{m}})
		if err == nil {
			p.events.Add(1)
			return
		}
		if refused(err) {
			p.rejected.Add(1)
			p.log.Error("usage event refused by the server", "subject", m.Subject, "id", m.Header.Get(hdrMsgID), "err", err)
			return
		}
		p.pause(attempt)
	}
}

// refused reports whether the server answered a publish with an error
// that a retry will not change. Anything else (no answer, no connection)
// may pass, so async events are retried rather than given up.
func refused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && !transient(err)
}

// pause waits before retry number attempt, or until Close gives up.
func (p *UsagePublisher) pause(attempt int) {
	t := time.NewTimer(backoff(attempt))
	defer t.Stop()
	select {
	case <-p.quit:
	case <-t.C:
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

func (p *UsagePublisher) abandon(batch []*nats.Msg) {
	p.abandoned.Add(uint64(len(batch)))
	for _, m := range batch {
		p.log.Error("usage event not stored at shutdown", "subject", m.Subject, "id", m.Header.Get(hdrMsgID))
	}
}

// Depth is how many events are waiting to be stored: buffered or in flight
// (async), or waiting for their group commit (sync).
func (p *UsagePublisher) Depth() int {
	if p.cfg.Async {
		return len(p.buf) + int(p.inflight.Load())
	}
	return int(p.c.pending.Load())
}

// Stats returns the publisher's counters.
func (p *UsagePublisher) Stats() UsageStats {
	return UsageStats{
		Calls:     p.calls.Load(),
		Events:    p.events.Load(),
		Batches:   p.b.batches.Load(),
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

	if !p.cfg.Async {
		// Callers already waiting get their answer; then the collector
		// stops.
		err := waitCtx(ctx, func() { p.senders.Wait() })
		p.c.close()
		if err != nil {
			return fmt.Errorf("close usage publisher: %w", err)
		}
		return nil
	}
	giveUp := sync.OnceFunc(func() { close(p.quit) })
	if err := waitCtx(ctx, func() { p.senders.Wait() }); err != nil {
		giveUp() // Unblocks senders waiting for room.
	}
	p.senders.Wait()
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

// usageMsgs turns usage events into messages carrying their Msg-Id.
func usageMsgs(envs []domain.Envelope, sg *signer) ([]*nats.Msg, error) {
	msgs := make([]*nats.Msg, len(envs))
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
		m := nats.NewMsg(env.Subject())
		m.Data = b
		m.Header.Set(hdrMsgID, env.ID.String())
		m.Header.Set(hdrExpectedStream, domain.StreamUsage)
		sg.sign(m)
		msgs[i] = m
	}
	return msgs, nil
}
