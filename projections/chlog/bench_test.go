package chlog_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// publishChunk bounds how many async publishes are outstanding at once, so
// that the client's pending limit never stalls the benchmark.
const publishChunk = 2000

func publishN(b *testing.B, pub *publisher, n int) {
	for n > 0 {
		k := min(n, publishChunk)
		pub.publish(b, k)
		n -= k
	}
}

// BenchmarkPipeline measures, in one run against the same servers, the
// events/s of the three legs of the audit log: raw async publish to USAGE
// (with the stream's acks), a raw clickhouse-go batch insert of the
// same rows, and the whole path from publish to rows visible in ClickHouse
// through the sink.
func BenchmarkPipeline(b *testing.B) {
	ctx := context.Background()
	st := chlogtest.MustOpen(b)
	url := startJetStream(b)
	pub := newPublisher(connectJetStream(b, url))

	b.Run("publish", func(b *testing.B) {
		start := time.Now()
		publishN(b, pub, b.N)
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})

	b.Run("insert", func(b *testing.B) {
		rows := make([]chlog.Row, 1000)
		for i := range rows {
			env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), fmt.Sprintf("k_bench%d", i%50),
				domain.KeyUsed{Code: "VALID", Owner: "o", Permission: "orders:read", Service: "api"}, time.Now(), "svc",
				&domain.RequestContext{RequestID: "r", SourceIP: "192.0.2.1", UserAgent: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			env.Seal("")
			rows[i] = chlog.RowFromEnvelope(env, nil)
		}
		b.ResetTimer()
		start := time.Now()
		for done := 0; done < b.N; done += len(rows) {
			batch := rows[:min(len(rows), b.N-done)]
			if err := st.Insert(ctx, batch); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})

	b.Run("publish-to-rows", func(b *testing.B) {
		sink := chlog.NewSink(connectJetStream(b, url), st, chlog.SinkConfig{Streams: []string{domain.StreamUsage}}, nil)
		stop := runSink(b, sink)
		defer stop()
		// Catch up with what the publish leg stored, untimed.
		waitForCount(b, st, uint64(len(pub.published())))
		b.ResetTimer()
		start := time.Now()
		publishN(b, pub, b.N)
		waitForCount(b, st, uint64(len(pub.published())))
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})

	// catch-up is the sink alone: events already in JetStream (as after an
	// outage) drained into ClickHouse.
	b.Run("catch-up", func(b *testing.B) {
		waitForCount(b, st, uint64(len(pub.published())))
		publishN(b, pub, b.N)
		sink := chlog.NewSink(connectJetStream(b, url), st, chlog.SinkConfig{Streams: []string{domain.StreamUsage}}, nil)
		b.ResetTimer()
		start := time.Now()
		stop := runSink(b, sink)
		defer stop()
		waitForCount(b, st, uint64(len(pub.published())))
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})
}

func waitForCount(b *testing.B, st *chlog.Store, want uint64) {
	b.Helper()
	checkFor(b, 5*time.Minute, 50*time.Millisecond, func() error {
		// Only rows that came through JetStream have a sequence; the
		// insert leg's rows (seq 0) are left out.
		var n uint64
		err := st.Conn().QueryRow(context.Background(),
			`SELECT uniqExact(event_id) FROM audit_log WHERE stream = 'USAGE' AND seq > 0`).Scan(&n)
		if err != nil {
			return err
		}
		if n < want {
			return fmt.Errorf("%d of %d events in ClickHouse", n, want)
		}
		return nil
	})
}

// BenchmarkRowsFromMessage maps a pack of 100 verifications' usage events
// to their rows, as the sink does for every message of USAGE.
func BenchmarkRowsFromMessage(b *testing.B) {
	raws := make([][]byte, 100)
	for i := range raws {
		env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), fmt.Sprintf("k_bench%d", i%50),
			domain.KeyUsed{Code: "VALID", Owner: "o", Permission: "orders:read", Service: "api", CallerKey: "k_caller", CallerIP: "10.0.0.1"},
			time.Now(), "svc", &domain.RequestContext{RequestID: uuid.NewString(), SourceIP: "192.0.2.1", UserAgent: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		env.Seal("")
		if raws[i], err = env.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
	pack, count := domain.Pack(raws), strconv.Itoa(len(raws))
	b.ReportAllocs()
	for b.Loop() {
		if rows := chlog.RowsFromMessage(domain.StreamUsage, 1, count, pack); len(rows) != len(raws) {
			b.Fatalf("%d rows", len(rows))
		}
	}
}
