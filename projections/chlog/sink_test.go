package chlog_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// startJetStream starts an embedded JetStream server with the KEYS and
// USAGE streams and returns its URL.
func startJetStream(t testing.TB) string {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	js := connectJetStream(t, srv.ClientURL())
	ctx := context.Background()
	for name, subject := range map[string]string{
		domain.StreamKeys:  "keyledger.keys.>",
		domain.StreamUsage: "keyledger.usage.>",
	} {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name: name, Subjects: []string{subject}, Storage: jetstream.FileStorage,
			Discard: jetstream.DiscardNew, DenyDelete: true, DenyPurge: true,
		}); err != nil {
			t.Fatal(err)
		}
	}
	return srv.ClientURL()
}

func connectJetStream(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// publisher appends usage events for a few keys, as the verifier would.
type publisher struct {
	js   jetstream.JetStream
	mu   sync.Mutex
	ids  []string
	prev map[string]string
	n    int
	// pack, when above 1, stores the events as packs of that many, as
	// a node's group commit does (domain.Pack).
	pack int
	raws [][]byte
}

func newPublisher(js jetstream.JetStream) *publisher {
	return &publisher{js: js, prev: map[string]string{}}
}

// publish appends n usage events, alternating between used and denied and
// between five keys, and waits until JetStream stored them all.
func (p *publisher) publish(t testing.TB, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	var acks []jetstream.PubAckFuture
	for i := range n {
		p.n++
		keyID := fmt.Sprintf("k_sink%d", p.n%5)
		var ev domain.Event = domain.KeyUsed{Code: "VALID", Owner: "owner-" + keyID, Permission: "orders:read", Service: "api"}
		if p.n%3 == 0 {
			ev = domain.KeyDenied{Code: "REVOKED", Owner: "owner-" + keyID, Permission: "orders:write", Service: "api", TokenHash: "th"}
		}
		env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), keyID, ev, time.Now(), "svc:api",
			&domain.RequestContext{RequestID: fmt.Sprintf("req-%d", p.n), SourceIP: "2001:db8::7", UserAgent: "sink-test"})
		if err != nil {
			t.Fatal(err)
		}
		env.Seal(p.prev[keyID])
		p.prev[keyID] = env.Hash
		raw, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		p.ids = append(p.ids, env.ID.String())
		if p.pack <= 1 {
			ack, err := p.js.PublishAsync(env.Subject(), raw, jetstream.WithMsgID(env.ID.String()))
			if err != nil {
				t.Fatal(err)
			}
			acks = append(acks, ack)
			continue
		}
		if p.raws = append(p.raws, raw); len(p.raws) == p.pack || i == n-1 {
			m := nats.NewMsg(domain.PackSubject)
			m.Data = domain.Pack(p.raws)
			m.Header.Set(domain.HdrEvents, strconv.Itoa(len(p.raws)))
			ack, err := p.js.PublishMsgAsync(m, jetstream.WithMsgID(env.ID.String()))
			if err != nil {
				t.Fatal(err)
			}
			acks = append(acks, ack)
			p.raws = nil
		}
	}
	if len(p.raws) > 0 {
		t.Fatalf("publish %d events in packs of %d leaves some unsent", n, p.pack)
	}
	for _, a := range acks {
		select {
		case <-a.Ok():
		case err := <-a.Err():
			t.Fatalf("publish: %v", err)
		case <-ctx.Done():
			t.Fatal("publish: no ack")
		}
	}
}

func (p *publisher) published() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ids)
}

// runSink runs a sink until the test ends (or stop is called) and returns
// stop, which waits for Run to return.
func runSink(t testing.TB, s *chlog.Sink) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("sink Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// checkFor polls f until it returns nil, and fails the test with f's last
// error after total.
func checkFor(t testing.TB, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", total, err)
		}
		time.Sleep(every)
	}
}

