package chlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyledger/keyledger/domain"
)

// Inserter stores rows in the audit log; *Store is the one implementation.
// Insert returns a wrapped infrastructure error when the rows may not have
// been stored, and storing the same rows twice must be harmless.
type Inserter interface {
	Insert(ctx context.Context, rows []Row) error
}

// SinkConfig tunes the sink. Zero fields take the defaults.
type SinkConfig struct {
	// Streams to copy; KEYS, USAGE and ALERTS by default. A stream that
	// does not exist yet is waited for.
	Streams []string
	// Durable is the name of the durable consumer on each stream.
	Durable string
	// BatchBytes is the most message bytes one fetch, and so one insert,
	// carries (8 MiB, above NATS's largest message: a message is never
	// too big to fetch). A pack of usage events is one message of many
	// events, so bytes, not messages, bound a batch's rows and memory.
	// ClickHouse pays about as much for an insert as for a thousand
	// rows, and its merges rewrite small parts more often, so a busy
	// stream's batch is bound by BatchWait rather than by this.
	BatchBytes int
	// BatchWait is the longest an event waits for its batch to fill
	// (200ms); a batch goes as soon as it is full.
	BatchWait time.Duration
	// AckWait is how long JetStream waits for an ack before it delivers
	// a message again (10s). While a batch is being inserted or retried
	// the sink extends it every AckWait/3, so this only matters when a
	// sink dies: it is how long the events a dead node had in flight wait
	// before another sink (or the restarted node) takes them.
	AckWait time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts while
	// ClickHouse (or the stream) is unavailable (100ms and 10s).
	MinBackoff, MaxBackoff time.Duration
	// InsertTimeout bounds one insert attempt (30s).
	InsertTimeout time.Duration
	// Workers is how many batches of one stream are in flight at once
	// (2). Each worker fetches, inserts and acks on its own, but only one
	// of a stream's workers fetches at a time: the next batch fills while
	// the last one is inserted, and each batch gets all of the stream's
	// events of its time, not a share of them. Order does not matter to
	// the audit table, and every message is acked on its own.
	Workers int
	// Verdict is the event store's verdict on a message (writer and
	// signature are its headers; n and event its events): why it is
	// quarantined, or nil. Its rows are then stored with Quarantine set,
	// out of every search that does not ask for them. Without it only a
	// message that is not an event is quarantined.
	Verdict Verdict
}

// Verdict judges one stored message once (see eventstore's Store.Verdict).
type Verdict func(stream, subject string, data []byte, writer, signature string, storedAt time.Time, n int, event func(i int) (typ, actor string, ok bool)) (string, error)

// DefaultDurable is the durable consumer name the sink uses by default.
const DefaultDurable = "chlog"

func (c SinkConfig) withDefaults() SinkConfig {
	if len(c.Streams) == 0 {
		c.Streams = []string{domain.StreamKeys, domain.StreamUsage, domain.StreamAlerts}
	}
	if c.Durable == "" {
		c.Durable = DefaultDurable
	}
	if c.BatchBytes <= 0 {
		c.BatchBytes = 8 << 20
	}
	if c.BatchWait <= 0 {
		c.BatchWait = 200 * time.Millisecond
	}
	if c.AckWait <= 0 {
		c.AckWait = 10 * time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 10 * time.Second
	}
	if c.MinBackoff > c.MaxBackoff {
		c.MinBackoff = c.MaxBackoff
	}
	if c.InsertTimeout <= 0 {
		c.InsertTimeout = 30 * time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 2
	}
	return c
}

// Sink copies every event of its streams into the audit log: one durable
// pull consumer per stream, batched inserts, and acks only after ClickHouse
// accepted the batch. While ClickHouse is down it retries the same batch
// with back-off and the rest of the events wait in JetStream; a batch that
// was stored but not acked (a crash, a lost ack) is delivered again and
// stored again, which the audit table makes harmless. Several keyledger
// nodes may run a sink on the same durable consumers: they share the work.
type Sink struct {
	js     jetstream.JetStream
	db     Inserter
	cfg    SinkConfig
	logger *slog.Logger

	stats map[string]*streamStats
}

