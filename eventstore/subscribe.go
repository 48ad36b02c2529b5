package eventstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// pullMessages and pullBytes bound what one pull request of a reader asks
// for: both, since PullMaxBytes alone asks for a million messages and
// nats.go sizes its buffers for them. 4 MB is a few of the largest
// messages (a pack is under 1 MB).
const (
	pullMessages = 500
	pullBytes    = 4 << 20
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
// Skipped counts them. Events of a quarantined message (StoredMessage's
// Quarantine) reach fn with Forged set, for it to refuse and count.
func (s *Store) Subscribe(ctx context.Context, stream string, fromSeq uint64, fn func(domain.Envelope) error) (*Subscription, error) {
	return s.SubscribeMessages(ctx, stream, fromSeq, func(m StoredMessage) error {
		if m.PackErr != nil {
			return nil
		}
		for i, env := range m.Events {
			if m.Err(i) != nil {
				continue
			}
			if err := fn(env); err != nil {
				return err
			}
		}
		return nil
	})
}

// StoredMessage is one stored message as a subscription reads it: its
// events, both as stored and decoded, so that the followers of a stream
// inside one node decode each event once, and the store's verdict on it.
type StoredMessage struct {
	Seq     uint64
	Subject string
	// Stored is when the server stored the message.
	Stored time.Time
	// Pending is how many messages of the stream follow it, as the server
	// counted when it delivered it.
	Pending uint64
	// Raw holds the message's events as stored: the events of a pack, or
	// the whole message. A pack that does not split (PackErr) is one
	// whole message here, and it is not an event.
	Raw     [][]byte
	PackErr error
	// Events are Raw decoded, with Stream, Seq, Index, Writer and Forged
	// set; Errs[i] (Err(i)) is why Raw[i] is not an event, and Events[i]
	// is then empty. Errs is nil when every event decoded.
	Events []domain.Envelope
	Errs   []error
	// Writer is the writer whose signature the message carries (trusted
	// or not), and
	// Quarantine why the message must be applied nowhere (Verdict): an
	// unsigned message, an unknown or retired writer, a bad signature,
	// an event its stream may not hold, a service's event naming another
	// actor, or bytes that are not an event. Nil when it may be applied.
	// Every event's Forged is Quarantine.
	Writer     string
	Quarantine error
}

// Quarantined reports whether the message must be applied nowhere.
func (m StoredMessage) Quarantined() bool { return m.Quarantine != nil }

// Err returns why the message's i-th event is not an event, or nil.
func (m StoredMessage) Err(i int) error {
	if m.Errs == nil {
		return nil
	}
	return m.Errs[i]
}

// SubscribeMessages is Subscribe one stored message at a time, the
// messages that hold no valid event included (they are logged and counted
// as skipped all the same).
func (s *Store) SubscribeMessages(ctx context.Context, stream string, fromSeq uint64, fn func(StoredMessage) error) (*Subscription, error) {
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if fromSeq > 1 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = fromSeq
	}
	return s.subscribe(ctx, stream, cfg, fn)
}

// SubscribeSubjects is SubscribeMessages over the messages of stream whose
// subject matches filter only.
func (s *Store) SubscribeSubjects(ctx context.Context, stream, filter string, fromSeq uint64, fn func(StoredMessage) error) (*Subscription, error) {
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, FilterSubjects: []string{filter}}
	if fromSeq > 1 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = fromSeq
	}
	return s.subscribe(ctx, stream, cfg, fn)
}

// LastSeqOf returns the sequence of the last message of stream whose
// subject matches filter, 0 when there is none.
func (s *Store) LastSeqOf(ctx context.Context, stream, filter string) (uint64, error) {
	m, found, err := s.leaderGet(ctx, stream, msgGetRequest{LastFor: filter, NoHeaders: true})
	if err != nil {
		return 0, fmt.Errorf("last of %s: %w", filter, err)
	}
	if !found {
		return 0, nil
	}
	return m.Sequence, nil
}

func (s *Store) subscribe(ctx context.Context, stream string, cfg jetstream.OrderedConsumerConfig, fn func(StoredMessage) error) (*Subscription, error) {
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
	// Pulls are bounded in bytes: a message may be a pack of hundreds of
	// events, and a pull of the default 500 of them (a catch-up of
	// USAGE) would ask the one in-process connection for over 100 MB at
	// once, and get it dropped as a slow consumer.
	it, err := cons.Messages(jetstream.PullHeartbeat(time.Second), jetstream.PullMaxMessagesWithBytesLimit(pullMessages, pullBytes))
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
			if err := fn(s.storedMessage(stream, msg, md, sub, log)); err != nil {
				sub.err = err
				return
			}
		}
	}()
	return sub, nil
}

// storedMessage splits and decodes one message of a subscription, logging
// and counting what is not a valid event, and gives the store's verdict on
// it, once for the whole message.
func (s *Store) storedMessage(stream string, msg jetstream.Msg, md *jetstream.MsgMetadata, sub *Subscription, log *slog.Logger) StoredMessage {
	seq := md.Sequence.Stream
	h := msg.Headers()
	m := StoredMessage{Seq: seq, Subject: msg.Subject(), Stored: md.Timestamp, Pending: md.NumPending}
	m.Raw, m.PackErr = domain.Unpack(h.Get(domain.HdrEvents), msg.Data())
	if m.PackErr != nil {
		log.Warn("subscription skipped invalid pack", "seq", seq, "subject", msg.Subject(), "err", m.PackErr)
		sub.skipped.Add(1)
		m.Raw = [][]byte{msg.Data()}
		m.Events, m.Errs = make([]domain.Envelope, 1), []error{m.PackErr}
	} else {
		m.Events = make([]domain.Envelope, len(m.Raw))
		for i, raw := range m.Raw {
			env, err := domain.UnmarshalEnvelope(raw)
			if err != nil {
				log.Warn("subscription skipped invalid event", "seq", seq, "index", i, "subject", msg.Subject(), "err", err)
				sub.skipped.Add(1)
				if m.Errs == nil {
					m.Errs = make([]error, len(m.Raw))
				}
				m.Errs[i] = err
				continue
			}
			env.Stream, env.Seq, env.Index = stream, seq, i
			m.Events[i] = env
		}
	}
	m.Writer, m.Quarantine = s.Verdict(stream, msg.Subject(), msg.Data(), h.Get(HdrWriter), h.Get(HdrSignature), md.Timestamp, len(m.Events), func(i int) (string, string, bool) {
		if m.Err(i) != nil {
			return "", "", false
		}
		return m.Events[i].Type, m.Events[i].Actor, true
	})
	if m.Quarantine != nil {
		log.Warn("message quarantined", "seq", seq, "subject", msg.Subject(), "writer", m.Writer, "why", m.Quarantine)
	}
	// An event's Writer is the trusted writer that signed it: none for
	// a quarantined message, whatever writer it names.
	writer := m.Writer
	if m.Quarantine != nil {
		writer = ""
	}
	for i := range m.Events {
		m.Events[i].Writer, m.Events[i].Forged = writer, m.Quarantine
	}
	return m
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
