package eventstore_test

import (
	"context"
	"testing"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/nats-io/nats.go"
)

// benchParallelism multiplies GOMAXPROCS for the parallel benchmarks: a
// service verifies many requests at once, and group commit only helps when
// callers overlap.
const benchParallelism = 16

// BenchmarkAppend appends one key.created event per operation, each to a
// new key, through the full Append path (version check, Msg-Id, group
// commit). Compare with BenchmarkRawPublish on the same server settings
// (fsync on every write).
func BenchmarkAppend(b *testing.B) {
	b.Run("sequential", func(b *testing.B) {
		s := MustOpenStore(b)
		envs := benchEnvelopes(b, b.N, created)
		ctx := context.Background()
		b.ResetTimer()
		for i := range b.N {
			if _, err := s.Append(ctx, 0, envs[i:i+1]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		s := MustOpenStore(b)
		envs := make(chan domain.Envelope, b.N)
		for _, e := range benchEnvelopes(b, b.N, created) {
			envs <- e
		}
		ctx := context.Background()
		b.SetParallelism(benchParallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Append(ctx, 0, []domain.Envelope{<-envs}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkRawPublish is the baseline: a plain js.Publish of the same bytes
// to the same subjects, no headers, one fsync per message.
func BenchmarkRawPublish(b *testing.B) {
	b.Run("sequential", func(b *testing.B) {
		s := MustOpenStore(b)
		msgs := benchMsgs(b, b.N, created, false)
		js, ctx := s.JetStream(), context.Background()
		b.ResetTimer()
		for _, m := range msgs {
			if _, err := js.Publish(ctx, m.Subject, m.Data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		s := MustOpenStore(b)
		msgs := make(chan *nats.Msg, b.N)
		for _, m := range benchMsgs(b, b.N, created, false) {
			msgs <- m
		}
		js, ctx := s.JetStream(), context.Background()
		b.SetParallelism(benchParallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m := <-msgs
				if _, err := js.Publish(ctx, m.Subject, m.Data); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkUsagePublishSync publishes one usage event per operation from
// many goroutines and waits until it is stored: group commit against a
// raw synchronous js.PublishMsg (with Msg-Id) per event.
func BenchmarkUsagePublishSync(b *testing.B) {
	b.Run("groupcommit", func(b *testing.B) {
		s := MustOpenStore(b)
		p := NewUsage(b, s, eventstore.UsageConfig{})
		envs := make(chan domain.Envelope, b.N)
		for _, e := range benchEnvelopes(b, b.N, used) {
			envs <- e
		}
		ctx := context.Background()
		b.SetParallelism(benchParallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := p.Publish(ctx, <-envs); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.StopTimer()
		st := p.Stats()
		b.ReportMetric(float64(st.Events)/float64(max(st.Batches, 1)), "events/batch")
	})
	b.Run("raw", func(b *testing.B) {
		s := MustOpenStore(b)
		msgs := make(chan *nats.Msg, b.N)
		for _, m := range benchMsgs(b, b.N, used, true) {
			msgs <- m
		}
		js, ctx := s.JetStream(), context.Background()
		b.SetParallelism(benchParallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := js.PublishMsg(ctx, <-msgs); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func benchEnvelopes(b *testing.B, n int, mk func(testing.TB, string) domain.Envelope) []domain.Envelope {
	envs := make([]domain.Envelope, n)
	for i := range envs {
		envs[i] = mk(b, newKeyID())
	}
	return envs
}

func benchMsgs(b *testing.B, n int, mk func(testing.TB, string) domain.Envelope, msgID bool) []*nats.Msg {
	msgs := make([]*nats.Msg, n)
	for i, env := range benchEnvelopes(b, n, mk) {
		data, err := env.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		m := nats.NewMsg(env.Subject())
		m.Data = data
		if msgID {
			m.Header.Set("Nats-Msg-Id", env.ID.String())
		}
		msgs[i] = m
	}
	return msgs
}
