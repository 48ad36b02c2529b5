package notary_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/notary"
)

// publishPacks stores n packs of size usage events each and returns their
// ids.
func publishPacks(t *testing.T, pub *eventstore.UsagePublisher, n, size int) []string {
	t.Helper()
	var ids []string
	for range n {
		var pack []domain.Envelope
		for range size {
			env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), uuid.NewString(), domain.KeyUsed{Code: domain.OutcomeValid}, time.Now(), "svc",
				&domain.RequestContext{SourceIP: "10.0.0.1"})
			env.Seal("")
			pack = append(pack, env)
			ids = append(ids, env.ID.String())
		}
		if err := pub.Publish(context.Background(), pack...); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// selfRead is how many messages of USAGE the notary read itself.
func selfRead(n *notary.Notary) uint64 { _, read := n.FeedCounts(); return read }

// fedMessage is what a node's USAGE subscription offers the notary.
func fedMessage(m eventstore.StoredMessage) notary.Message {
	nm := notary.Message{Seq: m.Seq, Events: m.Raw, Pending: m.Pending}
	if m.PackErr == nil {
		nm.Envelopes = m.Events
	}
	return nm
}

// fedNotary runs a notary whose USAGE is fed, over a fresh store, until
// the test ends.
type fedNotary struct {
	store *eventstore.Store
	key   ed25519.PrivateKey
	feed  *notary.Feed
	n     *notary.Notary
	pub   *eventstore.UsagePublisher
}

