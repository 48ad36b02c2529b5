package notary_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/notary"
	"github.com/nats-io/nats.go/jetstream"
)

const benchEvents = 1_000_000

// BenchmarkVerify measures audit verification of a million usage events
// (hash of every event, the Merkle tree, a checkpoint every 10,000 events)
// against a raw replay of the same stream in the same run: reading every
// stored message and nothing else. Run it alone (2 cores, about a minute):
//
//	go test -run '^$' -bench BenchmarkVerify -benchtime 1x ./projections/notary/
func BenchmarkVerify(b *testing.B) {
	ctx := context.Background()
	s := open(&testing.T{}, b.TempDir())
	defer s.Close()
	js := s.JetStream()
	start := time.Now()
	tree := notary.NewTree()
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	var pending []jetstream.PubAckFuture
	for i := range benchEvents {
		env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), fmt.Sprintf("k%d", i%5000), domain.KeyUsed{Code: domain.OutcomeValid},
			time.Now(), "svc", &domain.RequestContext{SourceIP: "10.0.0.1"})
		env.Seal("")
		data, _ := env.Marshal()
		f, err := js.PublishAsync(env.Subject(), data)
		if err != nil {
			b.Fatal(err)
		}
		pending = append(pending, f)
		tree.Append(data)
		if tree.Size()%10_000 == 0 {
			c := domain.CheckpointPublished{Stream: domain.StreamUsage, Size: tree.Size(), Root: fmt.Sprintf("%x", tree.Root()), At: time.Now().UTC().Truncate(time.Millisecond)}
			c.Sig = fmt.Sprintf("%x", ed25519.Sign(priv, c.SignedBytes()))
			cenv, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), domain.StreamUsage, c, c.At, "bench", nil)
			cenv.Seal("")
			cdata, _ := cenv.Marshal()
			if _, err := js.PublishAsync(cenv.Subject(), cdata); err != nil {
				b.Fatal(err)
			}
		}
		if len(pending) == 4000 {
			<-js.PublishAsyncComplete()
			for _, f := range pending {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					b.Fatal(err)
				}
			}
			pending = pending[:0]
		}
	}
	<-js.PublishAsyncComplete()
	b.Logf("stored %d events in %s", benchEvents, time.Since(start).Round(time.Millisecond))
	pub := priv.Public().(ed25519.PublicKey)

	var rawRate float64
	b.Run("raw-replay", func(b *testing.B) {
		for range b.N {
			n := 0
			t0 := time.Now()
			if err := notary.ReadStream(ctx, js, domain.StreamUsage, 1, false, func(uint64, []byte) error { n++; return nil }); err != nil {
				b.Fatal(err)
			}
			if n != benchEvents {
				b.Fatalf("replayed %d", n)
			}
			rawRate = float64(n) / time.Since(t0).Seconds()
			b.ReportMetric(rawRate, "events/s")
		}
	})
	b.Run("audit-verify", func(b *testing.B) {
		for range b.N {
			t0 := time.Now()
			sum, f, err := notary.Verify(ctx, js, pub, notary.VerifyOptions{})
			if err != nil || f != nil {
				b.Fatalf("verify: %v %v", err, f)
			}
			if sum.Events[domain.StreamUsage] != benchEvents || sum.Checkpoints != benchEvents/10_000 {
				b.Fatalf("verified %+v", sum)
			}
			rate := float64(benchEvents) / time.Since(t0).Seconds()
			b.ReportMetric(rate, "events/s")
			if rawRate > 0 {
				b.ReportMetric(rawRate/rate, "x-slower-than-raw")
			}
		}
	})
}

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// synthetic is the stored bytes of a synthetic event i: the trees see
// nothing but bytes.
func synthetic(buf []byte, i int) []byte {
	binary.BigEndian.PutUint64(buf, uint64(i))
	return buf
}

// BenchmarkStreamMemory reports the heap one stream's tree holds after
// folding n synthetic events, after a GC: the full tree (the notary's
// before, and audit verify's still) against the compact tree the notary
// keeps now, whose complete tiles go to the store. full-tree+seqs is the
// whole of what the notary kept per stream before: the tree and a map of
// event id to sequence. Run it alone (about 25 seconds on 2 cores):
//
//	go test -run '^$' -bench BenchmarkStreamMemory -benchtime 1x ./projections/notary/
func BenchmarkStreamMemory(b *testing.B) {
	for _, c := range []struct {
		name string
		n    int
		full bool
		seqs bool // and the id -> seq map the notary kept beside it
	}{{"full-tree/1M", 1_000_000, true, false}, {"full-tree+seqs/1M", 1_000_000, true, true},
		{"compact-tree/1M", 1_000_000, false, false}, {"compact-tree/10M", 10_000_000, false, false}} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				buf := bytes.Repeat([]byte{'e'}, 300)
				before := heapInUse()
				var keep any
				if c.full {
					t := notary.NewTree()
					var seqs map[uuid.UUID]uint64
					if c.seqs {
						seqs = map[uuid.UUID]uint64{}
					}
					for i := range c.n {
						t.Append(synthetic(buf, i))
						if seqs != nil {
							seqs[uuid.Must(uuid.NewV7())] = uint64(i + 1)
						}
					}
					keep = []any{t, seqs}
				} else {
					tiles := 0
					t := notary.NewCompactTree(func(uint, uint64, []byte) error { tiles++; return nil })
					for i := range c.n {
						_ = t.Append(synthetic(buf, i))
					}
					keep = t
				}
				held := heapInUse() - before
				runtime.KeepAlive(keep)
				b.ReportMetric(float64(held), "heap-B/stream")
				b.ReportMetric(float64(held)/float64(c.n), "heap-B/event")
			}
		})
	}
}