type streamStats struct {
	events   atomic.Uint64
	batches  atomic.Uint64
	failures atomic.Uint64
	lastSeq  atomic.Uint64
}

// NewSink returns a sink from the streams of js into db. It does nothing
// until Run.
func NewSink(js jetstream.JetStream, db Inserter, cfg SinkConfig, logger *slog.Logger) *Sink {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	s := &Sink{js: js, db: db, cfg: cfg, logger: logger.With("component", "chlog.sink"), stats: map[string]*streamStats{}}
	for _, name := range cfg.Streams {
		s.stats[name] = &streamStats{}
	}
	return s
}

// Run copies events until ctx is done, then returns nil. Failures of
// ClickHouse or JetStream are retried, never returned.
func (s *Sink) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, name := range s.cfg.Streams {
		fetching := new(sync.Mutex)
		for range s.cfg.Workers {
			wg.Go(func() { s.runStream(ctx, name, fetching) })
		}
	}
	wg.Wait()
	return nil
}

// runStream is one worker of stream; fetching is held by the worker that
// is fetching.
func (s *Sink) runStream(ctx context.Context, stream string, fetching *sync.Mutex) {
	log := s.logger.With("stream", stream)
	st := s.stats[stream]
	cons, ok := s.consumer(ctx, stream, log)
	if !ok {
		return
	}
	back := s.newBackoff()
	// buf holds the rows of one batch after another: a batch is
	// thousands of rows, and memory the heap gave back since the last
	// one costs a page fault per few rows when it is touched again.
	var buf []Row
	for ctx.Err() == nil {
		fetching.Lock()
		msgs, err := s.fetch(cons)
		fetching.Unlock()
		if err != nil {
			// A deleted consumer (an operator, a stream re-created)
			// is created again; anything else is waited out.
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				if cons, ok = s.consumer(ctx, stream, log); !ok {
					return
				}
			}
			if len(msgs) == 0 {
				log.Warn("fetch from jetstream failed", "err", err)
				back.wait(ctx)
				continue
			}
		}
		back.reset()
		if len(msgs) == 0 {
			continue
		}
		var rows int
		rows, buf, ok = s.store(ctx, msgs, buf, st, log)
		if !ok {
			// ctx is done: hand the batch back at once rather than
			// after AckWait, so the next sink starts where this one
			// stopped.
			for _, m := range msgs {
				_ = m.Nak()
			}
			return
		}
		for _, m := range msgs {
			// A lost ack only means the event is delivered and
			// stored once more, which is harmless.
			if err := m.Ack(); err != nil {
				log.Debug("ack failed", "err", err)
			}
		}
		st.batches.Add(1)
		st.events.Add(uint64(rows))
	}
}

// consumer creates or updates the stream's durable consumer, retrying until
// it exists or ctx is done.
func (s *Sink) consumer(ctx context.Context, stream string, log *slog.Logger) (jetstream.Consumer, bool) {
	back := s.newBackoff()
	warned := false
	for {
		cons, err := s.js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
			Durable:       s.cfg.Durable,
			Description:   "keyledger: copies every event into the ClickHouse audit log",
			DeliverPolicy: jetstream.DeliverAllPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       s.cfg.AckWait,
			MaxDeliver:    -1,
			MaxAckPending: max(1000, 2*s.cfg.Workers*fetchMessages),
		})
		if err == nil {
			log.Info("clickhouse sink consuming", "durable", s.cfg.Durable)
			return cons, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		if !warned || !errors.Is(err, jetstream.ErrStreamNotFound) {
			log.Warn("cannot consume stream yet", "err", err)
			warned = true
		}
		if !back.wait(ctx) {
			return nil, false
		}
	}
}

// fetchMessages caps the messages of one fetch (BatchBytes caps its bytes).
// A stream of single events (KEYS, or usage a service publishes one by one)
// catching up after an outage is bound by it: 5000 makes an insert of 5000
// rows, where ClickHouse's cost per row is about half that of 1000.
const fetchMessages = 5000

