package notary_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
	"github.com/keyledger/keyledger/projections/notary"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const marker = "tamper-marker-zz"

// logColumns are the columns of the ClickHouse log but raw.
const logColumns = "event_id, time, time_ms, stream, seq, type, kind, action, outcome, actor, key_id, owner, permissions, source_ip, user_agent, request_id, service, token_hash, name, comments, reason, schema_version, prev_hash, hash"

func open(t *testing.T, dir string) *eventstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := eventstore.Open(ctx, eventstore.Config{DataDir: dir, NoSync: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ledger writes keys with several events each and usage events, runs the
// notary over them with a checkpoint every 5 events, and returns the ids
// of the KEYS events in order and of the USAGE events.
type ledger struct {
	dir        string
	store      *eventstore.Store
	key        ed25519.PrivateKey
	keyEvents  []string
	usage      []string
	notary     *notary.Notary
	stopNotary func()
}

func newLedger(t *testing.T) *ledger {
	t.Helper()
	l := &ledger{dir: t.TempDir()}
	l.store = open(t, l.dir)
	t.Cleanup(func() { _ = l.store.Close() })
	ctx := context.Background()
	for i := range 4 {
		id := uuid.Must(uuid.NewV7()).String()
		var k domain.Key
		name := fmt.Sprintf("key %d", i)
		if i == 2 {
			name = marker
		}
		cmds := []domain.Command{
			domain.CreateKey{Meta: domain.Meta{Actor: "t"}, KeyID: id, Owner: "o", Name: name, SecretHash: domain.HashSecret(domain.Secret{byte(i)})},
			domain.UpdateKey{Meta: domain.Meta{Actor: "t"}, Comments: ptr("first")},
			domain.DisableKey{Meta: domain.Meta{Actor: "t"}},
			domain.RevokeKey{Meta: domain.Meta{Actor: "t"}, Reason: "done"},
		}
		for _, c := range cmds {
			envs, err := domain.Decide(k, c, time.Now(), uuid.New)
			if err != nil {
				t.Fatal(err)
			}
			seq, err := l.store.Append(ctx, k.Version, envs)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range envs {
				e.Seq = seq
				k = domain.Evolve(k, e)
				l.keyEvents = append(l.keyEvents, e.ID.String())
			}
		}
	}
	// USAGE holds packs of several events (a group commit), as a node
	// writes it: 1, 5 and 6 events, each event a leaf of the tree.
	pub := eventstore.NewUsagePublisher(l.store, eventstore.UsageConfig{})
	for _, n := range usagePacks {
		var pack []domain.Envelope
		for range n {
			i := len(l.usage)
			env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), uuid.NewString(), domain.KeyUsed{Code: domain.OutcomeValid}, time.Now(), "svc",
				&domain.RequestContext{SourceIP: fmt.Sprintf("10.0.0.%d", i)})
			env.Seal("")
			pack = append(pack, env)
			l.usage = append(l.usage, env.ID.String())
		}
		if err := pub.Publish(ctx, pack...); err != nil {
			t.Fatal(err)
		}
	}
	_ = pub.Close(ctx)
	var err error
	l.key, err = notary.LoadOrCreateKey(filepath.Join(l.dir, "notary.key"))
	if err != nil {
		t.Fatal(err)
	}
	l.notary = notary.New(l.store.JetStream(), l.store, l.key, notary.Config{Every: 5, Interval: time.Hour}, nil)
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = l.notary.Run(nctx) }()
	l.stopNotary = func() { cancel(); <-done }
	t.Cleanup(l.stopNotary)
	checkFor(t, func() error {
		if got := len(l.notary.Latest()); got < 2 {
			return fmt.Errorf("%d streams checkpointed", got)
		}
		for _, c := range l.notary.Latest() {
			want := uint64(len(l.keyEvents)) / 5 * 5
			if c.Stream == domain.StreamUsage {
				// A checkpoint falls between messages: after the pack
				// that brings 5 events or more since the last one.
				want = uint64(len(l.usage))
			}
			if c.Size != want {
				return fmt.Errorf("%s checkpointed at %d", c.Stream, c.Size)
			}
		}
		return nil
	})
	l.notary.Flush(ctx)
	return l
}

