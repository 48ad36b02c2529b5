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

// fedMessage is what a node's USAGE subscription offers the notary.
func fedMessage(m eventstore.StoredMessage) notary.Message {
	nm := notary.Message{Seq: m.Seq, Events: m.Raw, Pending: m.Pending}
	if m.PackErr == nil {
		nm.Envelopes = m.Events
	}
	return nm
}

// TestFedNotaryFoldsWhatItIsOfferedAndReadsTheRest: a notary fed USAGE by
// the node's subscription folds the offered messages without reading them
// again, reads from the stream what was stored before it started and what
// its feed skipped, ignores messages offered twice or late, and signs a
// log that verifies, with proofs for the events it was fed.
func TestFedNotaryFoldsWhatItIsOfferedAndReadsTheRest(t *testing.T) {
	notary.SetFeedCheck(t, time.Hour) // no reads but those the feed calls for
	dir := t.TempDir()
	s := open(t, dir)
	t.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	pub := eventstore.NewUsagePublisher(s, eventstore.UsageConfig{})
	t.Cleanup(func() { _ = pub.Close(ctx) })
	ids := publishPacks(t, pub, 3, 4) // seq 1-3, before the notary starts

	key, err := notary.LoadOrCreateKey(filepath.Join(dir, "notary.key"))
	if err != nil {
		t.Fatal(err)
	}
	feed := notary.NewFeed()
	n := notary.New(s.JetStream(), s, key, notary.Config{Every: 5, Interval: time.Hour,
		Feeds: map[string]*notary.Feed{domain.StreamUsage: feed}}, nil)
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(nctx) }()
	t.Cleanup(func() { cancel(); <-done })

	// The node's subscription, which the test lets offer or withhold each
	// message.
	msgs := make(chan eventstore.StoredMessage, 100)
	sub, err := s.SubscribeMessages(ctx, domain.StreamUsage, 1, func(m eventstore.StoredMessage) error {
		msgs <- m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
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
	folded := func(want uint64) {
		t.Helper()
		checkFor(t, func() error {
			if got := notary.Read(n, domain.StreamUsage); got != want {
				return fmt.Errorf("folded %d messages of USAGE, want %d", got, want)
			}
			return nil
		})
	}

	// What was stored before the start is read from the stream; offering
	// it afterwards changes nothing.
	folded(3)
	if got := notary.SelfRead(n); got != 3 {
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
	if got := notary.SelfRead(n); got != 3 {
		t.Fatalf("read %d messages itself after being offered 10, want still 3", got)
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
	if got := notary.SelfRead(n); got != 3+4 {
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
	pubKey := key.Public().(ed25519.PublicKey)
	if _, f, err := notary.Verify(ctx, s.JetStream(), pubKey, notary.VerifyOptions{}); err != nil || f != nil {
		t.Fatalf("the log does not verify: %v %v", f, err)
	}
	st, err := s.JetStream().Stream(ctx, domain.StreamUsage)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{ids[0], ids[12], ids[len(ids)-3], ids[len(ids)-1]} { // read, fed, read after a gap, fed
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
	dir := t.TempDir()
	s := open(t, dir)
	t.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	key, err := notary.LoadOrCreateKey(filepath.Join(dir, "notary.key"))
	if err != nil {
		t.Fatal(err)
	}
	n := notary.New(s.JetStream(), s, key, notary.Config{Every: 5, Interval: time.Hour,
		Feeds: map[string]*notary.Feed{domain.StreamUsage: notary.NewFeed()}}, nil)
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(nctx) }()
	t.Cleanup(func() { cancel(); <-done })
	pub := eventstore.NewUsagePublisher(s, eventstore.UsageConfig{})
	t.Cleanup(func() { _ = pub.Close(ctx) })
	for want := uint64(1); want <= 3; want++ {
		publishPacks(t, pub, 1, 2)
		checkFor(t, func() error {
			if got := notary.Read(n, domain.StreamUsage); got != want {
				return fmt.Errorf("folded %d messages of USAGE, want %d", got, want)
			}
			return nil
		})
	}
	if got := notary.SelfRead(n); got != 3 {
		t.Errorf("read %d messages itself, want all 3", got)
	}
}

// TestFedNotaryCatchesAnAlteredEvent: an event whose hash does not
// recompute breaks the chain when the feed brings it, as when the notary
// reads it itself.
func TestFedNotaryCatchesAnAlteredEvent(t *testing.T) {
	notary.SetFeedCheck(t, time.Hour)
	dir := t.TempDir()
	s := open(t, dir)
	t.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	key, err := notary.LoadOrCreateKey(filepath.Join(dir, "notary.key"))
	if err != nil {
		t.Fatal(err)
	}
	feed := notary.NewFeed()
	n := notary.New(s.JetStream(), s, key, notary.Config{Every: 5, Interval: time.Hour,
		Feeds: map[string]*notary.Feed{domain.StreamUsage: feed}}, nil)
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(nctx) }()
	t.Cleanup(func() { cancel(); <-done })

	env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), uuid.NewString(), domain.KeyUsed{Code: domain.OutcomeValid}, time.Now(), "svc", nil)
	env.Seal("")
	env.Actor = "someone else" // after sealing: the hash no longer recomputes
	msgs := make(chan eventstore.StoredMessage, 2)
	sub, err := s.SubscribeMessages(ctx, domain.StreamUsage, 1, func(m eventstore.StoredMessage) error {
		msgs <- m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	pub := eventstore.NewUsagePublisher(s, eventstore.UsageConfig{})
	t.Cleanup(func() { _ = pub.Close(ctx) })
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
	checkFor(t, func() error {
		if got := notary.Read(n, domain.StreamUsage); got != 1 {
			return fmt.Errorf("folded %d messages of USAGE, want 1", got)
		}
		return nil
	})
	if n.Broken() != "" {
		t.Fatalf("broken by a good event: %s", n.Broken())
	}
	before := notary.SelfRead(n)
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
	if got := notary.SelfRead(n); got != before {
		t.Errorf("read %d messages itself, want %d: the feed brought the altered one", got, before)
	}
}