// fetch returns up to BatchBytes of messages, waiting at most BatchWait for
// the batch to fill. Messages received before an error are returned with it.
func (s *Sink) fetch(cons jetstream.Consumer) ([]jetstream.Msg, error) {
	// Both limits: FetchBytes alone asks for a million messages, and
	// nats.go sizes its channel for them on every fetch.
	batch, err := cons.Fetch(fetchMessages, jetstream.FetchMaxBytes(s.cfg.BatchBytes), jetstream.FetchMaxWait(s.cfg.BatchWait))
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if err := batch.Error(); err != nil {
		return msgs, fmt.Errorf("fetch: %w", err)
	}
	return msgs, nil
}

// store inserts the batch's events (a pack is many), retrying with back-off
// until ClickHouse accepts them, and returns how many rows it inserted. It
// returns false only when ctx is done first. The rows are built in buf,
// which it returns, emptied, for the next batch.
func (s *Sink) store(ctx context.Context, msgs []jetstream.Msg, buf []Row, st *streamStats, log *slog.Logger) (int, []Row, bool) {
	rows := buf[:0]
	// The rows' strings are the batch's; let them go with it.
	defer func() { clear(rows) }()
	var last uint64
	for _, m := range msgs {
		var seq uint64
		var stored time.Time
		stream := ""
		if md, err := m.Metadata(); err == nil {
			seq, stream, stored = md.Sequence.Stream, md.Stream, md.Timestamp
		}
		from := len(rows)
		h := m.Headers()
		rows = AppendRows(rows, stream, seq, h.Get(domain.HdrEvents), m.Data())
		mine := rows[from:]
		why := s.verdict(stream, m.Subject(), m.Data(), h.Get(domain.HdrWriter), h.Get(domain.HdrSignature), stored, mine)
		for i := range mine {
			r := &mine[i]
			if r.Type == invalidType {
				log.Error("message is not an event; stored as invalid", "seq", seq, "subject", m.Subject())
			}
			if r.Time.IsZero() {
				// A non-event has no time of its own; when JetStream
				// stored it is the next best thing for range searches.
				r.Time = stored.UTC().Truncate(time.Millisecond)
			}
			r.Quarantine = why
		}
		last = max(last, seq)
	}
	// Keep JetStream from handing the batch to another sink (or back to
	// this one) while it is being inserted or retried.
	alive, stopped := make(chan struct{}), make(chan struct{})
	defer func() {
		// The last InProgress must not cross the caller's Ack.
		close(alive)
		<-stopped
	}()
	go func() {
		defer close(stopped)
		t := time.NewTicker(s.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-alive:
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	}()
	back := s.newBackoff()
	for attempt := 1; ; attempt++ {
		ictx, cancel := context.WithTimeout(ctx, s.cfg.InsertTimeout)
		err := s.db.Insert(ictx, rows)
		cancel()
		if err == nil {
			if attempt > 1 {
				log.Info("clickhouse insert succeeded after retries", "attempts", attempt, "events", len(rows))
			}
			st.lastSeq.Store(last)
			return len(rows), rows[:0], true
		}
		if ctx.Err() != nil {
			return 0, rows[:0], false
		}
		st.failures.Add(1)
		// Say it once, then every tenth attempt: an outage of hours
		// must not flood the log.
		if attempt == 1 || attempt%10 == 0 {
			log.Warn("clickhouse insert failed; events wait in jetstream", "attempt", attempt, "events", len(rows), "err", err)
		}
		if !back.wait(ctx) {
			return 0, rows[:0], false
		}
	}
}

// verdict returns why the message whose rows are rows is quarantined, or
// "": rows give the verdict its events' types and actors, so the sink
// decodes each event once.
func (s *Sink) verdict(stream, subject string, data []byte, writer, signature string, stored time.Time, rows []Row) string {
	event := func(i int) (string, string, bool) {
		if rows[i].Type == invalidType {
			return "", "", false
		}
		return rows[i].Type, rows[i].Actor, true
	}
	var err error
	if s.cfg.Verdict != nil {
		_, err = s.cfg.Verdict(stream, subject, data, writer, signature, stored, len(rows), event)
	} else {
		err = domain.CheckEvents(stream, subject, "", len(rows), event)
	}
	if err == nil {
		return ""
	}
	return domain.ErrorReason(err) + ": " + domain.ErrorMessage(err)
}

// StreamLag is how far the audit log is behind one stream.
type StreamLag struct {
	Stream string
	// LastSeq is the stream's last sequence.
	LastSeq uint64
	// AckFloor is the sequence up to which every event is in ClickHouse.
	AckFloor uint64
	// Lag is LastSeq - AckFloor: events stored in JetStream and not yet
	// known to be in ClickHouse.
	Lag uint64
	// AckPending counts events handed to a sink and not yet acked (being
	// inserted, or waiting for AckWait to hand them out again), and
	// Redelivered those handed out more than once and not yet acked.
	AckPending, Redelivered int
}

// Lag returns, for each of the sink's streams that exists, how many events
// are not yet in ClickHouse, as JetStream sees it (so it is right for a sink
// shared by several nodes, and before this node's sink has started). A
// stream that does not exist yet is left out. The error is a wrapped
// infrastructure error from JetStream.
func (s *Sink) Lag(ctx context.Context) ([]StreamLag, error) {
	var out []StreamLag
	for _, name := range s.cfg.Streams {
		str, err := s.js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("lag of %s: %w", name, err)
		}
		info, err := str.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("lag of %s: %w", name, err)
		}
		l := StreamLag{Stream: name, LastSeq: info.State.LastSeq}
		cons, err := str.Consumer(ctx, s.cfg.Durable)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			// Nothing is copied yet; everything stored is behind.
			l.AckFloor = info.State.FirstSeq - min(info.State.FirstSeq, 1)
		case err != nil:
			return nil, fmt.Errorf("lag of %s: %w", name, err)
		default:
			ci, err := cons.Info(ctx)
			if err != nil {
				return nil, fmt.Errorf("lag of %s: %w", name, err)
			}
			l.AckFloor = ci.AckFloor.Stream
			l.AckPending, l.Redelivered = ci.NumAckPending, ci.NumRedelivered
		}
		if l.LastSeq > l.AckFloor {
			l.Lag = l.LastSeq - l.AckFloor
		}
		out = append(out, l)
	}
	return out, nil
}

