package alerts_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/alerts"
)

// BenchmarkAlertLatency measures how long an incident takes to become an
// alert: from publishing the first event of a brute-force burst (ten wrong
// secrets from a fresh address, each stored durably as a verification
// waits for it) to its alert arriving on ALERTS, while a steady background
// of ordinary successful verifications flows through the same store and
// engine. One op is one incident. It reports
//
//	p50-ms, p99-ms         first event published → alert on ALERTS
//	detect-p50-ms, ...     tenth (threshold) event stored → alert on ALERTS
//	background-events/s    the background rate achieved
//
// The store fsyncs every write, as a production node does by default.
// The background rates are 0 and 2000 events/s unless
// KEYLEDGER_BENCH_RATES lists others; everything runs in this one process,
// so on a small machine a high rate measures the machine as much as the
// pipeline.
//
//	KEYLEDGER_BENCH_RATES=0,2000,10000 go test -run '^$' -bench BenchmarkAlertLatency -benchtime 300x ./projections/alerts/
func BenchmarkAlertLatency(b *testing.B) {
	rates := []int{0, 2000}
	if env := os.Getenv("KEYLEDGER_BENCH_RATES"); env != "" {
		rates = nil
		for _, f := range strings.Split(env, ",") {
			r, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || r < 0 {
				b.Fatalf("KEYLEDGER_BENCH_RATES=%s: %q is not a rate", env, f)
			}
			rates = append(rates, r)
		}
	}
	for _, rate := range rates {
		b.Run(fmt.Sprintf("background=%d/s", rate), func(b *testing.B) { benchAlertLatency(b, rate) })
	}
}

func benchAlertLatency(b *testing.B, rate int) {
	ctx := context.Background()
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	store, err := eventstore.Open(octx, eventstore.Config{DataDir: b.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	verify := eventstore.NewUsagePublisher(store, eventstore.UsageConfig{})
	defer verify.Close(ctx)
	background := eventstore.NewUsagePublisher(store, eventstore.UsageConfig{Async: true})
	defer background.Close(ctx)

	engine := alerts.New(alerts.Config{}, nil, store, nil)
	var observed atomic.Uint64
	sub, err := store.Subscribe(ctx, domain.StreamUsage, 1, func(env domain.Envelope) error {
		if err := engine.Observe(ctx, env); err != nil {
			b.Error(err)
		}
		observed.Store(env.Seq)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Stop()

	// Alerts are tailed from ALERTS as a subscriber sees them.
	var mu sync.Mutex
	waiting := map[string]chan time.Time{} // incident → its arrival
	var stray []string                     // alerts nobody injected
	cons, err := store.JetStream().OrderedConsumer(octx, domain.StreamAlerts, jetstream.OrderedConsumerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		now := time.Now()
		env, err := domain.UnmarshalEnvelope(m.Data())
		if err != nil {
			b.Error(err)
			return
		}
		ev, err := env.Decode()
		if err != nil {
			b.Error(err)
			return
		}
		a := ev.(domain.AlertRaised)
		mu.Lock()
		defer mu.Unlock()
		if ch, ok := waiting[a.Incident]; ok {
			ch <- now
			delete(waiting, a.Incident)
			return
		}
		stray = append(stray, a.Incident)
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()

	// The background: 2000 keys, each used from a few addresses of a /24
	// of its own, so that it is busy traffic no rule has reason to flag.
	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	if rate > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys := make([]string, 2000)
			for i := range keys {
				keys[i] = uuid.Must(uuid.NewV7()).String()
			}
			start := time.Now()
			batch := make([]domain.Envelope, 0, 100)
			for i := 0; ; {
				select {
				case <-stop:
					return
				default:
				}
				// Catch up with the rate in batches, then wait a little.
				due := int(time.Since(start).Seconds()*float64(rate)) - i
				if due <= 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				batch = batch[:0]
				for range min(due, cap(batch)) {
					k := i % len(keys)
					ip := fmt.Sprintf("10.%d.%d.%d", k/250, k%250, 1+(i/len(keys))%4)
					env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), keys[k], domain.KeyUsed{Code: domain.OutcomeValid, Service: "svc"},
						time.Now(), "svc", &domain.RequestContext{SourceIP: ip})
					env.Seal("")
					batch = append(batch, env)
					i++
				}
				if err := background.Publish(ctx, batch...); err != nil {
					return
				}
				sent.Add(int64(len(batch)))
			}
		}()
	}
	if rate > 0 {
		time.Sleep(300 * time.Millisecond) // reach the pace before measuring
	}

	first := make([]time.Duration, 0, b.N)
	detect := make([]time.Duration, 0, b.N)
	sent0, begin := sent.Load(), time.Now()
	b.ResetTimer()
	for i := range b.N {
		ip := fmt.Sprintf("203.%d.%d.%d", i/62500%250, i/250%250, i%250+1)
		incident := alerts.RuleBruteForce + ":" + ip
		arrived := make(chan time.Time, 1)
		mu.Lock()
		waiting[incident] = arrived
		mu.Unlock()
		k := uuid.Must(uuid.NewV7()).String()
		var start, last time.Time
		for j := range 10 {
			env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), k, domain.KeyDenied{Code: domain.OutcomeInvalidSecret, Service: "svc"},
				time.Now(), "svc", &domain.RequestContext{SourceIP: ip})
			env.Seal("")
			if j == 0 {
				start = time.Now()
			}
			if err := verify.Publish(ctx, env); err != nil {
				b.Fatal(err)
			}
			last = time.Now()
		}
		select {
		case got := <-arrived:
			first = append(first, got.Sub(start))
			detect = append(detect, got.Sub(last))
		case <-time.After(time.Minute):
			usage, _ := store.LastSeq(ctx, domain.StreamUsage)
			n, _ := store.Count(ctx, domain.StreamAlerts)
			b.Fatalf("no alert for %s after a minute: the engine is at USAGE #%d of %d, ALERTS holds %d", incident, observed.Load(), usage, n)
		}
	}
	b.StopTimer()
	elapsed, bg := time.Since(begin), sent.Load()-sent0
	close(stop)
	wg.Wait()

	mu.Lock()
	if len(stray) > 0 {
		b.Errorf("the background raised %d alerts: %s", len(stray), strings.Join(stray[:min(len(stray), 5)], ", "))
	}
	mu.Unlock()
	b.ReportMetric(pct(first, 50), "p50-ms")
	b.ReportMetric(pct(first, 99), "p99-ms")
	b.ReportMetric(pct(detect, 50), "detect-p50-ms")
	b.ReportMetric(pct(detect, 99), "detect-p99-ms")
	b.ReportMetric(float64(bg)/elapsed.Seconds(), "background-events/s")
}