// usagePacks are the sizes of the ledger's USAGE messages.
var usagePacks = []int{1, 5, 6}

func ptr[T any](v T) *T { return &v }

func checkFor(t *testing.T, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func verify(t *testing.T, s *eventstore.Store, pub ed25519.PublicKey, rows func(context.Context, func(notary.Row) error) error) *notary.Failure {
	t.Helper()
	sum, f, err := notary.Verify(context.Background(), s.JetStream(), pub, notary.VerifyOptions{Rows: rows})
	if err != nil {
		t.Fatal(err)
	}
	if f == nil && (sum.Events[domain.StreamKeys] == 0 || sum.Checkpoints == 0) {
		t.Fatalf("verified nothing: %+v", sum)
	}
	return f
}

func wantFailure(t *testing.T, f *notary.Failure, eventID, why string) {
	t.Helper()
	if f == nil {
		t.Fatal("tampering went unnoticed")
	}
	if f.EventID != eventID || !strings.Contains(f.Why, why) {
		t.Fatalf("failure = %v\nwant event %s and %q", f, eventID, why)
	}
}

func TestUntouchedLogVerifiesAndProofsHold(t *testing.T) {
	l := newLedger(t)
	pub := l.key.Public().(ed25519.PublicKey)
	if f := verify(t, l.store, pub, nil); f != nil {
		t.Fatalf("clean log fails: %v", f)
	}
	// Every event has a proof against its stream's latest checkpoint; a
	// modified event does not verify against it.
	ctx := context.Background()
	for _, stream := range []string{domain.StreamKeys, domain.StreamUsage} {
		st, _ := l.store.JetStream().Stream(ctx, stream)
		for _, id := range append(append([]string{}, l.keyEvents...), l.usage...) {
			p, err := l.notary.ProofFor(id)
			if err != nil || p.Stream != stream {
				continue
			}
			m, err := st.GetMsg(ctx, p.Seq)
			if err != nil {
				t.Fatal(err)
			}
			event := eventIn(t, m, id)
			if err := notary.CheckProof(p, event, pub); err != nil {
				t.Fatalf("proof of %s: %v", id, err)
			}
			bad := bytes.Replace(event, []byte(`"actor":"`), []byte(`"actor":"x`), 1)
			if err := notary.CheckProof(p, bad, pub); err == nil {
				t.Fatalf("proof of a modified %s verifies", id)
			}
			other, _, _ := ed25519.GenerateKey(nil)
			if err := notary.CheckProof(p, event, other); err == nil {
				t.Fatal("proof verifies under another key")
			}
		}
	}
}

// eventIn returns the stored bytes of event id in message m (a pack, or
// a message of one event).
func eventIn(t *testing.T, m *jetstream.RawStreamMsg, id string) []byte {
	t.Helper()
	events, err := domain.Unpack(m.Header.Get(domain.HdrEvents), m.Data)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if env, err := domain.UnmarshalEnvelope(e); err == nil && env.ID.String() == id {
			return e
		}
	}
	t.Fatalf("message %d does not hold event %s", m.Sequence, id)
	return nil
}