// BenchmarkNotaryFoldMemory folds n usage events through the notary's own
// fold (hash and chain checks, index and tile writes to a store that keeps
// nothing) and reports the heap the whole notary holds after a GC (its three
// streams, one of them fed).
//
//	go test -run '^$' -bench BenchmarkNotaryFoldMemory -benchtime 1x ./projections/notary/
func BenchmarkNotaryFoldMemory(b *testing.B) {
	env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), "k1", domain.KeyUsed{Code: domain.OutcomeValid}, time.Now(), "svc", &domain.RequestContext{SourceIP: "10.0.0.1"})
	env.Seal("")
	data, _ := env.Marshal()
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprint(n/1000, "k"), func(b *testing.B) {
			for range b.N {
				before := heapInUse()
				nt := notary.NewFolding()
				for i := range n {
					notary.Fold(nt, domain.StreamUsage, uint64(i+1), data)
				}
				held := heapInUse() - before
				runtime.KeepAlive(nt)
				if why := nt.Broken(); why != "" {
					b.Fatal(why)
				}
				b.ReportMetric(float64(held), "heap-B/notary")
				b.ReportMetric(float64(held)/float64(n), "heap-B/event")
			}
		})
	}
}

// BenchmarkFirstFold times the notary's first fold of a ledger it has no
// state of, on a server that fsyncs every write as a node's does: KEYS of
// nKeys keys with firstFoldKeysEvents events round-robin, and
// firstFoldUsage usage events in packs of 500. It reports events folded
// per second, until every stream is under a checkpoint of its last event.
//
//	go test -run '^$' -bench BenchmarkFirstFold -benchtime 1x ./projections/notary/
func BenchmarkFirstFold(b *testing.B) {
	const nKeys, nKeysEvents, nUsage = 5000, 50_000, 500_000
	ctx := context.Background()
	dir := b.TempDir()
	// The ledger is written without fsync, then the server reopened with it.
	s := open(&testing.T{}, dir)
	keys := make([]domain.Key, nKeys)
	var writes []domain.Write
	flush := func(idx []int) {
		last, err := s.AppendAll(ctx, writes)
		if err != nil {
			b.Fatal(err)
		}
		for j, w := range writes {
			e := w.Events[0]
			e.Seq = last - uint64(len(writes)-1-j)
			keys[idx[j]] = domain.Evolve(keys[idx[j]], e)
		}
		writes = writes[:0]
	}
	var idx []int
	for i := range nKeysEvents {
		k := i % nKeys
		var c domain.Command = domain.UpdateKey{Meta: domain.Meta{Actor: "t"}, Comments: ptr(fmt.Sprint(i))}
		if i < nKeys {
			c = domain.CreateKey{Meta: domain.Meta{Actor: "t"}, KeyID: uuid.Must(uuid.NewV7()).String(), Owner: "o", Name: "k", SecretHash: domain.HashSecret(domain.Secret{1})}
		}
		envs, err := domain.Decide(keys[k], c, time.Now(), uuid.New)
		if err != nil {
			b.Fatal(err)
		}
		writes = append(writes, domain.Write{Expected: keys[k].Version, Events: envs})
		idx = append(idx, k)
		if len(writes) == 1000 || i == nKeysEvents-1 {
			flush(idx)
			idx = idx[:0]
		}
	}
	pub := eventstore.NewUsagePublisher(s, eventstore.UsageConfig{MaxBatch: 500})
	pack := make([]domain.Envelope, 0, 500)
	for i := range nUsage {
		env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), keys[i%nKeys].ID, domain.KeyUsed{Code: domain.OutcomeValid}, time.Now(), "svc",
			&domain.RequestContext{SourceIP: "10.0.0.1"})
		env.Seal("")
		if pack = append(pack, env); len(pack) == cap(pack) {
			if err := pub.Publish(ctx, pack...); err != nil {
				b.Fatal(err)
			}
			pack = pack[:0]
		}
	}
	if err := pub.Close(ctx); err != nil {
		b.Fatal(err)
	}
	_ = s.Close()
	for range b.N {
		s, err := eventstore.Open(ctx, eventstore.Config{DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
		n := notary.New(s.JetStream(), s, key, notary.Config{}, nil)
		nctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		b.ResetTimer()
		start := time.Now()
		doneAt := map[string]time.Duration{}
		go func() { defer close(done); _ = n.Run(nctx) }()
		for {
			sizes := map[string]uint64{}
			for _, c := range n.Latest() {
				sizes[c.Stream] = c.Size
			}
			for st, want := range map[string]uint64{domain.StreamKeys: nKeysEvents, domain.StreamUsage: nUsage} {
				if _, ok := doneAt[st]; !ok && sizes[st] == want {
					doneAt[st] = time.Since(start)
				}
			}
			if len(doneAt) == 2 {
				break
			}
			if why := n.Broken(); why != "" {
				b.Fatal(why)
			}
			time.Sleep(50 * time.Millisecond)
		}
		el := time.Since(start)
		b.StopTimer()
		cancel()
		<-done
		b.ReportMetric(float64(nKeysEvents+nUsage)/el.Seconds(), "events/s")
		b.ReportMetric(doneAt[domain.StreamKeys].Seconds(), "keys-s")
		b.ReportMetric(doneAt[domain.StreamUsage].Seconds(), "usage-s")
		for name, stream := range map[string]string{"kv-writes": "KV_" + notary.Bucket, "checkpoints": domain.StreamCheckpoints} {
			st, err := s.JetStream().Stream(ctx, stream)
			if err != nil {
				b.Fatal(err)
			}
			info, err := st.Info(ctx)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(info.State.LastSeq), name)
		}
		_ = s.Close()
	}
}
