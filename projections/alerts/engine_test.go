package alerts_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/alerts"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// fastRetry retries refused alerts and a failed history within
// milliseconds, so that the tests wait for the retry, not for its back-off.
var fastRetry = alerts.Config{RetryMin: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond}

// refuseAlerts makes the real ALERTS stream refuse every new message (its
// message limit set to what it holds, with Discard New), or, with refuse
// false, lifts the limit again.
func refuseAlerts(t *testing.T, store *eventstore.Store, refuse bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := store.JetStream()
	s, err := js.Stream(ctx, domain.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.Discard = jetstream.DiscardNew
	cfg.MaxMsgs = -1
	if refuse {
		if info.State.Msgs == 0 {
			t.Fatal("ALERTS is empty: a limit of 0 messages is no limit")
		}
		cfg.MaxMsgs = int64(info.State.Msgs)
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("update ALERTS: %v", err)
	}
}

func TestRefusedAlertIsStoredOnceALERTSAcceptsIt(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	var errs atomic.Int64
	r.observeErr = func(error) { errs.Add(1) }
	r.start(fastRetry)
	r.run()
	expect(t, r.settle()) // ALERTS now holds the sentinel's alert

	refuseAlerts(t, r.store, true)
	ip, k := "203.0.113.90", newKey()
	var ids []string
	for i := range 10 {
		ids = append(ids, r.use(k, badSecret, ip, at(time.Duration(i)*30*time.Second)))
	}
	// Refused, and retried: several attempts fail while the stream
	// refuses, each after its back-off.
	checkFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		if n := r.pub.refused.Load(); n < 3 {
			return fmt.Errorf("%d refused attempts", n)
		}
		return nil
	})
	// More denials of the same incident (short of a failure burst) while
	// its alert waits are not a second alert; a dead key presented is one
	// (it marks how far the engine has read).
	for i := 10; i < 13; i++ {
		r.use(k, badSecret, ip, at(time.Duration(i)*30*time.Second))
	}
	dead := newKey()
	deadID := r.use(dead, revoked, "203.0.113.91", at(8*time.Minute))
	checkFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		if n := r.observed.Load(); n < 15 {
			return fmt.Errorf("the engine took %d of 15 events", n)
		}
		return nil
	})
	if got, want := r.engine.Pending(), 2; got != want {
		t.Fatalf("%d alerts wait to be stored, want %d", got, want)
	}
	if errs.Load() == 0 {
		t.Error("Observe reported no refused alert")
	}
	if n := r.tail.snapshot(); len(n) != 1 {
		t.Fatalf("ALERTS took %d alerts while it refused them:\n%s", len(n)-1, render(n[1:]))
	}

	refuseAlerts(t, r.store, false)
	checkFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		if n := r.engine.Pending(); n != 0 {
			return fmt.Errorf("%d alerts still wait", n)
		}
		return nil
	})
	// Stored once each (settle compares what the engine published with
	// what ALERTS holds), and the incident is suppressed from then on.
	r.use(k, badSecret, ip, at(8*time.Minute))
	expect(t, r.settle(), want{
		rule: alerts.RuleBruteForce, severity: domain.SeverityHigh, incident: "brute_force:" + ip,
		ips: []string{ip}, evidence: ids, count: 10,
		at: at(270 * time.Second), from: at(0), to: at(270 * time.Second),
	}, want{
		rule: alerts.RuleDeadKey, severity: domain.SeverityMedium, incident: "dead_key_presented:" + dead,
		keys: []string{dead}, ips: []string{"203.0.113.91"}, evidence: []string{deadID}, count: 1,
		at: at(8 * time.Minute), from: at(8 * time.Minute), to: at(8 * time.Minute),
	})
	// The metrics' counts: every alert ALERTS holds was counted raised
	// once, and the denials that came while the brute force was queued or
	// stored were kept quiet.
	raised, suppressed := r.engine.Counts()
	if n := uint64(len(r.tail.snapshot())); raised != n || suppressed == 0 {
		t.Fatalf("counts: %d raised, %d suppressed; want %d raised (ALERTS holds them) and some suppressed", raised, suppressed, n)
	}
}

// stallProxy forwards TCP connections to a server; while stalled, it
// holds what clients send (so their requests go unanswered) until
// released.
type stallProxy struct {
	ln     net.Listener
	target string
	held   atomic.Int64 // bytes held back while stalled
	done   chan struct{}

	mu    sync.Mutex
	gate  chan struct{} // non-nil while stalled; closed on release
	conns []net.Conn
}

func startStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			wg.Go(func() { p.forward(up, c) })
			wg.Go(func() { _, _ = io.Copy(c, up); c.Close() })
		}
	})
	t.Cleanup(func() {
		close(p.done)
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *stallProxy) Addr() string { return p.ln.Addr().String() }

// forward copies from a client to the server, holding each read while the
// proxy is stalled.
func (p *stallProxy) forward(up, c net.Conn) {
	defer up.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate := p.gate
			p.mu.Unlock()
			if gate != nil {
				p.held.Add(int64(n))
				select {
				case <-gate:
				case <-p.done:
					return
				}
			}
			if _, err := up.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gate = make(chan struct{})
}

func (p *stallProxy) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gate != nil {
		close(p.gate)
		p.gate = nil
	}
}

// slowHistoryRig is a history rig whose engine asks the log through a
// proxy the test can stall; the sink writes to ClickHouse directly.
func slowHistoryRig(t *testing.T, addr string) (*rig, *stallProxy) {
	t.Helper()
	r := newHistoryRig(t, addr)
	p := startStallProxy(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := chlogtest.ConfigFor(addr, r.ch.Database())
	cfg.Addr = p.Addr()
	hist, err := chlog.Open(ctx, cfg, chlogtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hist.Close() })
	r.hist = hist
	return r, p
}