// copyLedger rewrites history the way an operator with disk access could:
// every event copied, in order, into a fresh store, after transform has
// had its way with the list. A pack's events are copied as messages of one
// event each, which leaves the tree as it was: its leaves are events.
func copyLedger(t *testing.T, l *ledger, stream string, transform func([]msg) []msg) *eventstore.Store {
	t.Helper()
	ctx := context.Background()
	dst := open(t, t.TempDir())
	t.Cleanup(func() { _ = dst.Close() })
	for _, s := range []string{domain.StreamKeys, domain.StreamUsage, domain.StreamAlerts, domain.StreamCheckpoints} {
		var ms []msg
		err := notary.ReadMessages(ctx, l.store.JetStream(), s, 1, false, func(m notary.Message) error {
			for _, data := range m.Events {
				env, _ := domain.UnmarshalEnvelope(data)
				ms = append(ms, msg{subject: env.Subject(), data: bytes.Clone(data), id: env.ID.String()})
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if s == stream {
			ms = transform(ms)
		}
		for _, m := range ms {
			if _, err := dst.JetStream().Publish(ctx, m.subject, m.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dst
}

type msg struct {
	subject string
	data    []byte
	id      string
}

func TestDeletedEventIsCaught(t *testing.T) {
	l := newLedger(t)
	pub := l.key.Public().(ed25519.PublicKey)
	// A key's second event removed: the third no longer extends the chain.
	dst := copyLedger(t, l, domain.StreamKeys, func(ms []msg) []msg { return append(ms[:1:1], ms[2:]...) })
	wantFailure(t, verify(t, dst, pub, nil), l.keyEvents[2], "prev_hash")
	// A usage event removed: the tree no longer matches its checkpoint.
	dst = copyLedger(t, l, domain.StreamUsage, func(ms []msg) []msg { return append(ms[:3:3], ms[4:]...) })
	wantFailure(t, verify(t, dst, pub, nil), l.usage[6], "does not match the checkpoint")
}

func TestSwappedEventsAreCaught(t *testing.T) {
	l := newLedger(t)
	pub := l.key.Public().(ed25519.PublicKey)
	dst := copyLedger(t, l, domain.StreamKeys, func(ms []msg) []msg {
		ms[5], ms[6] = ms[6], ms[5]
		return ms
	})
	wantFailure(t, verify(t, dst, pub, nil), l.keyEvents[6], "prev_hash")
	dst = copyLedger(t, l, domain.StreamUsage, func(ms []msg) []msg {
		ms[1], ms[2] = ms[2], ms[1]
		return ms
	})
	wantFailure(t, verify(t, dst, pub, nil), l.usage[5], "does not match the checkpoint")
}

func TestForgedCheckpointIsCaught(t *testing.T) {
	l := newLedger(t)
	pub := l.key.Public().(ed25519.PublicKey)
	c := l.notary.Latest()[0]
	c.Root = hex.EncodeToString(make([]byte, 32))
	env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), c.Stream, c, time.Now(), "forger", nil)
	env.Seal("")
	if _, err := l.store.PublishCheckpoint(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	wantFailure(t, verify(t, l.store, pub, nil), env.ID.String(), "signature does not verify")
}

func TestByteFlippedInFileStoreIsCaught(t *testing.T) {
	l := newLedger(t)
	pub := l.key.Public().(ed25519.PublicKey)
	l.stopNotary()
	if err := l.store.Close(); err != nil {
		t.Fatal(err)
	}
	flipped := 0
	err := filepath.WalkDir(l.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if i := bytes.Index(b, []byte(marker)); i >= 0 {
			b[i+len(marker)-1] = 'y' // "…zz" becomes "…zy"
			flipped++
			return os.WriteFile(path, b, 0o600)
		}
		return nil
	})
	if err != nil || flipped == 0 {
		t.Fatalf("no stored copy of the marker to flip (%v)", err)
	}
	s := open(t, l.dir)
	defer s.Close()
	f := verify(t, s, pub, nil)
	if f == nil {
		t.Fatal("a flipped byte went unnoticed")
	}
	// The created event of the marked key is the 9th KEYS event. The file
	// store's own checksum may make the server drop the message instead:
	// then the gap at its sequence is what verify names.
	if f.Stream != domain.StreamKeys || f.Seq != 9 {
		t.Fatalf("failure = %v, want KEYS sequence 9 (%s)", f, l.keyEvents[8])
	}
	t.Logf("caught: %v", f)
}

func TestClickHouseRowsComparedWithJetStream(t *testing.T) {
	l := newLedger(t)
	pub := l.key.Public().(ed25519.PublicKey)
	ch := chlogtest.MustOpen(t)
	sink := chlog.NewSink(l.store.JetStream(), ch, chlog.SinkConfig{BatchWait: 10 * time.Millisecond, Streams: []string{domain.StreamKeys, domain.StreamUsage}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sink.Run(ctx) }()
	defer func() { cancel(); <-done }()
	want := uint64(len(l.keyEvents) + len(l.usage))
	checkFor(t, func() error {
		n, err := ch.CountEvents(context.Background())
		if err != nil || n != want {
			return fmt.Errorf("%d of %d rows (%v)", n, want, err)
		}
		return nil
	})
	rows := notary.LogRows(ch)
	if f := verify(t, l.store, pub, rows); f != nil {
		t.Fatalf("clean log and rows fail: %v", f)
	}
	cancel()
	<-done
	done = make(chan struct{})
	close(done)
	mutate := func(sql, id string) {
		t.Helper()
		if err := ch.Conn().Exec(context.Background(), sql, id); err != nil {
			t.Fatal(err)
		}
		checkFor(t, func() error {
			var pending uint64
			err := ch.Conn().QueryRow(context.Background(), `SELECT count() FROM system.mutations WHERE database = currentDatabase() AND is_done = 0`).Scan(&pending)
			if err != nil || pending > 0 {
				return fmt.Errorf("%d mutations pending (%v)", pending, err)
			}
			return nil
		})
	}
	edited := l.keyEvents[3]
	mutate(`ALTER TABLE audit_log UPDATE raw = replaceOne(raw, '"done"', '"oops"') WHERE event_id = ?`, edited)
	wantFailure(t, verify(t, l.store, pub, rows), edited, "differs")
	mutate(`ALTER TABLE audit_log UPDATE raw = replaceOne(raw, '"oops"', '"done"') WHERE event_id = ?`, edited)
	if f := verify(t, l.store, pub, rows); f != nil {
		t.Fatalf("restored row fails: %v", f)
	}
	// A column that searches show, edited while raw is left alone.
	renamed := l.keyEvents[8] // the created event of the marked key
	mutate(`ALTER TABLE audit_log UPDATE name = 'innocent' WHERE event_id = ?`, renamed)
	wantFailure(t, verify(t, l.store, pub, rows), renamed, "Name column")
	mutate(`ALTER TABLE audit_log UPDATE name = '`+marker+`' WHERE event_id = ?`, renamed)
	// A second, altered copy of a row: deduplication must not hide it.
	copied := l.usage[2]
	if err := ch.Conn().Exec(context.Background(), `INSERT INTO audit_log (`+logColumns+`, raw) SELECT `+logColumns+`, replaceOne(raw, '"svc"', '"evil"') FROM audit_log WHERE event_id = ?`, copied); err != nil {
		t.Fatal(err)
	}
	wantFailure(t, verify(t, l.store, pub, rows), copied, "differs")
	mutate(`ALTER TABLE audit_log DELETE WHERE event_id = ? AND position(raw, '"evil"') > 0`, copied)
	deleted := l.usage[7]
	mutate(`ALTER TABLE audit_log DELETE WHERE event_id = ?`, deleted)
	wantFailure(t, verify(t, l.store, pub, rows), deleted, "no row")
}

// TestLiveNotaryReportsABrokenChain publishes an event whose hash does not
// recompute: the running notary reports it, once, through OnBroken (which
// serve turns into the audit_chain_broken alert) and Broken (which fails
// /readyz).
func TestLiveNotaryReportsABrokenChain(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	reported := make(chan string, 4)
	key := ed25519.NewKeyFromSeed(make([]byte, 32))
	n := notary.New(s.JetStream(), s, key, notary.Config{Every: 1000, Interval: time.Hour,
		OnBroken: func(eventID, why string) { reported <- eventID }}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	defer func() { cancel(); <-done }()

	good, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), uuid.NewString(), domain.KeyUsed{Code: domain.OutcomeValid}, time.Now(), "svc", nil)
	good.Seal("")
	bad, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), uuid.NewString(), domain.KeyUsed{Code: domain.OutcomeValid}, time.Now(), "svc", nil)
	bad.Seal("")
	bad.Actor = "someone else" // changed after sealing: the hash no longer recomputes
	for _, e := range []domain.Envelope{good, bad, good} {
		data, _ := e.Marshal()
		if _, err := s.JetStream().Publish(context.Background(), e.Subject(), data); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case id := <-reported:
		if id != bad.ID.String() {
			t.Fatalf("reported %s, want %s", id, bad.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("broken event not reported")
	}
	if why := n.Broken(); !strings.Contains(why, bad.ID.String()) {
		t.Fatalf("Broken() = %q", why)
	}
	select {
	case id := <-reported:
		t.Fatalf("reported twice (%s)", id)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestRestartedNotaryChecksEarlierCheckpoints starts a second notary on a
// clean log, which answers proofs without signing again, and one on a log
// rewritten while no notary ran, which reports the rewrite through Broken.
func TestRestartedNotaryChecksEarlierCheckpoints(t *testing.T) {
	l := newLedger(t)
	l.stopNotary()
	ctx := context.Background()
	count := func(s *eventstore.Store) uint64 {
		n, err := s.Count(ctx, domain.StreamCheckpoints)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	run := func(s *eventstore.Store) *notary.Notary {
		n := notary.New(s.JetStream(), s, l.key, notary.Config{Every: 5, Interval: time.Hour}, nil)
		nctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = n.Run(nctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return n
	}

	before := count(l.store)
	again := run(l.store)
	checkFor(t, func() error {
		_, err := again.ProofFor(l.usage[len(l.usage)-1])
		return err
	})
	again.Flush(ctx)
	if got := count(l.store); got != before {
		t.Fatalf("restart signed again: %d checkpoints, had %d", got, before)
	}
	if why := again.Broken(); why != "" {
		t.Fatalf("clean log broken: %s", why)
	}

	dst := copyLedger(t, l, domain.StreamUsage, func(ms []msg) []msg {
		ms[1], ms[2] = ms[2], ms[1]
		return ms
	})
	rewritten := run(dst)
	checkFor(t, func() error {
		if why := rewritten.Broken(); !strings.Contains(why, "does not match the checkpoint") {
			return fmt.Errorf("Broken() = %q", why)
		}
		return nil
	})
}

// TestAlteredEventInsidePackIsCaught copies the ledger message for message,
// packs kept, with one event in the middle of a pack altered, and then with
// a pack whose count header lies: verify names the altered event, and the
// pack that does not split.
func TestAlteredEventInsidePackIsCaught(t *testing.T) {
	l := newLedger(t)
	pub := l.key.Public().(ed25519.PublicKey)
	ctx := context.Background()
	copyPacks := func(alter func(seq uint64, count string, data []byte) (string, []byte)) *eventstore.Store {
		dst := open(t, t.TempDir())
		t.Cleanup(func() { _ = dst.Close() })
		for _, s := range []string{domain.StreamKeys, domain.StreamUsage, domain.StreamAlerts, domain.StreamCheckpoints} {
			st, err := l.store.JetStream().Stream(ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			info, _ := st.Info(ctx)
			for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
				m, err := st.GetMsg(ctx, seq)
				if err != nil {
					t.Fatal(err)
				}
				count, data := m.Header.Get(domain.HdrEvents), m.Data
				if s == domain.StreamUsage {
					count, data = alter(seq, count, bytes.Clone(data))
				}
				out := nats.NewMsg(m.Subject)
				out.Data = data
				if count != "" {
					out.Header.Set(domain.HdrEvents, count)
				}
				if _, err := dst.JetStream().PublishMsg(ctx, out); err != nil {
					t.Fatal(err)
				}
			}
		}
		return dst
	}
	// Message 2 is the pack of 5 holding usage events 1 to 5; its third
	// event is l.usage[3].
	dst := copyPacks(func(seq uint64, count string, data []byte) (string, []byte) {
		if seq != 2 {
			return count, data
		}
		events, err := domain.Unpack(count, data)
		if err != nil || len(events) != 5 {
			t.Fatalf("message 2 holds %d events (%v), want the pack of 5", len(events), err)
		}
		events[2] = bytes.Replace(events[2], []byte(`"actor":"svc"`), []byte(`"actor":"svx"`), 1)
		return count, domain.Pack(events)
	})
	wantFailure(t, verify(t, dst, pub, nil), l.usage[3], "contents hash to")
	dst = copyPacks(func(seq uint64, count string, data []byte) (string, []byte) {
		if seq == 2 {
			return "4", data
		}
		return count, data
	})
	// A message that is not an event is quarantined, not applied; the
	// tree, which holds it as stored, still finds that it was altered.
	f := verify(t, dst, pub, nil)
	if f == nil || f.Stream != domain.StreamUsage || !strings.Contains(f.Why, "does not match the checkpoint") {
		t.Fatalf("a pack whose count lies: failure %v, want USAGE not matching its checkpoint", f)
	}
}
