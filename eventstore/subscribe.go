package eventstore

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Subscription delivers a stream's events to a function, in stream order.
type Subscription struct {
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	skipped atomic.Uint64
}

// Subscribe calls fn with every event of stream from sequence fromSeq on
// (inclusive; 0 or 1 is the beginning), oldest first, then with each new
// event as it is stored, until ctx ends, Stop is called or fn returns an
// error. Events reach fn one at a time with Stream and Seq set. fn must not
// call Stop; it returns an error to end the subscription instead.
//
// Messages that are not valid events (a service may publish to USAGE
// itself) are logged and skipped rather than halting every projection;
// Skipped counts them.
func (s *Store) Subscribe(ctx context.Context, stream string, fromSeq uint64, fn func(domain.Envelope) error) (*Subscription, error) {
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if fromSeq > 1 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = fromSeq
	}
	return s.subscribe(ctx, stream, cfg, fn)
}

// SubscribeLastPerSubject calls fn with the last event of every subject
// matching filter, then with each new matching event as it is stored. A
// projection that needs only the newest event per key (last used) starts
// from one message per key instead of replaying the stream.
func (s *Store) SubscribeLastPerSubject(ctx context.Context, stream, filter string, fn func(domain.Envelope) error) (*Subscription, error) {
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy, FilterSubjects: []string{filter}}
	return s.subscribe(ctx, stream, cfg, fn)
}

// ReadLastPerSubject calls fn with the last event of every subject matching
// filter whose last event is stored at or before upTo, oldest first, and
// returns once it has delivered them all (a subject written again after
// upTo is left to a subscription from upTo+1, which delivers its newer
// event): the
// one-shot start of a projection that needs only the newest event per key
// (last used) and follows the stream through a subscription it shares with
// others. Messages that are not valid events are skipped.
func (s *Store) ReadLastPerSubject(ctx context.Context, stream, filter string, upTo uint64, fn func(domain.Envelope) error) error {
	octx, ocancel := context.WithTimeout(ctx, s.cfg.Timeout)
	cons, err := s.js.OrderedConsumer(octx, stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy, FilterSubjects: []string{filter},
	})
	ocancel()
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	if info.NumPending == 0 || upTo == 0 {
		return nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2000))
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return fmt.Errorf("read %s: %w", stream, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("read %s: %w", stream, err)
		}
		seq := md.Sequence.Stream
		if seq > upTo {
			return nil // stored after the start: the caller follows those
		}
		if env, err := domain.UnmarshalEnvelope(msg.Data()); err == nil {
			env.Stream, env.Seq = stream, seq
			if err := fn(env); err != nil {
				return err
			}
		}
		if md.NumPending == 0 || seq == upTo {
			return nil
		}
	}
}

func (s *Store) subscribe(ctx context.Context, stream string, cfg jetstream.OrderedConsumerConfig, fn func(domain.Envelope) error) (*Subscription, error) {
	octx, ocancel := context.WithTimeout(ctx, s.cfg.Timeout)
	cons, err := s.js.OrderedConsumer(octx, stream, cfg)
	ocancel()
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", stream, err)
	}
	// The ordered consumer recreates itself after two missed heartbeats.
	// The default (5s) let a pull request lost while a fresh consumer was
	// still being placed on a cluster stall delivery for 10s in tests;
	// idle heartbeats cost one tiny message a second.
	it, err := cons.Messages(jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", stream, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	sub := &Subscription{cancel: cancel, done: make(chan struct{})}
	if !s.track(sub) {
		cancel()
		it.Stop()
		return nil, fmt.Errorf("subscribe %s: %w", stream, ErrClosed)
	}
	log := s.log.With("stream", stream)
	go func() {
		defer close(sub.done)
		defer s.untrack(sub)
		defer it.Stop()
		for {
			msg, err := it.Next(jetstream.NextContext(ctx))
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
			if errors.Is(err, nats.ErrConnectionClosed) {
				sub.err = fmt.Errorf("subscribe %s: %w", stream, err)
				return
			}
			if err != nil {
				// The ordered consumer recreates itself after missed
				// heartbeats or a leader change; keep reading.
				log.Debug("subscription read", "err", err)
				if sleepCtx(ctx, 50*time.Millisecond) != nil {
					return
				}
				continue
			}
			md, err := msg.Metadata()
			if err != nil {
				log.Warn("subscription skipped message without metadata", "subject", msg.Subject(), "err", err)
				sub.skipped.Add(1)
				continue
			}
			env, err := domain.UnmarshalEnvelope(msg.Data())
			if err != nil {
				log.Warn("subscription skipped invalid event", "seq", md.Sequence.Stream, "subject", msg.Subject(), "err", err)
				sub.skipped.Add(1)
				continue
			}
			env.Stream, env.Seq = stream, md.Sequence.Stream
			// Provenance decides what the ledger applies: key state and
			// checkpoints. Usage messages are signed too, and audit verify
			// checks them, but a forged one grants nothing, so the hot
			// path's followers do not pay for the check.
			if w := s.cfg.Writers; w != nil && (stream == domain.StreamKeys || stream == domain.StreamCheckpoints) {
				if env.Forged = CheckProvenance(*w, msg.Subject(), msg.Data(), msg.Headers(), md.Timestamp); env.Forged == nil {
					env.Writer = msg.Headers().Get(HdrWriter)
				}
			}
			if err := fn(env); err != nil {
				sub.err = err
				return
			}
		}
	}()
	return sub, nil
}

// track registers sub so that Close can stop it; false after Close.
func (s *Store) track(sub *Subscription) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.subs == nil {
		s.subs = make(map[*Subscription]struct{})
	}
	s.subs[sub] = struct{}{}
	return true
}

func (s *Store) untrack(sub *Subscription) {
	s.mu.Lock()
	delete(s.subs, sub)
	s.mu.Unlock()
}

// Stop ends the subscription and waits until fn is no longer running.
func (s *Subscription) Stop() {
	s.cancel()
	<-s.done
}

// Done is closed when the subscription has ended.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns the error fn ended the subscription with, once Done is
// closed; nil after Stop or the end of the context.
func (s *Subscription) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Skipped returns how many messages were not valid events.
func (s *Subscription) Skipped() uint64 { return s.skipped.Load() }