// assertExactlyOnce checks the log against the published ids: every one is
// there, none more, and no read that follows the table's rules shows an
// event twice.
func assertExactlyOnce(t *testing.T, st *chlog.Store, want []string) (physical uint64) {
	t.Helper()
	ctx := context.Background()
	n, err := st.CountEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := n, uint64(len(want)); got != want {
		t.Errorf("CountEvents %d, want %d", got, want)
	}
	rows, err := st.Conn().Query(ctx, `SELECT event_id, count() FROM audit_log FINAL GROUP BY event_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]uint64{}
	for rows.Next() {
		var id string
		var c uint64
		if err := rows.Scan(&id, &c); err != nil {
			t.Fatal(err)
		}
		got[id] = c
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, id := range want {
		switch c := got[id]; c {
		case 1:
		case 0:
			t.Errorf("event %s is missing from the log", id)
		default:
			t.Errorf("event %s shows %d times with FINAL", id, c)
		}
		delete(got, id)
	}
	for id := range got {
		t.Errorf("event %s is in the log but was never published", id)
	}
	// The searches by key see each event once too.
	var listed int
	for k := range 5 {
		evs, err := st.KeyEvents(ctx, fmt.Sprintf("k_sink%d", k))
		if err != nil {
			t.Fatal(err)
		}
		listed += len(evs)
	}
	if listed != len(want) {
		t.Errorf("KeyEvents listed %d events, want %d", listed, len(want))
	}
	if err := st.Conn().QueryRow(ctx, `SELECT count() FROM audit_log`).Scan(&physical); err != nil {
		t.Fatal(err)
	}
	return physical
}

func waitCaughtUp(t testing.TB, st *chlog.Store, sink *chlog.Sink, want int) {
	t.Helper()
	ctx := context.Background()
	checkFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		n, err := st.CountEvents(ctx)
		if err != nil {
			return err
		}
		lag, err := sink.TotalLag(ctx)
		if err != nil {
			return err
		}
		if n != uint64(want) || lag != 0 {
			return fmt.Errorf("%d of %d events in the log, lag %d", n, want, lag)
		}
		return nil
	})
}

var fastSink = chlog.SinkConfig{
	Streams:    []string{domain.StreamKeys, domain.StreamUsage},
	BatchBytes: 64 << 10,
	BatchWait:  50 * time.Millisecond,
	AckWait:    2 * time.Second,
	MinBackoff: 20 * time.Millisecond,
	MaxBackoff: 200 * time.Millisecond,
}

func TestSinkCopiesEveryEventAndReportsLag(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := chlogtest.MustOpen(t)
	url := startJetStream(t)
	pub := newPublisher(connectJetStream(t, url))
	pub.publish(t, 250)

	// Lifecycle events of one key go to KEYS; the revocation carries no
	// owner of its own.
	js := connectJetStream(t, url)
	created, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), "k_sink0", domain.KeyCreated{Owner: "owner-k_sink0", Name: "Clé 🔑", Permissions: []string{"orders:read"}}, time.Now(), "admin", nil)
	created.Seal("")
	revoked, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), "k_sink0", domain.KeyRevoked{Reason: "leaked"}, time.Now(), "admin", nil)
	revoked.Seal(created.Hash)
	for _, env := range []domain.Envelope{created, revoked} {
		raw, _ := env.Marshal()
		if _, err := js.Publish(ctx, env.Subject(), raw, jetstream.WithMsgID(env.ID.String())); err != nil {
			t.Fatal(err)
		}
	}

	// The default streams include ALERTS, which this server does not have
	// (yet): the sink waits for it and copies the others meanwhile.
	cfg := fastSink
	cfg.Streams = nil
	sink := chlog.NewSink(js, st, cfg, chlogtest.Logger(t))
	lags, err := sink.Lag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(lags) != 2 {
		t.Errorf("Lag reported %d streams, want the 2 that exist: %+v", len(lags), lags)
	}
	for _, l := range lags {
		if want := map[string]uint64{domain.StreamKeys: 2, domain.StreamUsage: 250}[l.Stream]; l.Lag != want {
			t.Errorf("lag of %s before the sink ran: %d, want %d", l.Stream, l.Lag, want)
		}
	}
	runSink(t, sink)
	waitCaughtUp(t, st, sink, 252)
	assertExactlyOnce(t, st, append(pub.published(), created.ID.String(), revoked.ID.String()))

	r, err := st.Event(ctx, revoked.ID.String())
	if err != nil {
		t.Fatal(err)
	}
	if r.Stream != domain.StreamKeys || r.Seq != 2 || r.Owner != "owner-k_sink0" || r.Reason != "leaked" || r.Action != "revoked" {
		t.Errorf("revocation row: %+v", r)
	}
	var events uint64
	for _, s := range sink.Stats() {
		events += s.Events
	}
	if events != 252 {
		t.Errorf("Stats count %d events, want 252", events)
	}

	// A message that is no event does not stall the sink: it is stored
	// as invalid, at the time JetStream stored it, and the sink goes on.
	ack, err := js.Publish(ctx, "keyledger.usage._.denied", []byte("not an event"))
	if err != nil {
		t.Fatal(err)
	}
	pub.publish(t, 1)
	waitCaughtUp(t, st, sink, 254)
	bad, err := st.Event(ctx, fmt.Sprintf("invalid:%s:%d", domain.StreamUsage, ack.Sequence))
	if err != nil {
		t.Fatal(err)
	}
	if bad.Raw != "not an event" || bad.Type != "invalid" || time.Since(bad.Time) > time.Minute || time.Since(bad.Time) < 0 {
		t.Errorf("invalid message row: %+v", bad)
	}
}

// crashAfterInsert stores the first batch and then cuts the sink's
// JetStream connection before it can ack: the sink dies between insert and
// ack, the worst moment for exactly-once. A dead sink inserts nothing more.
type crashAfterInsert struct {
	db      chlog.Inserter
	crash   func()
	crashed atomic.Bool
	// mu serializes the sink's workers; inserted is written before
	// crashed is set and read only after.
	mu       sync.Mutex
	inserted []string
}

func (c *crashAfterInsert) Insert(ctx context.Context, rows []chlog.Row) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed.Load() {
		return errors.New("this sink is dead")
	}
	if err := c.db.Insert(ctx, rows); err != nil {
		return err
	}
	if c.inserted == nil {
		for _, r := range rows {
			c.inserted = append(c.inserted, r.EventID)
		}
		c.crashed.Store(true)
		c.crash()
		return errors.New("crashed after insert")
	}
	return nil
}

func TestSinkRedeliveryAfterCrashIsHarmless(t *testing.T) {
	t.Parallel()
	st := chlogtest.MustOpen(t)
	url := startJetStream(t)
	pub := newPublisher(connectJetStream(t, url))
	// Packs of 30 events: a redelivered pack is stored again whole, and
	// every event in it still shows once.
	pub.pack = 30
	pub.publish(t, 300)

	// The first sink has a connection of its own to lose.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js1, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fastSink
	cfg.Streams = []string{domain.StreamUsage}
	crasher := &crashAfterInsert{db: st, crash: nc.Close}
	stop1 := runSink(t, chlog.NewSink(js1, crasher, cfg, chlogtest.Logger(t)))
	checkFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if !crasher.crashed.Load() {
			return errors.New("the first sink has not inserted yet")
		}
		return nil
	})
	stop1()

	// A new sink on the same durable consumer gets the unacked batch
	// again once AckWait has passed, and inserts it again.
	second := &recordingInserter{db: st}
	sink := chlog.NewSink(connectJetStream(t, url), second, cfg, chlogtest.Logger(t))
	runSink(t, sink)
	waitCaughtUp(t, st, sink, 300)
	physical := assertExactlyOnce(t, st, pub.published())

	// Prove the batch really was stored twice; the table's row count
	// cannot, because a background merge may already have collapsed the
	// copies.
	twice := 0
	for _, id := range crasher.inserted {
		if second.has(id) {
			twice++
		}
	}
	if twice == 0 {
		t.Errorf("no event was inserted by both sinks: nothing was delivered twice, so this test showed nothing")
	}
	t.Logf("%d events inserted twice; %d rows in the table now; every read shows 300 events", twice, physical)
}

// recordingInserter remembers which events it inserted.
type recordingInserter struct {
	db  chlog.Inserter
	mu  sync.Mutex
	ids map[string]bool
}

func (r *recordingInserter) Insert(ctx context.Context, rows []chlog.Row) error {
	if err := r.db.Insert(ctx, rows); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = map[string]bool{}
	}
	for _, row := range rows {
		r.ids[row.EventID] = true
	}
	return nil
}

func (r *recordingInserter) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[id]
}

func TestSinkCatchesUpAfterClickHouseRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	ch := chlogtest.MustStartLocal(t, dir)
	st := chlogtest.MustOpenAt(t, ch.Addr())
	url := startJetStream(t)
	pub := newPublisher(connectJetStream(t, url))
	cfg := fastSink
	cfg.Streams = []string{domain.StreamUsage}
	sink := chlog.NewSink(connectJetStream(t, url), st, cfg, chlogtest.Logger(t))
	runSink(t, sink)

	pub.publish(t, 200)
	waitCaughtUp(t, st, sink, 200)

	// ClickHouse goes away mid-stream; events keep coming and wait in
	// JetStream.
	if err := ch.Stop(); err != nil {
		t.Fatal(err)
	}
	pub.publish(t, 200)
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		var failures uint64
		for _, s := range sink.Stats() {
			failures += s.Failures
		}
		lag, err := sink.TotalLag(ctx)
		if err != nil {
			return err
		}
		if failures == 0 || lag < 200 {
			return fmt.Errorf("sink failures %d, lag %d: the outage is not visible", failures, lag)
		}
		return nil
	})

	// It comes back on the same data and ports, while more events arrive.
	restarted, err := chlog.StartLocal(ctx, dir, chlogtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = restarted.Stop() })
	if got, want := restarted.Addr(), ch.Addr(); got != want {
		t.Fatalf("restarted ClickHouse listens on %s, want %s", got, want)
	}
	pub.publish(t, 200)
	waitCaughtUp(t, st, sink, 600)
	assertExactlyOnce(t, st, pub.published())
}
