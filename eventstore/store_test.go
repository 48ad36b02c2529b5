package eventstore_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/nats-io/nats.go"
)

// TestConcurrentAppends is the classic: 20 commands race on one key at the
// same version; exactly one wins each round, the others see a conflict, and
// nothing is stored twice.
func TestConcurrentAppends(t *testing.T) {
	raceOneKey(t, MustOpenStore(t))
}

func raceOneKey(t *testing.T, s *eventstore.Store) {
	const racers, rounds = 20, 5
	k := newKeyID()
	version := mustAppend(t, s, 0, created(t, k))
	for round := range rounds {
		var (
			wg        sync.WaitGroup
			mu        sync.Mutex
			wins      []uint64
			conflicts int
		)
		for range racers {
			env := updated(t, k, "racer")
			wg.Add(1)
			go func() {
				defer wg.Done()
				seq, err := s.Append(testCtx(t), version, []domain.Envelope{env})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					wins = append(wins, seq)
				case isConflict(err):
					conflicts++
				default:
					t.Errorf("round %d: unexpected error %v", round, err)
				}
			}()
		}
		wg.Wait()
		if len(wins) != 1 || conflicts != racers-1 {
			t.Fatalf("round %d: %d wins, %d conflicts; want 1 and %d", round, len(wins), conflicts, racers-1)
		}
		version = wins[0]
	}
	events, err := s.Load(testCtx(t), domain.KindKey, k)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(events), rounds+1; got != want {
		t.Fatalf("key has %d events, want %d", got, want)
	}
	seen := map[string]bool{}
	for _, e := range events {
		id := rawMsg(t, s, domain.StreamKeys, e.Seq).Header.Get("Nats-Msg-Id")
		if seen[id] {
			t.Errorf("Msg-Id %s stored twice", id)
		}
		seen[id] = true
	}
	if got, want := events[len(events)-1].Seq, version; got != want {
		t.Errorf("last event at %d, want %d", got, want)
	}
}

// TestConcurrentAppendsManyKeys drives the group commit: appends on
// different keys share batches, and every caller gets the sequence of its
// own event.
func TestConcurrentAppendsManyKeys(t *testing.T) {
	s := MustOpenStore(t)
	const writers, perWriter = 16, 10
	type result struct {
		env domain.Envelope
		seq uint64
	}
	results := make(chan result, writers*perWriter*2)
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWriter {
				k := newKeyID()
				c := created(t, k)
				seq, err := s.Append(testCtx(t), 0, []domain.Envelope{c})
				if err != nil {
					t.Error(err)
					return
				}
				results <- result{c, seq}
				r, d := revoked(t, k), deleted(t, k)
				last, err := s.Append(testCtx(t), seq, []domain.Envelope{r, d})
				if err != nil {
					t.Error(err)
					return
				}
				results <- result{d, last}
			}
		}()
	}
	wg.Wait()
	close(results)
	n := 0
	for r := range results {
		n++
		got, err := domainEnvelopeAt(t, s, r.seq)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != r.env.ID {
			t.Fatalf("seq %d holds %s, its caller appended %s", r.seq, got.ID, r.env.ID)
		}
	}
	if got, want := mustCount(t, s, domain.StreamKeys), uint64(writers*perWriter*3); got != want {
		t.Errorf("stream holds %d messages, want %d", got, want)
	}
}

func domainEnvelopeAt(t *testing.T, s *eventstore.Store, seq uint64) (domain.Envelope, error) {
	return domain.UnmarshalEnvelope(rawMsg(t, s, domain.StreamKeys, seq).Data)
}

