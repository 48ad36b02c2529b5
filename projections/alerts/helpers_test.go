package alerts_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/alerts"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// pipeline is the real path an alert takes: usage events published to an
// embedded JetStream, the engine fed by a USAGE subscription, alerts
// stored on ALERTS; with history, a ClickHouse log fed by the sink.
type pipeline struct {
	t         *testing.T
	store     *eventstore.Store
	usage     *eventstore.UsagePublisher
	ch        *chlog.Store
	engine    *alerts.Engine
	sub       *eventstore.Subscription
	published []string // event ids, in order
	observed  atomic.Uint64
}

// newPipelineB is a pipeline without history, running its engine, for
// benchmarks.
func newPipelineB(b *testing.B) *pipeline {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, err := eventstore.Open(ctx, eventstore.Config{DataDir: b.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	p := &pipeline{store: store, usage: eventstore.NewUsagePublisher(store, eventstore.UsageConfig{Async: true})}
	b.Cleanup(func() {
		if p.sub != nil {
			p.sub.Stop()
		}
		_ = p.usage.Close(context.Background())
		_ = store.Close()
	})
	p.engine = alerts.New(alerts.Config{}, nil, store, nil)
	p.sub, err = store.Subscribe(context.Background(), domain.StreamUsage, 1, func(env domain.Envelope) error {
		_ = p.engine.Observe(context.Background(), env)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func newPipeline(t *testing.T, withHistory bool) *pipeline {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, err := eventstore.Open(ctx, eventstore.Config{DataDir: t.TempDir(), NoSync: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	p := &pipeline{t: t, store: store, usage: eventstore.NewUsagePublisher(store, eventstore.UsageConfig{})}
	t.Cleanup(func() {
		if p.sub != nil {
			p.sub.Stop()
		}
		_ = p.usage.Close(context.Background())
		_ = store.Close()
	})
	if withHistory {
		p.ch = chlogtest.MustOpen(t)
		sink := chlog.NewSink(store.JetStream(), p.ch, chlog.SinkConfig{BatchWait: 10 * time.Millisecond, Streams: []string{domain.StreamUsage}}, nil)
		sctx, scancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = sink.Run(sctx) }()
		t.Cleanup(func() { scancel(); <-done })
	}
	return p
}

// start runs the engine on every USAGE event published from now on, so
// whatever was published before is known to it only through ClickHouse.
func (p *pipeline) start(cfg alerts.Config) {
	p.t.Helper()
	var hist alerts.History
	if p.ch != nil {
		hist = p.ch
	}
	p.engine = alerts.New(cfg, hist, p.store, nil)
	last, err := p.store.LastSeq(context.Background(), domain.StreamUsage)
	if err != nil {
		p.t.Fatal(err)
	}
	p.observed.Store(last)
	p.sub, err = p.store.Subscribe(context.Background(), domain.StreamUsage, last+1, func(env domain.Envelope) error {
		if err := p.engine.Observe(context.Background(), env); err != nil {
			p.t.Errorf("observe: %v", err)
		}
		p.observed.Store(env.Seq)
		return nil
	})
	if err != nil {
		p.t.Fatal(err)
	}
}

// use publishes a usage event: code VALID is a use, anything else a denial.
func (p *pipeline) use(key, code, ip string, at time.Time) string {
	p.t.Helper()
	var ev domain.Event = domain.KeyUsed{Code: code}
	if code != domain.OutcomeValid {
		ev = domain.KeyDenied{Code: code, TokenHash: domain.HashToken(key + ip)}
	}
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), key, ev, at, "svc", &domain.RequestContext{SourceIP: ip})
	if err != nil {
		p.t.Fatal(err)
	}
	env.Seal("")
	if err := p.usage.Publish(context.Background(), env); err != nil {
		p.t.Fatal(err)
	}
	p.published = append(p.published, env.ID.String())
	return env.ID.String()
}

// settle waits until the engine has observed every published event, or,
// before start, until ClickHouse holds every published event.
func (p *pipeline) settle() {
	p.t.Helper()
	last, err := p.store.LastSeq(context.Background(), domain.StreamUsage)
	if err != nil {
		p.t.Fatal(err)
	}
	checkFor(p.t, 30*time.Second, 10*time.Millisecond, func() error {
		if p.engine == nil {
			n, err := p.ch.CountEvents(context.Background())
			if err != nil || n != last {
				return fmt.Errorf("log has %d of %d events (%v)", n, last, err)
			}
			return nil
		}
		if got := p.observed.Load(); got < last {
			return fmt.Errorf("engine at %d of %d", got, last)
		}
		return nil
	})
}

// alerts returns every alert stored on ALERTS, in order.
func (p *pipeline) alerts() []domain.AlertRaised {
	p.t.Helper()
	p.settle()
	ctx := context.Background()
	n, err := p.store.Count(ctx, domain.StreamAlerts)
	if err != nil {
		p.t.Fatal(err)
	}
	s, err := p.store.JetStream().Stream(ctx, domain.StreamAlerts)
	if err != nil {
		p.t.Fatal(err)
	}
	var out []domain.AlertRaised
	for seq := uint64(1); seq <= n; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			p.t.Fatal(err)
		}
		env, err := domain.UnmarshalEnvelope(m.Data)
		if err != nil {
			p.t.Fatal(err)
		}
		if want := "keyledger.alerts."; !strings.HasPrefix(m.Subject, want) {
			p.t.Fatalf("alert on subject %s", m.Subject)
		}
		ev, err := env.Decode()
		if err != nil {
			p.t.Fatal(err)
		}
		a := ev.(domain.AlertRaised)
		if m.Subject != "keyledger.alerts."+a.Rule+"."+a.Severity {
			p.t.Fatalf("alert %s/%s on subject %s", a.Rule, a.Severity, m.Subject)
		}
		for _, id := range a.Evidence {
			if !slices.Contains(p.published, id) {
				p.t.Fatalf("alert %s cites event %s that was never published", a.Rule, id)
			}
		}
		out = append(out, a)
	}
	return out
}

// summary renders alerts as "rule/severity[+esc]" sorted, for comparison.
func summary(as []domain.AlertRaised) string {
	var s []string
	for _, a := range as {
		x := a.Rule + "/" + a.Severity
		if a.Escalation {
			x += "+esc"
		}
		s = append(s, x)
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

func expect(t *testing.T, got []domain.AlertRaised, want ...string) {
	t.Helper()
	sort.Strings(want)
	if g, w := summary(got), strings.Join(want, " "); g != w {
		t.Fatalf("alerts = [%s]\nwant     [%s]\n%+v", g, w, got)
	}
}

func checkFor(t *testing.T, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(every)
	}
}

func key() string { return uuid.Must(uuid.NewV7()).String() }
