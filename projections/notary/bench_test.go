package notary_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
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
