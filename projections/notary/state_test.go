package notary

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/eventstore"
	"github.com/nats-io/nats.go/jetstream"
)

// openTestKVState opens the notary's state bucket on a fresh store.
func openTestKVState(ctx context.Context, t *testing.T) *kvState {
	t.Helper()
	s, err := eventstore.Open(ctx, eventstore.Config{DataDir: t.TempDir(), NoSync: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	kv, err := openKVState(ctx, s.JetStream())
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// TestAsyncPutsAreReadBackAndStoredBySync puts more values without waiting
// than the pipeline holds, from two goroutines: each is read back at once,
// the newest put of a key wins, and once Sync returns every one is in the
// bucket itself.
func TestAsyncPutsAreReadBackAndStoredBySync(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv := openTestKVState(ctx, t)
	const n = 3 * maxPending / 2
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			buf := make([]byte, 8)
			for i := range n {
				key := fmt.Sprintf("k.%d.%d", g, i%(n/2))
				copy(buf, fmt.Sprintf("%08d", i)) // reused: PutAsync copies
				if err := kv.PutAsync(ctx, key, buf); err != nil {
					t.Error(err)
					return
				}
				if v, err := kv.Get(ctx, key); err != nil || string(v) != fmt.Sprintf("%08d", i) {
					t.Errorf("Get(%s) right after its put = %q, %v", key, v, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := kv.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if len(kv.unacked) != 0 || len(kv.pending) != 0 {
		t.Fatalf("after Sync: %d unacknowledged, %d pending", len(kv.unacked), len(kv.pending))
	}
	for g := range 2 {
		for i := n / 2; i < n; i++ {
			key := fmt.Sprintf("k.%d.%d", g, i%(n/2))
			e, err := kv.kv.Get(ctx, key)
			if err != nil || string(e.Value()) != fmt.Sprintf("%08d", i) {
				t.Fatalf("stored %s: %v (want the newest put, %08d)", key, err, i)
			}
		}
	}
}

// TestChainShardSlots: each save writes a changed shard to the slot its
// stored state does not name; a failed save leaves the slots as they were
// until the stored state is read back.
func TestChainShardSlots(t *testing.T) {
	c := newChainSet()
	c.dirty[3] = true
	w := c.capture()
	if len(w) != 1 || w[0].shard != 3 || c.dirty[3] {
		t.Fatalf("capture: %+v, dirty %v", w, c.dirty[3])
	}
	slots, parts := c.place(w)
	if w[0].slot != '0' || slots[3] != '0' || slots[4] != '-' || parts != nil {
		t.Fatalf("first save of shard 3 in slot %c, slots %q, parts %v", w[0].slot, slots, parts)
	}
	c.saved(slots, parts)
	c.dirty[3] = true
	w = c.capture()
	if slots, _ = c.place(w); w[0].slot != '1' {
		t.Fatalf("second save of shard 3 in slot %c", w[0].slot)
	}
	// It fails: the shard is written again, and the slot stays unknown
	// until the stored state says.
	c.failed(w)
	if !c.dirty[3] || !c.uncertain {
		t.Fatal("a failed save leaves its shards clean or its slots certain")
	}
	c.resolve(savedState{Gen: "g", ChainSlots: slots}, "g") // the state was stored after all
	w = c.capture()
	if c.place(w); w[0].slot != '0' || c.uncertain {
		t.Fatalf("after a save whose state was stored, shard 3 goes to slot %c (uncertain %v)", w[0].slot, c.uncertain)
	}
}

// lostAck is the future of a put whose acknowledgement the connection
// dropped: it never resolves.
type lostAck struct{ jetstream.PubAckFuture }

func (lostAck) Ok() <-chan *jetstream.PubAck { return nil }
func (lostAck) Err() <-chan error            { return nil }

// TestSyncPutsAgainWhatIsNeverAcknowledged: a busy node's connection can
// drop acknowledgements (a slow consumer); Sync then puts those values
// again instead of waiting for ever, and a newer put of the same key is
// not overwritten by an older one put again.
func TestSyncPutsAgainWhatIsNeverAcknowledged(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv := openTestKVState(ctx, t)
	defer func(d time.Duration) { ackWait = d }(ackWait)
	ackWait = 50 * time.Millisecond
	if err := kv.PutAsync(ctx, "a", []byte("stored")); err != nil {
		t.Fatal(err)
	}
	kv.mu.Lock()
	kv.puts++
	kv.pending = append(kv.pending, pendingPut{f: lostAck{}, put: kv.puts, key: "lost", value: []byte("put again")})
	kv.unacked["lost"] = unacked{put: kv.puts, value: []byte("put again")}
	kv.puts++
	kv.pending = append(kv.pending, pendingPut{f: lostAck{}, put: kv.puts, key: "a", value: []byte("older")})
	kv.mu.Unlock()
	if err := kv.PutAsync(ctx, "a", []byte("newest")); err != nil {
		t.Fatal(err)
	}
	if err := kv.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"lost": "put again", "a": "newest"} {
		e, err := kv.kv.Get(ctx, key)
		if err != nil || string(e.Value()) != want {
			t.Fatalf("stored %s: %v, want %q", key, err, want)
		}
	}
}