// TestRestart reopens a store on the same data directory: every event is
// still there, at the same sequence, byte for byte.
func TestRestart(t *testing.T) {
	dir := t.TempDir()
	open := func() *eventstore.Store {
		s, err := eventstore.Open(testCtx(t), eventstore.Config{DataDir: dir, Logger: testLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	k := newKeyID()
	seq := mustAppend(t, s, 0, created(t, k))
	seq = mustAppend(t, s, seq, updated(t, k, "x"))
	mustAppend(t, s, seq, revoked(t, k), deleted(t, k))
	p := NewUsage(t, s, eventstore.UsageConfig{})
	if err := p.Publish(testCtx(t), used(t, k)); err != nil {
		t.Fatal(err)
	}
	before, err := s.Load(testCtx(t), domain.KindKey, k)
	if err != nil {
		t.Fatal(err)
	}
	var raw [][]byte
	for _, e := range before {
		raw = append(raw, rawMsg(t, s, domain.StreamKeys, e.Seq).Data)
	}
	if err := p.Close(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open()
	defer s.Close()
	after, err := s.Load(testCtx(t), domain.KindKey, k)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("%d events after restart, want %d", len(after), len(before))
	}
	for i := range before {
		if after[i].Seq != before[i].Seq || after[i].ID != before[i].ID {
			t.Errorf("event %d: %s at %d after restart, was %s at %d", i, after[i].ID, after[i].Seq, before[i].ID, before[i].Seq)
		}
		if got := rawMsg(t, s, domain.StreamKeys, after[i].Seq).Data; !bytes.Equal(got, raw[i]) {
			t.Errorf("event %d bytes changed across restart", i)
		}
	}
	if got := mustCount(t, s, domain.StreamUsage); got != 1 {
		t.Errorf("usage stream holds %d after restart, want 1", got)
	}
	// Appends continue from the stored version.
	mustAppend(t, s, after[len(after)-1].Seq, updated(t, k, "after restart"))
}

// TestStreamSettings pins the ledger settings: nothing may ever discard,
// delete or purge an event.
func TestStreamSettings(t *testing.T) {
	// No listener, hence no credentials: the purge below reaches the
	// stream's own DenyPurge instead of the node's permissions.
	s := MustOpenStore(t)
	for _, name := range []string{domain.StreamKeys, domain.StreamUsage, domain.StreamAlerts} {
		st, err := s.JetStream().Stream(testCtx(t), name)
		if err != nil {
			t.Fatal(err)
		}
		c := st.CachedInfo().Config
		if c.MaxAge != 0 || c.MaxMsgs != -1 || c.MaxBytes != -1 || c.MaxMsgsPerSubject != -1 {
			t.Errorf("%s has limits: age %s msgs %d bytes %d per subject %d", name, c.MaxAge, c.MaxMsgs, c.MaxBytes, c.MaxMsgsPerSubject)
		}
		if !c.DenyDelete || !c.DenyPurge || c.Discard.String() != "DiscardNew" || c.Storage.String() != "File" {
			t.Errorf("%s: deny delete %v, deny purge %v, discard %s, storage %s", name, c.DenyDelete, c.DenyPurge, c.Discard, c.Storage)
		}
		if c.Duplicates == 0 || !c.AllowAtomicPublish {
			t.Errorf("%s: duplicates window %s, atomic publish %v", name, c.Duplicates, c.AllowAtomicPublish)
		}
		if err := st.Purge(testCtx(t)); err == nil {
			t.Errorf("%s accepted a purge", name)
		}
	}
	// Open is idempotent on an existing server.
	_, asNode := MustOpenListening(t)
	cfg := eventstore.Config{Logger: testLogger()}
	asNode(&cfg)
	again, err := eventstore.Open(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("second open: %v", err)
	}
	again.Close()
}

func TestSubscribeSkipsInvalidAndStopsOnError(t *testing.T) {
	s := MustOpenStore(t)
	k := newKeyID()
	// A foreign service publishes garbage to USAGE.
	if _, err := s.JetStream().Publish(testCtx(t), "keyledger.usage."+k+".used", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	p := NewUsage(t, s, eventstore.UsageConfig{})
	good := used(t, k)
	if err := p.Publish(testCtx(t), good); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("enough")
	var got []domain.Envelope
	sub, err := s.Subscribe(testCtx(t), domain.StreamUsage, 0, func(env domain.Envelope) error {
		got = append(got, env)
		return stop
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("subscription did not end")
	}
	if !errors.Is(sub.Err(), stop) {
		t.Errorf("Err = %v, want %v", sub.Err(), stop)
	}
	if len(got) != 1 || got[0].ID != good.ID || got[0].Seq != 2 || got[0].Stream != domain.StreamUsage {
		t.Errorf("delivered %+v, want only the valid event at seq 2", got)
	}
	if sub.Skipped() != 1 {
		t.Errorf("Skipped = %d, want 1", sub.Skipped())
	}
	sub.Stop() // Harmless after the end.
}

func TestSubscribeStopsWithContext(t *testing.T) {
	s := MustOpenStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := s.Subscribe(ctx, domain.StreamKeys, 0, func(domain.Envelope) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-sub.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("subscription outlived its context")
	}
	if _, err := s.Subscribe(testCtx(t), "NOPE", 0, func(domain.Envelope) error { return nil }); err == nil {
		t.Error("subscribe to a missing stream succeeded")
	}
}

func TestSnapshots(t *testing.T) {
	s := MustOpenStore(t)
	snaps := s.Snapshots()
	ctx := testCtx(t)
	if _, _, found, err := snaps.LoadSnapshot(ctx, "keystate"); err != nil || found {
		t.Fatalf("empty bucket: found %v, err %v", found, err)
	}
	big := bytes.Repeat([]byte("snapshot "), 100000) // several chunks
	if err := snaps.SaveSnapshot(ctx, "keystate", 42, big); err != nil {
		t.Fatal(err)
	}
	seq, data, found, err := snaps.LoadSnapshot(ctx, "keystate")
	if err != nil || !found || seq != 42 || !bytes.Equal(data, big) {
		t.Fatalf("load = %d, %d bytes, %v, %v", seq, len(data), found, err)
	}
	// A newer snapshot replaces the old one.
	if err := snaps.SaveSnapshot(ctx, "keystate", 43, []byte("v2")); err != nil {
		t.Fatal(err)
	}
	seq, data, _, err = snaps.LoadSnapshot(ctx, "keystate")
	if err != nil || seq != 43 || string(data) != "v2" {
		t.Fatalf("after overwrite: %d %q %v", seq, data, err)
	}
}

func TestCloseStopsAppends(t *testing.T) {
	s, err := eventstore.Open(testCtx(t), eventstore.Config{DataDir: t.TempDir(), Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(testCtx(t), 0, []domain.Envelope{created(t, newKeyID())}); !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("append after Close: %v, want ErrClosed", err)
	}
}

func TestCloseStopsSubscriptions(t *testing.T) {
	s, err := eventstore.Open(testCtx(t), eventstore.Config{DataDir: t.TempDir(), Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := s.Subscribe(testCtx(t), domain.StreamKeys, 0, func(domain.Envelope) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.Done():
	default:
		t.Fatal("subscription still running after Close")
	}
	if _, err := s.Subscribe(testCtx(t), domain.StreamKeys, 0, func(domain.Envelope) error { return nil }); err == nil {
		t.Error("subscribe after Close succeeded")
	}
}

// TestSubscribeMessagesDeliversEveryMessage: the message-level view gives
// each stored message once, valid or not, with its events as stored and
// decoded, and Subscribe over it still gives only the valid events.
func TestSubscribeMessagesDeliversEveryMessage(t *testing.T) {
	s := MustOpenStore(t)
	k := newKeyID()
	subj := "keyledger.usage." + k + ".used"
	js := s.JetStream()
	good1, good2 := used(t, k), used(t, k)
	raw1, err := good1.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	raw2, err := good2.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// 1: not an event. 2: a pack whose second event is not one. 3: a pack
	// that does not split (its count is wrong). 4: a valid event.
	if _, err := js.Publish(testCtx(t), subj, []byte("not json")); err != nil {
		t.Fatal(err)
	}
	pack := nats.NewMsg(domain.PackSubject)
	pack.Data = domain.Pack([][]byte{raw1, []byte(`{"id":1}`)})
	pack.Header.Set(domain.HdrEvents, "2")
	if _, err := js.PublishMsg(testCtx(t), pack); err != nil {
		t.Fatal(err)
	}
	bad := nats.NewMsg(domain.PackSubject)
	bad.Data = domain.Pack([][]byte{raw1, raw2})
	bad.Header.Set(domain.HdrEvents, "3")
	if _, err := js.PublishMsg(testCtx(t), bad); err != nil {
		t.Fatal(err)
	}
	p := NewUsage(t, s, eventstore.UsageConfig{})
	if err := p.Publish(testCtx(t), good2); err != nil {
		t.Fatal(err)
	}

	msgs := make(chan eventstore.StoredMessage, 10)
	sub, err := s.SubscribeMessages(testCtx(t), domain.StreamUsage, 0, func(m eventstore.StoredMessage) error {
		msgs <- m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	var got []eventstore.StoredMessage
	for len(got) < 4 {
		select {
		case m := <-msgs:
			got = append(got, m)
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d messages, want 4", len(got))
		}
	}
	for i, m := range got {
		if m.Seq != uint64(i+1) {
			t.Fatalf("message %d has seq %d", i, m.Seq)
		}
		if len(m.Events) != len(m.Raw) {
			t.Fatalf("seq %d: %d events for %d raw", m.Seq, len(m.Events), len(m.Raw))
		}
	}
	if m := got[0]; m.PackErr != nil || len(m.Raw) != 1 || string(m.Raw[0]) != "not json" || m.Err(0) == nil {
		t.Errorf("seq 1 = %+v, want one raw event that does not decode", m)
	}
	if m := got[1]; m.PackErr != nil || len(m.Raw) != 2 || m.Err(0) != nil || m.Err(1) == nil ||
		m.Events[0].ID != good1.ID || m.Events[0].Seq != 2 || m.Events[0].Index != 0 || m.Events[0].Stream != domain.StreamUsage {
		t.Errorf("seq 2 = %+v, want its first event decoded at index 0 and its second not", m)
	}
	if m := got[2]; m.PackErr == nil || len(m.Raw) != 1 || !bytes.Equal(m.Raw[0], bad.Data) || m.Err(0) == nil {
		t.Errorf("seq 3 = %+v, want a pack error and the whole message as one raw event", m)
	}
	if m := got[3]; m.PackErr != nil || len(m.Events) != 1 || m.Err(0) != nil || m.Events[0].ID != good2.ID || m.Pending != 0 {
		t.Errorf("seq 4 = %+v, want the valid event, the last one", m)
	}
	if sub.Skipped() != 3 {
		t.Errorf("Skipped = %d, want 3 (one per invalid message or event)", sub.Skipped())
	}

	// Subscribe over the same messages gives the two valid events only.
	events := newCollector()
	esub, err := s.Subscribe(testCtx(t), domain.StreamUsage, 0, events.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer esub.Stop()
	evs := events.next(t, 2)
	if evs[0].ID != good1.ID || evs[1].ID != good2.ID || evs[0].Seq != 2 || evs[1].Seq != 4 {
		t.Errorf("Subscribe delivered %v@%d, %v@%d; want %v@2, %v@4", evs[0].ID, evs[0].Seq, evs[1].ID, evs[1].Seq, good1.ID, good2.ID)
	}
	select {
	case env := <-events.ch:
		t.Errorf("Subscribe delivered a third event %+v", env)
	case <-time.After(200 * time.Millisecond):
	}
}
