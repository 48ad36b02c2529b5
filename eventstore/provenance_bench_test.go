package eventstore_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// BenchmarkSigning measures what provenance costs: signing and checking
// one typical lifecycle event, and an append or a usage publish with and
// without a writer key on the same embedded server (no fsync, so the
// signature is not hidden behind the disk). Compare the signed and
// unsigned legs of one run.
func BenchmarkSigning(b *testing.B) {
	key := mustKey(b)
	env := created(b, newKeyID())
	data, _ := env.Marshal()
	subject := env.Subject()
	b.Run("sign-event", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			domain.SignMessage(key, subject, data)
		}
	})
	trust := domain.Writers{}.Trust(writerOf(key), "node")
	sig := domain.EncodeSignature(domain.SignMessage(key, subject, data))
	b.Run("check-event", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := trust.CheckHeaders(subject, data, writerOf(key), sig, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, signed := range []bool{false, true} {
		name := map[bool]string{false: "unsigned", true: "signed"}[signed]
		b.Run(fmt.Sprintf("append-%s", name), func(b *testing.B) {
			s := MustOpenStore(b, func(c *eventstore.Config) {
				c.NoSync = true
				if signed {
					c.WriterKey = key
				}
			})
			ctx := testCtx(b)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Append(ctx, 0, []domain.Envelope{created(b, newKeyID())}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("usage-%s", name), func(b *testing.B) {
			s := MustOpenStore(b, func(c *eventstore.Config) {
				c.NoSync = true
				if signed {
					c.WriterKey = key
				}
			})
			p := eventstore.NewUsagePublisher(s, eventstore.UsageConfig{})
			defer p.Close(testCtx(b))
			ctx := testCtx(b)
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Publish(ctx, used(b, newKeyID())); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