func TestSlowHistory(t *testing.T) {
	t.Parallel()
	addr := chlogtest.MustConnect(t)
	t.Run("a hung history query holds up only the event that asked", func(t *testing.T) {
		t.Parallel()
		r, proxy := slowHistoryRig(t, addr)
		cfg := fastRetry
		cfg.HistoryTimeout = 10 * time.Minute // longer than the test: the query hangs until released
		r.start(cfg)
		proxy.stall()
		// A key the engine has not seen: the dormant-key rule asks the log.
		r.use(newKey(), valid, "198.51.100.80", at(0))
		checkFor(t, 30*time.Second, 5*time.Millisecond, func() error {
			if proxy.held.Load() == 0 {
				return errors.New("no history query reached the proxy")
			}
			return nil
		})
		// While it hangs, the engine takes events of other keys from
		// another goroutine (as it does from KEYS), its ticks and the
		// verifier's findings, and raises their alerts.
		ctx := context.Background()
		ip, k := "203.0.113.80", newKey()
		var ids []string
		for i := range 10 {
			env := r.verification(k, badSecret, ip, at(time.Duration(i)*time.Second))
			ids = append(ids, env.ID.String())
			if err := r.engine.Observe(ctx, env); err != nil {
				t.Fatal(err)
			}
		}
		due := keyCreated(t, t0.Add(-90*day), 365)
		tick(t, r, t0, []domain.Key{due}, 0)
		chainAt := ids[0]
		if err := r.engine.ChainBroken(ctx, at(time.Minute), chainAt, "hash mismatch"); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 30*time.Second, 5*time.Millisecond, func() error {
			if n := len(r.tail.snapshot()); n != 3 {
				return fmt.Errorf("%d alerts on ALERTS, want 3", n)
			}
			return nil
		})
		if n := r.observed.Load(); n != 0 {
			t.Fatalf("the use that asked the history returned (%d events taken) before its query was answered", n)
		}
		proxy.release()
		expect(t, r.settle(), want{
			rule: alerts.RuleBruteForce, severity: domain.SeverityHigh, incident: "brute_force:" + ip,
			ips: []string{ip}, evidence: ids, count: 10, at: at(9 * time.Second), from: at(0), to: at(9 * time.Second),
		}, want{
			rule: alerts.RuleRotationDue, severity: domain.SeverityLow, incident: "rotation_due:" + due.ID,
			keys: []string{due.ID}, at: t0, from: due.SecretSetAt, to: t0,
		}, want{
			rule: alerts.RuleChainBroken, severity: domain.SeverityCritical, incident: "audit_chain_broken:" + chainAt,
			evidence: []string{chainAt}, at: at(time.Minute),
		})
	})
	t.Run("concurrent uses of a dormant key raise one alert", func(t *testing.T) {
		t.Parallel()
		r := newHistoryRig(t, addr)
		k := newKey()
		r.use(k, valid, "198.51.100.82", at(-45*day))
		r.waitHistory()
		r.start(alerts.Config{})
		// Eight uses at once, each asking the log while the others do:
		// the first to take the lock after its answer raises the alert,
		// and the rest find the key in use in memory.
		envs := make([]domain.Envelope, 8)
		for i := range envs {
			envs[i] = r.verification(k, valid, "198.51.100.82", at(time.Duration(i)*time.Second))
		}
		var wg sync.WaitGroup
		for _, env := range envs {
			wg.Go(func() {
				if err := r.engine.Observe(context.Background(), env); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		got := r.settle()
		if len(got) != 1 || got[0].alert.Rule != alerts.RuleDormantKey || !got[0].alert.WindowStart.Equal(at(-45*day)) {
			t.Fatalf("want one dormant-key alert over the 45 idle days, got:\n%s", render(got))
		}
	})
	t.Run("a history that never answers does not stop the stream", func(t *testing.T) {
		t.Parallel()
		r, proxy := slowHistoryRig(t, addr)
		// Dormant for 45 days, as only the log knows.
		dormant := newKey()
		r.use(dormant, valid, "198.51.100.81", at(-45*day))
		r.waitHistory()
		cfg := fastRetry
		cfg.HistoryTimeout = 200 * time.Millisecond
		r.start(cfg)
		proxy.stall()
		// The dormant key's use asks the log, which never answers: the
		// rule goes without (no alert), and the stream goes on.
		r.use(dormant, valid, "198.51.100.81", at(0))
		ip, k := "203.0.113.81", newKey()
		var ids []string
		for i := range 10 {
			// Uses of new keys in between would ask the log too.
			r.use(newKey(), valid, fmt.Sprintf("198.51.100.%d", 100+i), at(time.Duration(i)*time.Second))
			ids = append(ids, r.use(k, badSecret, ip, at(time.Duration(i)*time.Second)))
		}
		expect(t, r.settle(), want{
			rule: alerts.RuleBruteForce, severity: domain.SeverityHigh, incident: "brute_force:" + ip,
			ips: []string{ip}, evidence: ids, count: 10, at: at(9 * time.Second), from: at(0), to: at(9 * time.Second),
		})
		if proxy.held.Load() == 0 {
			t.Fatal("the engine never asked the history")
		}
	})
}

func TestTwoEnginesStoreEachAlertOnce(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	r.start(alerts.Config{})
	// A second node: its own engine and subscription, the same server.
	other := &countingPublisher{store: r.store}
	second := alerts.New(alerts.Config{}, nil, other, nil)
	last, err := r.store.LastSeq(context.Background(), domain.StreamUsage)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := r.store.Subscribe(context.Background(), domain.StreamUsage, last+1, func(env domain.Envelope) error {
		if err := second.Observe(context.Background(), env); err != nil {
			t.Errorf("second engine: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Stop)

	ip, k := "203.0.113.95", newKey()
	for i := range 10 {
		r.use(k, badSecret, ip, at(time.Duration(i)*time.Second))
	}
	r.use(newKey(), revoked, "203.0.113.96", at(time.Minute))
	// The same keys and sink lag, on clocks 20 seconds apart.
	keys := []domain.Key{keyCreated(t, t0.Add(-90*day), 365), keyCreated(t, t0.Add(-84*day), 90)}
	ticks := []struct {
		at  time.Duration
		lag uint64
	}{{0, 20000}, {5 * time.Minute, 20000}, {7*day + time.Minute, 20000}}
	for _, tk := range ticks {
		for i, e := range []*alerts.Engine{r.engine, second} {
			now := t0.Add(tk.at + time.Duration(i)*20*time.Second)
			if err := e.Tick(context.Background(), now, keys, tk.lag); err != nil {
				t.Fatal(err)
			}
		}
	}
	// brute force, dead key, rotation due, expiring soon and a stuck sink;
	// a week later a second rotation reminder and the sink still stuck.
	const alertsRaised = 7
	checkFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		if a, b := r.pub.acked.Load(), other.acked.Load(); a != alertsRaised || b != alertsRaised {
			return fmt.Errorf("the engines stored %d and %d alerts, want %d each", a, b, alertsRaised)
		}
		return nil
	})
	// Both engines had every alert acknowledged: ALERTS holds what it will.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := r.store.JetStream().Stream(ctx, domain.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != alertsRaised {
		got := r.tail.snapshot()
		t.Fatalf("ALERTS holds %d alerts, want %d:\n%s", info.State.Msgs, alertsRaised, render(got))
	}
	checkFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		if n := len(r.tail.snapshot()); n != alertsRaised {
			return fmt.Errorf("%d alerts read from ALERTS", n)
		}
		return nil
	})
	count := map[string]int{}
	for _, s := range r.tail.snapshot() {
		r.checkAlert(s)
		count[s.alert.Rule]++
	}
	wantCount := map[string]int{alerts.RuleBruteForce: 1, alerts.RuleDeadKey: 1, alerts.RuleRotationDue: 2,
		alerts.RuleExpiringSoon: 1, alerts.RuleSinkStuck: 2}
	for rule, n := range wantCount {
		if count[rule] != n {
			t.Errorf("%d %s alerts on ALERTS, want %d", count[rule], rule, n)
		}
	}
}
