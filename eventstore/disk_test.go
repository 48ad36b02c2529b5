package eventstore_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/eventstore/disktest"
)

// TestFullDiskRefusesThenRecovers: on a full disk appends and usage fail
// with EUNAVAILABLE and store nothing half; once space returns the store
// restarts JetStream by itself, its subscription goes on, and everything
// acknowledged before is still there.
func TestFullDiskRefusesThenRecovers(t *testing.T) {
	dir := disktest.SmallFS(t, 16<<20)
	s := MustOpenStore(t, func(c *eventstore.Config) { c.DataDir, c.Timeout = dir, 500*time.Millisecond })
	ctx := testCtx(t)
	keys := newCollector()
	sub, err := s.Subscribe(ctx, domain.StreamKeys, 0, keys.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	usage := eventstore.NewUsagePublisher(s, eventstore.UsageConfig{})
	defer usage.Close(ctx)

	acked := map[string]bool{} // key ids whose creation was acknowledged
	for range 5 {
		id := newKeyID()
		mustAppend(t, s, 0, created(t, id))
		acked[id] = true
	}
	keys.next(t, len(acked))

	filler := disktest.Fill(t, dir)
	// The first writes find the disk full; from then on every write is
	// refused at once, with the class callers answer 503 with.
	// A single append reaches the stream itself, whose write error then
	// stays; a two-key append is staged first and refused whole.
	var refused [][2]string // the two keys of each refused two-key append
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		one := newKeyID()
		if _, err := s.Append(ctx, 0, []domain.Envelope{created(t, one)}); err == nil {
			acked[one] = true
		} else if domain.ErrorCode(err) != domain.EUNAVAILABLE {
			t.Fatalf("append on a full disk: %v, want %s", err, domain.EUNAVAILABLE)
		}
		a, b := newKeyID(), newKeyID()
		_, err := s.AppendAll(ctx, []domain.Write{{Events: []domain.Envelope{created(t, a)}}, {Events: []domain.Envelope{created(t, b)}}})
		if err == nil {
			acked[a], acked[b] = true, true
			return errors.New("append still succeeds")
		}
		if domain.ErrorCode(err) != domain.EUNAVAILABLE {
			t.Fatalf("two-key append on a full disk: %v, want %s", err, domain.EUNAVAILABLE)
		}
		refused = append(refused, [2]string{a, b})
		if !errors.Is(err, eventstore.ErrNotWritable) {
			return fmt.Errorf("append refused, but not yet at once: %v", err)
		}
		return nil
	})
	if err := s.Writable(ctx); !errors.Is(err, eventstore.ErrNotWritable) {
		t.Fatalf("Writable on a full disk = %v, want ErrNotWritable", err)
	}
	start := time.Now()
	if err := usage.Publish(ctx, used(t, newKeyID())); !errors.Is(err, eventstore.ErrNotWritable) {
		t.Fatalf("usage on a full disk: %v, want ErrNotWritable", err)
	}
	t.Logf("usage refused in %s", time.Since(start))
	// Buffered (async) usage waits for the disk instead: none is lost.
	async := eventstore.NewUsagePublisher(s, eventstore.UsageConfig{Async: true})
	usageBefore := mustCount(t, s, domain.StreamUsage)
	const buffered = 50
	for range buffered {
		if err := async.Publish(ctx, used(t, newKeyID())); err != nil {
			t.Fatalf("async usage on a full disk: %v", err)
		}
	}

	// Space returns: the store recovers without being reopened.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	checkFor(t, 30*time.Second, 20*time.Millisecond, func() error { return s.Writable(ctx) })
	t.Logf("writable again %s after the space returned (%d restarts)", time.Since(start), s.DiskRestarts())
	if s.DiskRestarts() == 0 {
		t.Error("the store did not restart JetStream")
	}
	id := newKeyID()
	mustAppend(t, s, 0, created(t, id))
	acked[id] = true
	if err := usage.Publish(ctx, used(t, id)); err != nil {
		t.Fatalf("usage after recovery: %v", err)
	}
	if err := async.Close(ctx); err != nil {
		t.Fatalf("async usage after recovery: %v", err)
	}
	if got, want := mustCount(t, s, domain.StreamUsage), usageBefore+buffered+1; got != want {
		t.Errorf("USAGE holds %d events after recovery, want %d: buffered events were lost", got, want)
	}

	// Each refused append is stored whole or not at all, and the
	// subscription delivers everything stored.
	for id := range acked {
		envs, err := s.Load(ctx, domain.KindKey, id)
		if err != nil || len(envs) != 1 {
			t.Errorf("acknowledged key %s: %d events (err %v) after recovery, want 1", id, len(envs), err)
		}
	}
	for _, pair := range refused {
		var n [2]int
		for i, id := range pair {
			envs, err := s.Load(ctx, domain.KindKey, id)
			if err != nil {
				t.Fatal(err)
			}
			n[i] = len(envs)
		}
		if n[0] != n[1] {
			t.Errorf("refused append of %s and %s is half stored: %d and %d events", pair[0], pair[1], n[0], n[1])
		}
	}
	total := mustCount(t, s, domain.StreamKeys)
	if got := len(keys.next(t, int(total)-5)) + 5; uint64(got) != total {
		t.Fatalf("the subscription delivered %d of %d events", got, total)
	}
}

// TestStoreUsesTheWholeDisk: the embedded server's own limit (left to
// itself, 75% of the space free when JetStream starts) must not refuse
// writes with the disk far from full: the ledger may fill its disk up to
// the disk, and there the full-disk handling takes over.
func TestStoreUsesTheWholeDisk(t *testing.T) {
	const size = 32 << 20
	dir := disktest.SmallFS(t, size)
	// Half the disk is taken before the node starts: the server's own
	// limit would then be 75% of the other half.
	filler := filepath.Join(dir, "taken")
	if err := os.WriteFile(filler, make([]byte, size/2), 0o600); err != nil {
		t.Fatal(err)
	}
	s := MustOpenStore(t, func(c *eventstore.Config) { c.DataDir = dir })
	ctx := testCtx(t)
	p := eventstore.NewUsagePublisher(s, eventstore.UsageConfig{})
	defer p.Close(ctx)
	// About 13 MB of events: more than 75% of the 16 MB left, less than
	// all of it.
	k := newKeyID()
	var stored int
	for stored < 13<<20 {
		batch := make([]domain.Envelope, 200)
		for i := range batch {
			batch[i] = used(t, k)
		}
		if err := p.Publish(ctx, batch...); err != nil {
			t.Fatalf("publish with %d of %d bytes of the disk used: %v", stored+size/2, size, err)
		}
		raw, _ := batch[0].Marshal()
		stored += len(raw) * len(batch)
	}
}