// pct returns the p-th percentile of ds in milliseconds (nearest rank).
func pct(ds []time.Duration, p int) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	i = max(min(i, len(s)), 1)
	return float64(s[i-1].Microseconds()) / 1000
}

// BenchmarkObserve is the engine alone: one op is one event. Its cost must
// not grow with the traffic already seen, nor with the size of an incident
// that is being suppressed: a service key verified 1000 times a second from
// one address, a gateway address presenting 2000 keys (spraying, alerted
// once), an app key used from 5000 networks (alerted once) all stay as
// cheap on their millionth event as on their first.
//
//	go test -run '^$' -bench BenchmarkObserve -benchtime 1000000x ./projections/alerts/
func BenchmarkObserve(b *testing.B) {
	keys := make([]string, 2000)
	for i := range keys {
		keys[i] = uuid.Must(uuid.NewV7()).String()
	}
	// Each pattern gives the i-th event's key, address and time; max is
	// how many alerts it may raise per 30 minutes (1.8M events) of event
	// time, the shortest suppression window.
	for _, p := range []struct {
		name string
		max  int64
		next func(i int) (key, ip string, at time.Time)
	}{
		{"busy-key", 0, func(i int) (string, string, time.Time) {
			return keys[0], "10.0.0.1", t0.Add(time.Duration(i) * time.Millisecond)
		}},
		{"2000-keys", 0, func(i int) (string, string, time.Time) {
			k := i % len(keys)
			return keys[k], fmt.Sprintf("10.%d.%d.%d", k/250, k%250, 1+(i/len(keys))%4), t0.Add(time.Duration(i) * 100 * time.Microsecond)
		}},
		{"gateway-2000-keys", 1, func(i int) (string, string, time.Time) {
			return keys[i%len(keys)], "10.0.0.1", t0.Add(time.Duration(i) * time.Millisecond)
		}},
		{"app-key-5000-networks", 1, func(i int) (string, string, time.Time) {
			n := i % 5000
			return keys[0], fmt.Sprintf("10.%d.%d.1", n/250, n%250), t0.Add(time.Duration(i) * time.Millisecond)
		}},
	} {
		b.Run(p.name, func(b *testing.B) {
			pub := &countAlerts{}
			e := alerts.New(alerts.Config{}, nil, pub, nil)
			ctx := context.Background()
			env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), "k", domain.KeyUsed{Code: domain.OutcomeValid, Service: "svc"}, t0, "svc", nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				key, ip, when := p.next(i)
				env.ID, env.KeyID, env.Time, env.Context = uuid.Must(uuid.NewV7()), key, when, &domain.RequestContext{SourceIP: ip}
				if err := e.Observe(ctx, env); err != nil {
					b.Fatal(err)
				}
			}
			if n, most := pub.n.Load(), p.max*int64(1+b.N/1800000); n > most {
				b.Errorf("%d alerts, want at most %d", n, most)
			}
		})
	}
}

// countAlerts counts the alerts an engine raises and stores none.
type countAlerts struct{ n atomic.Int64 }

func (p *countAlerts) PublishAlert(context.Context, domain.Envelope) (uint64, error) {
	p.n.Add(1)
	return 0, nil
}