// newFedNotary opens the store and the usage publisher; before, if set,
// writes to the store before the notary starts.
func newFedNotary(t *testing.T, before func(*eventstore.UsagePublisher)) *fedNotary {
	t.Helper()
	dir := t.TempDir()
	f := &fedNotary{store: open(t, dir), feed: notary.NewFeed()}
	t.Cleanup(func() { _ = f.store.Close() })
	ctx := context.Background()
	f.pub = eventstore.NewUsagePublisher(f.store, eventstore.UsageConfig{})
	t.Cleanup(func() { _ = f.pub.Close(ctx) })
	if before != nil {
		before(f.pub)
	}
	var err error
	if f.key, err = notary.LoadOrCreateKey(filepath.Join(dir, "notary.key")); err != nil {
		t.Fatal(err)
	}
	f.n = notary.New(f.store.JetStream(), f.store, f.key, notary.Config{Every: 5, Interval: time.Hour,
		Feeds: map[string]*notary.Feed{domain.StreamUsage: f.feed}}, nil)
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = f.n.Run(nctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// subscribe starts the node's subscription to USAGE, whose messages the
// test offers to the feed or withholds.
func (f *fedNotary) subscribe(t *testing.T) <-chan eventstore.StoredMessage {
	t.Helper()
	msgs := make(chan eventstore.StoredMessage, 100)
	sub, err := f.store.SubscribeMessages(context.Background(), domain.StreamUsage, 1, func(m eventstore.StoredMessage) error {
		msgs <- m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Stop)
	return msgs
}

// folded waits until the notary has folded want messages of USAGE.
func (f *fedNotary) folded(t *testing.T, want uint64) {
	t.Helper()
	checkFor(t, func() error {
		if got := notary.Read(f.n, domain.StreamUsage); got != want {
			return fmt.Errorf("folded %d messages of USAGE, want %d", got, want)
		}
		return nil
	})
}

// TestFedNotaryFoldsWhatItIsOfferedAndReadsTheRest: a notary fed USAGE by
// the node's subscription folds the offered messages without reading them
// again, reads from the stream what was stored before it started and what
// its feed skipped, ignores messages offered twice or late, and signs a
// log that verifies, with proofs for the events it was fed.
func TestFedNotaryFoldsWhatItIsOfferedAndReadsTheRest(t *testing.T) {
	notary.SetFeedCheck(t, time.Hour) // no reads but those the feed calls for
	var ids []string
	f := newFedNotary(t, func(pub *eventstore.UsagePublisher) {
		ids = publishPacks(t, pub, 3, 4) // seq 1-3, before the notary starts
	})
	ctx, s, n, feed, pub := context.Background(), f.store, f.n, f.feed, f.pub
	msgs := f.subscribe(t)
	take := func(upTo uint64) []eventstore.StoredMessage {
		t.Helper()
		var got []eventstore.StoredMessage
		for {
			select {
			case m := <-msgs:
				got = append(got, m)
				if m.Seq == upTo {
					return got
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("subscription stopped before seq %d", upTo)
			}
		}
	}
	folded := func(want uint64) { t.Helper(); f.folded(t, want) }

	// What was stored before the start is read from the stream; offering
	// it afterwards changes nothing.
	folded(3)
	if got := selfRead(n); got != 3 {
		t.Fatalf("read %d messages itself at start, want 3", got)
	}
	for _, m := range take(3) {
		feed.Offer(fedMessage(m))
	}

	// Offered in order: folded without being read again.
	ids = append(ids, publishPacks(t, pub, 10, 3)...) // seq 4-13
	for _, m := range take(13) {
		feed.Offer(fedMessage(m))
		if m.Seq == 8 {
			feed.Offer(fedMessage(m)) // twice
		}
	}
	folded(13)
	if fed, read := n.FeedCounts(); fed != 10 || read != 3 {
		t.Fatalf("after 10 offered: %d fed and %d read itself, want 10 and still 3", fed, read)
	}

	// One withheld (as when the feed is full): the next offer is past it,
	// so the notary reads from the withheld one to the stream's end.
	ids = append(ids, publishPacks(t, pub, 5, 2)...) // seq 14-18
	for _, m := range take(18) {
		if m.Seq != 15 {
			feed.Offer(fedMessage(m))
		}
	}
	folded(18)
	if got := selfRead(n); got != 3+4 {
		t.Fatalf("read %d messages itself after one was withheld, want 7 (seq 15-18 too)", got)
	}

	n.Flush(ctx)
	latest := n.Latest()
	var usage domain.CheckpointPublished
	for _, c := range latest {
		if c.Stream == domain.StreamUsage {
			usage = c
		}
	}
	if usage.Size != uint64(len(ids)) {
		t.Fatalf("USAGE checkpoint covers %d events, want %d", usage.Size, len(ids))
	}
	pubKey := f.key.Public().(ed25519.PublicKey)
	if _, fail, err := notary.Verify(ctx, s.JetStream(), pubKey, notary.VerifyOptions{}); err != nil || fail != nil {
		t.Fatalf("the log does not verify: %v %v", fail, err)
	}
	st, err := s.JetStream().Stream(ctx, domain.StreamUsage)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{ids[0], ids[12], ids[len(ids)-1]} { // read at start, fed, read after the gap
		p, err := n.ProofFor(id)
		if err != nil {
			t.Fatalf("proof of %s: %v", id, err)
		}
		m, err := st.GetMsg(ctx, p.Seq)
		if err != nil {
			t.Fatal(err)
		}
		if err := notary.CheckProof(p, eventIn(t, m, id), pubKey); err != nil {
			t.Fatalf("proof of %s: %v", id, err)
		}
	}
}

// TestFedNotaryReadsWhatItIsNeverOffered: with nothing offered (the node's
// subscription has stopped), the notary reads the stream itself each
// feedCheck.
func TestFedNotaryReadsWhatItIsNeverOffered(t *testing.T) {
	notary.SetFeedCheck(t, 20*time.Millisecond)
	f := newFedNotary(t, nil)
	for want := uint64(1); want <= 3; want++ {
		publishPacks(t, f.pub, 1, 2)
		f.folded(t, want)
	}
	n := f.n
	if got := selfRead(n); got != 3 {
		t.Errorf("read %d messages itself, want all 3", got)
	}
}

// TestFedNotaryCatchesAnAlteredEvent: an event whose hash does not
// recompute breaks the chain when the feed brings it, as when the notary
// reads it itself.
func TestFedNotaryCatchesAnAlteredEvent(t *testing.T) {
	notary.SetFeedCheck(t, time.Hour)
	f := newFedNotary(t, nil)
	ctx, n, feed, pub := context.Background(), f.n, f.feed, f.pub
	env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), uuid.NewString(), domain.KeyUsed{Code: domain.OutcomeValid}, time.Now(), "svc", nil)
	env.Seal("")
	env.Actor = "someone else" // after sealing: the hash no longer recomputes
	msgs := f.subscribe(t)
	offer := func() {
		t.Helper()
		select {
		case m := <-msgs:
			feed.Offer(fedMessage(m))
		case <-time.After(10 * time.Second):
			t.Fatal("no message")
		}
	}
	// A good event first, folded from the feed or, if it was stored
	// before the notary's first read, by that read.
	publishPacks(t, pub, 1, 1)
	offer()
	f.folded(t, 1)
	if n.Broken() != "" {
		t.Fatalf("broken by a good event: %s", n.Broken())
	}
	before := selfRead(n)
	if err := pub.Publish(ctx, env); err != nil {
		t.Fatal(err)
	}
	offer()
	checkFor(t, func() error {
		if n.Broken() == "" {
			return fmt.Errorf("not broken after folding %d messages", notary.Read(n, domain.StreamUsage))
		}
		return nil
	})
	if !strings.Contains(n.Broken(), env.ID.String()) {
		t.Errorf("broken by %q, want the altered event %s", n.Broken(), env.ID)
	}
	if got := selfRead(n); got != before {
		t.Errorf("read %d messages itself, want %d: the feed brought the altered one", got, before)
	}
}