// TotalLag returns the sum of Lag over the sink's streams.
func (s *Sink) TotalLag(ctx context.Context) (uint64, error) {
	lags, err := s.Lag(ctx)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, l := range lags {
		n += l.Lag
	}
	return n, nil
}

// SinkStats counts what this node's sink did since it was created, for
// metrics.
type SinkStats struct {
	Stream string
	// Events and Batches count what was inserted and acked.
	Events, Batches uint64
	// Failures counts insert attempts that failed (and were retried).
	Failures uint64
	// LastSeq is the highest stream sequence inserted.
	LastSeq uint64
}

// Stats returns the sink's counters, one entry per stream.
func (s *Sink) Stats() []SinkStats {
	out := make([]SinkStats, 0, len(s.cfg.Streams))
	for _, name := range s.cfg.Streams {
		st := s.stats[name]
		out = append(out, SinkStats{
			Stream:   name,
			Events:   st.events.Load(),
			Batches:  st.batches.Load(),
			Failures: st.failures.Load(),
			LastSeq:  st.lastSeq.Load(),
		})
	}
	return out
}

// backoff is an exponential wait with jitter, so that several nodes whose
// ClickHouse came back do not all retry in the same instant.
type backoff struct {
	min, max, next time.Duration
}

func (s *Sink) newBackoff() *backoff {
	return &backoff{min: s.cfg.MinBackoff, max: s.cfg.MaxBackoff, next: s.cfg.MinBackoff}
}

func (b *backoff) reset() { b.next = b.min }

// wait sleeps for the next interval; it returns false when ctx is done
// first.
func (b *backoff) wait(ctx context.Context) bool {
	d := b.next/2 + rand.N(b.next/2+1)
	b.next = min(2*b.next, b.max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
