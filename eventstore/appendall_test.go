package eventstore_test

import (
	"testing"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// TestAppendAllIsAtomic: the writes of one command land together or not at
// all. A write on a second aggregate whose version check fails keeps the
// first write out of the stream too.
func TestAppendAllIsAtomic(t *testing.T) {
	s := MustOpenStore(t, func(c *eventstore.Config) { c.NoSync = true })
	ctx := testCtx(t)
	a, b := newKeyID(), newKeyID()
	seqB := mustAppend(t, s, 0, created(t, b))
	before := mustCount(t, s, domain.StreamKeys)

	// b is at seqB, not 0: the whole append is refused.
	_, err := s.AppendAll(ctx, []domain.Write{
		{Expected: 0, Events: []domain.Envelope{created(t, a)}},
		{Expected: 0, Events: []domain.Envelope{updated(t, b, "x")}},
	})
	if !isConflict(err) {
		t.Fatalf("append with a stale second write: err = %v, want version_conflict", err)
	}
	if got := mustCount(t, s, domain.StreamKeys); got != before {
		t.Fatalf("KEYS holds %d events after a refused append, want %d", got, before)
	}
	if envs, err := s.Load(ctx, domain.KindKey, a); err != nil || len(envs) != 0 {
		t.Fatalf("key a has %d events (err %v) after a refused append, want none", len(envs), err)
	}

	// With b's version right, both land, in order, one after the other.
	seq, err := s.AppendAll(ctx, []domain.Write{
		{Expected: 0, Events: []domain.Envelope{created(t, a)}},
		{Expected: seqB, Events: []domain.Envelope{updated(t, b, "x"), updated(t, b, "y")}},
	})
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	if got, want := mustCount(t, s, domain.StreamKeys), before+3; got != want {
		t.Fatalf("KEYS holds %d events, want %d", got, want)
	}
	if got, want := seq, seqB+3; got != want {
		t.Fatalf("last sequence %d, want %d", got, want)
	}

	// The same aggregate twice in one append is bad input.
	_, err = s.AppendAll(ctx, []domain.Write{
		{Expected: seq, Events: []domain.Envelope{updated(t, b, "z")}},
		{Expected: seq, Events: []domain.Envelope{updated(t, b, "w")}},
	})
	if domain.ErrorReason(err) != "bad_event" {
		t.Fatalf("two writes of one aggregate: err = %v, want bad_event", err)
	}
}

// TestAppendWhenTheStoreCannotWrite: an append the store cannot take is
// EUNAVAILABLE (answered 503), not an internal error, and stores nothing.
func TestAppendWhenTheStoreCannotWrite(t *testing.T) {
	s := MustOpenStore(t, func(c *eventstore.Config) { c.NoSync = true })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Append(testCtx(t), 0, []domain.Envelope{created(t, newKeyID())})
	if got := domain.ErrorCode(err); got != domain.EUNAVAILABLE {
		t.Fatalf("append on a closed store: %v (class %s), want %s", err, got, domain.EUNAVAILABLE)
	}
}
