package alerts_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/alerts"
)

// BenchmarkAlertLatency measures the time from the first event of an
// incident (a brute-force burst from a fresh address) being published to
// its alert being stored on ALERTS, while a background load of ordinary
// successful verifications keeps the pipeline busy.
func BenchmarkAlertLatency(b *testing.B) {
	p := newPipelineB(b)
	ctx := context.Background()
	// Alerts are tailed from the stream as they land.
	arrived := sync.Map{} // incident -> time
	sub, err := p.store.Subscribe(ctx, domain.StreamAlerts, 1, func(env domain.Envelope) error {
		ev, err := env.Decode()
		if err == nil {
			arrived.LoadOrStore(ev.(domain.AlertRaised).Incident, time.Now())
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Stop()

	stop := make(chan struct{})
	var background atomic.Int64
	var wg sync.WaitGroup
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = uuid.Must(uuid.NewV7()).String()
	}
	// The background runs at a fixed rate, 4 × 500 events/s, an ordinary
	// load for one node; unthrottled it would only measure the backlog.
	const workers, perWorker = 4, 500
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second / perWorker)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				k := keys[(w*50+i)%len(keys)]
				ip := fmt.Sprintf("10.%d.%d.%d", w, (i/250)%250, i%250)
				env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), k, domain.KeyUsed{Code: domain.OutcomeValid}, time.Now(), "svc", &domain.RequestContext{SourceIP: ip})
				env.Seal("")
				if err := p.usage.Publish(ctx, env); err != nil {
					return
				}
				background.Add(1)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // let the background load reach its pace
	var lat []time.Duration
	start := time.Now()
	b.ResetTimer()
	for i := range b.N {
		ip := fmt.Sprintf("203.0.%d.%d", (i/250)%250, i%250+1)
		incident := alerts.RuleBruteForce + ":" + ip
		k := uuid.Must(uuid.NewV7()).String()
		first := time.Now()
		for range 10 {
			env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), k, domain.KeyDenied{Code: domain.OutcomeInvalidSecret}, time.Now(), "svc", &domain.RequestContext{SourceIP: ip})
			env.Seal("")
			if err := p.usage.Publish(ctx, env); err != nil {
				b.Fatal(err)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if v, ok := arrived.Load(incident); ok {
				lat = append(lat, v.(time.Time).Sub(first))
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("no alert for %s", incident)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	b.StopTimer()
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(background.Load())/elapsed.Seconds(), "background-events/s")
}
