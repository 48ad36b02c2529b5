package alerts_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"slices"
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
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// t0 is the synthetic clock every rule test runs on. Windows and
// suppression follow event time, so a fixed instant keeps the tests
// independent of the wall clock.
var t0 = time.Date(2026, time.March, 2, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

const (
	day = 24 * time.Hour

	valid      = domain.OutcomeValid
	badSecret  = domain.OutcomeInvalidSecret
	notFound   = domain.OutcomeNotFound
	revoked    = domain.OutcomeRevoked
	disabled   = domain.OutcomeDisabled
	expired    = domain.OutcomeExpired
	notAllowed = domain.OutcomeIPNotAllowed
	noPerm     = domain.OutcomeInsufficientPermissions

	// sentinelIP presents the sentinel key; no test uses it otherwise.
	sentinelIP = "192.0.2.254"
)

// rig is the real path of an alert: usage events published to an embedded
// JetStream, the engine fed by a USAGE subscription, alerts stored on ALERTS
// and read back from there; with history, a ClickHouse log filled by the
// sink from the same streams.
type rig struct {
	t      *testing.T
	store  *eventstore.Store
	usage  *eventstore.UsagePublisher
	ch     *chlog.Store // nil without history
	pub    *countingPublisher
	engine *alerts.Engine
	tail   *alertTail

	// Set before start: hist replaces the rig's history (ch), and
	// observeErr takes the engine's errors, which otherwise fail the test.
	hist       alerts.History
	observeErr func(error)
	observed   atomic.Int64 // USAGE events the engine has taken

	mu       sync.Mutex
	events   map[string]bool // ids of every event published to USAGE
	nUsage   uint64
	consumed int // alerts already returned by settle
}

// newRig opens a rig without history.
func newRig(t *testing.T) *rig {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, err := eventstore.Open(ctx, eventstore.Config{DataDir: t.TempDir(), NoSync: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, store: store, pub: &countingPublisher{store: store}, events: map[string]bool{}}
	r.usage = eventstore.NewUsagePublisher(store, eventstore.UsageConfig{})
	t.Cleanup(func() {
		_ = r.usage.Close(context.Background())
		_ = store.Close()
	})
	r.tail = tailAlerts(t, store)
	return r
}

// newHistoryRig opens a rig whose history is a fresh database on the
// ClickHouse server at addr, filled by a running sink.
func newHistoryRig(t *testing.T, addr string) *rig {
	t.Helper()
	r := newRig(t)
	r.ch = chlogtest.MustOpenAt(t, addr)
	sink := chlog.NewSink(r.store.JetStream(), r.ch, chlog.SinkConfig{BatchWait: 20 * time.Millisecond}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sink.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// countingPublisher is the store's PublishAlert, its successes counted:
// settle compares the count with what ALERTS holds, so that a repeated
// alert the engine failed to suppress cannot hide behind JetStream's
// de-duplication (a duplicate is a success). Refused attempts are counted
// apart.
type countingPublisher struct {
	store   *eventstore.Store
	n       atomic.Int64 // sent and not refused (counted before the answer)
	acked   atomic.Int64 // acknowledged as stored (or as a duplicate)
	refused atomic.Int64
}

func (p *countingPublisher) PublishAlert(ctx context.Context, env domain.Envelope) (uint64, error) {
	// Counted before it is sent: an alert may reach a reader of ALERTS
	// before its publisher has the acknowledgement.
	p.n.Add(1)
	seq, err := p.store.PublishAlert(ctx, env)
	if err != nil {
		p.n.Add(-1)
		p.refused.Add(1)
	} else {
		p.acked.Add(1)
	}
	return seq, err
}

// start runs the engine on every USAGE event published from now on; what
// was published before is known to it only through its history.
func (r *rig) start(cfg alerts.Config) { r.startDropping(cfg, nil) }

// startDropping is start with a pipeline that loses the events whose
// stream sequence drop reports.
func (r *rig) startDropping(cfg alerts.Config, drop func(seq uint64) bool) {
	r.t.Helper()
	hist := r.hist // a nil *chlog.Store would be a non-nil History
	if hist == nil && r.ch != nil {
		hist = r.ch
	}
	r.engine = alerts.New(cfg, hist, r.pub, nil)
	last, err := r.store.LastSeq(context.Background(), domain.StreamUsage)
	if err != nil {
		r.t.Fatal(err)
	}
	t := r.t
	sub, err := r.store.Subscribe(context.Background(), domain.StreamUsage, last+1, func(env domain.Envelope) error {
		if drop != nil && drop(env.Seq) {
			return nil
		}
		err := r.engine.Observe(context.Background(), env)
		r.observed.Add(1)
		switch {
		case err != nil && r.observeErr != nil:
			r.observeErr(err)
		case err != nil:
			t.Errorf("observe %s #%d: %v", env.Stream, env.Seq, err)
		}
		return nil
	})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(sub.Stop)
}

// run runs the engine's retry loop until the test ends.
func (r *rig) run() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.engine.Run(ctx) }()
	r.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("engine run: %v", err)
		}
	})
}

// use publishes one verification of key from ip at a chosen time and
// returns the event's id: VALID is a use, any other code a denial.
func (r *rig) use(key, code, ip string, when time.Time) string {
	r.t.Helper()
	env := r.verification(key, code, ip, when)
	if err := r.usage.Publish(context.Background(), env); err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.nUsage++
	r.mu.Unlock()
	return env.ID.String()
}

// verification is the event of one verification, as use publishes it;
// tests that hand it to the engine directly (as from another stream's
// goroutine) call it alone.
func (r *rig) verification(key, code, ip string, when time.Time) domain.Envelope {
	r.t.Helper()
	var ev domain.Event = domain.KeyUsed{Code: code, Service: "svc"}
	if code != valid {
		d := domain.KeyDenied{Code: code, Service: "svc"}
		if code == domain.OutcomeMalformed || code == notFound || code == badSecret {
			d.TokenHash = domain.HashToken(key + "|" + ip)
		}
		ev = d
	}
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), key, ev, when, "svc", &domain.RequestContext{SourceIP: ip})
	if err != nil {
		r.t.Fatal(err)
	}
	env.Seal("")
	r.mu.Lock()
	r.events[env.ID.String()] = true
	r.mu.Unlock()
	return env
}

// waitHistory waits until the ClickHouse log holds every event published
// so far; the history tests start their engine only then.
func (r *rig) waitHistory() {
	r.t.Helper()
	r.mu.Lock()
	want := r.nUsage
	r.mu.Unlock()
	checkFor(r.t, 30*time.Second, 10*time.Millisecond, func() error {
		n, err := r.ch.CountEvents(context.Background())
		if err != nil {
			return err
		}
		if n != want {
			return fmt.Errorf("the log holds %d of %d events", n, want)
		}
		return nil
	})
}

// settle presents a revoked sentinel key from an address of its own, which
// raises exactly one alert, and waits for that alert on ALERTS. The engine
// handles USAGE in order and raises an event's alerts before it takes the
// next event, so every alert of what was published before the sentinel is
// stored before the sentinel's: settle returns exactly those (since the
// previous settle), checked for what holds of every alert.
func (r *rig) settle() []seen {
	r.t.Helper()
	k := newKey()
	r.use(k, revoked, sentinelIP, t0)
	incident := alerts.RuleDeadKey + ":" + k
	var all []seen
	var pos int
	checkFor(r.t, 30*time.Second, 5*time.Millisecond, func() error {
		all = r.tail.snapshot()
		for i := r.consumed; i < len(all); i++ {
			if all[i].alert.Incident == incident {
				pos = i
				return nil
			}
		}
		return fmt.Errorf("the sentinel's alert is not on ALERTS (%d alerts there)", len(all))
	})
	if err := r.tail.failure(); err != nil {
		r.t.Fatal(err)
	}
	if extra := all[pos+1:]; len(extra) > 0 {
		r.t.Fatalf("alerts after the sentinel's: %s", render(extra))
	}
	if n := r.pub.n.Load(); n != int64(len(all)) {
		r.t.Fatalf("the engine published %d alerts, ALERTS holds %d: some were dropped as duplicates", n, len(all))
	}
	out := all[r.consumed:pos]
	r.consumed = pos + 1
	for _, s := range append(slices.Clone(out), all[pos]) {
		r.checkAlert(s)
	}
	return out
}

// checkAlert checks what every alert must satisfy whatever its rule.
func (r *rig) checkAlert(s seen) {
	r.t.Helper()
	a := s.alert
	if want := "keyledger.alerts." + a.Rule + "." + a.Severity; s.subject != want {
		r.t.Errorf("alert %s/%s stored on %s, want %s", a.Rule, a.Severity, s.subject, want)
	}
	if !slices.Contains(alerts.Rules, a.Rule) || !slices.Contains(domain.Severities, a.Severity) {
		r.t.Errorf("alert with unknown rule or severity: %s/%s", a.Rule, a.Severity)
	}
	if s.env.Type != domain.TypeAlertRaised || s.env.Hash != s.env.ComputeHash() {
		r.t.Errorf("alert envelope %s: type %s, hash %s, want %s", s.env.ID, s.env.Type, s.env.Hash, s.env.ComputeHash())
	}
	key := domain.UnknownKeyID
	if len(a.KeyIDs) > 0 {
		key = a.KeyIDs[0]
	}
	if s.env.KeyID != key {
		r.t.Errorf("alert %s filed under key %q, want %q", a.Incident, s.env.KeyID, key)
	}
	if a.Summary == "" {
		r.t.Errorf("alert %s has no summary", a.Incident)
	}
	r.mu.Lock()
	for _, id := range a.Evidence {
		if !r.events[id] {
			r.t.Errorf("alert %s cites event %s, which was never published", a.Incident, id)
		}
	}
	r.mu.Unlock()
	for _, ip := range a.SourceIPs {
		// The log stores an alert's first source as its source_ip, which
		// searches by address parse; a network there breaks them.
		if _, err := netip.ParseAddr(ip); err != nil {
			r.t.Errorf("alert %s lists %q as a source address", a.Incident, ip)
		}
	}
	if a.Query != "" {
		if _, err := url.Parse(a.Query); err != nil || !strings.HasPrefix(a.Query, "/v1/logs?") {
			r.t.Errorf("alert %s query %q", a.Incident, a.Query)
		}
	}
}

// seen is one alert as read from ALERTS.
type seen struct {
	subject string
	env     domain.Envelope
	alert   domain.AlertRaised
}

// alertTail reads ALERTS from the beginning, as an alerting pipeline does.
type alertTail struct {
	mu   sync.Mutex
	got  []seen
	errs []string
}

func tailAlerts(t *testing.T, store *eventstore.Store) *alertTail {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := store.JetStream().OrderedConsumer(ctx, domain.StreamAlerts, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	a := &alertTail{}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		env, err := domain.UnmarshalEnvelope(m.Data())
		var ev domain.Event
		if err == nil {
			ev, err = env.Decode()
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if err != nil {
			a.errs = append(a.errs, fmt.Sprintf("%s: %v", m.Subject(), err))
			return
		}
		ar, ok := ev.(domain.AlertRaised)
		if !ok {
			a.errs = append(a.errs, fmt.Sprintf("%s: a %T on ALERTS", m.Subject(), ev))
			return
		}
		a.got = append(a.got, seen{subject: m.Subject(), env: env, alert: ar})
	}, jetstream.PullHeartbeat(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return a
}

func (a *alertTail) snapshot() []seen {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got)
}

func (a *alertTail) failure() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.errs) > 0 {
		return fmt.Errorf("unreadable alerts: %s", strings.Join(a.errs, "; "))
	}
	return nil
}

// want is an expected alert. Every field is compared, zero values included.
type want struct {
	rule, severity, incident string
	keys, ips, evidence      []string
	count                    int
	escalation               bool
	at                       time.Time // the alert's event time
	from, to                 time.Time // its window
}

// expect fails unless got are exactly the wanted alerts, in order.
func expect(t *testing.T, got []seen, wants ...want) {
	t.Helper()
	if len(got) != len(wants) {
		t.Fatalf("%d alerts, want %d:\n%s", len(got), len(wants), render(got))
	}
	for i, w := range wants {
		a, env := got[i].alert, got[i].env
		var diffs []string
		diff := func(field string, g, w any) {
			diffs = append(diffs, fmt.Sprintf("%s = %v, want %v", field, g, w))
		}
		if a.Rule != w.rule || a.Severity != w.severity {
			diff("rule/severity", a.Rule+"/"+a.Severity, w.rule+"/"+w.severity)
		}
		if a.Incident != w.incident {
			diff("incident", a.Incident, w.incident)
		}
		if !slices.Equal(a.KeyIDs, w.keys) {
			diff("key ids", a.KeyIDs, w.keys)
		}
		if !slices.Equal(a.SourceIPs, w.ips) {
			diff("source ips", a.SourceIPs, w.ips)
		}
		if !slices.Equal(a.Evidence, w.evidence) {
			diff("evidence", a.Evidence, w.evidence)
		}
		if a.Count != w.count {
			diff("count", a.Count, w.count)
		}
		if a.Escalation != w.escalation {
			diff("escalation", a.Escalation, w.escalation)
		}
		if !env.Time.Equal(w.at) {
			diff("time", env.Time, w.at)
		}
		if !a.WindowStart.Equal(w.from) || !a.WindowEnd.Equal(w.to) {
			diff("window", fmt.Sprint(a.WindowStart, " – ", a.WindowEnd), fmt.Sprint(w.from, " – ", w.to))
		}
		if len(diffs) > 0 {
			t.Errorf("alert %d (%s):\n\t%s", i, a.Incident, strings.Join(diffs, "\n\t"))
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

func render(ss []seen) string {
	var b strings.Builder
	for _, s := range ss {
		a := s.alert
		fmt.Fprintf(&b, "\t%s/%s %s esc=%t keys=%v ips=%v count=%d evidence=%d %q\n",
			a.Rule, a.Severity, a.Incident, a.Escalation, a.KeyIDs, a.SourceIPs, a.Count, len(a.Evidence), a.Summary)
	}
	return b.String()
}

// checkFor polls f every interval until it returns nil, failing the test
// with f's last error after total.
func checkFor(tb testing.TB, total, every time.Duration, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met after %s: %v", total, err)
		}
		time.Sleep(every)
	}
}

func newKey() string { return uuid.Must(uuid.NewV7()).String() }

// keyCreated is a key created at created with a lifetime in days.
func keyCreated(t *testing.T, created time.Time, days int) domain.Key {
	t.Helper()
	return apply(t, domain.Key{}, domain.CreateKey{Meta: domain.Meta{Actor: "alice"}, KeyID: newKey(), Owner: "alice",
		Name: "ci", Permissions: []string{"keys:read"}, LifetimeDays: days, SecretHash: domain.HashSecret(domain.Secret{1})}, created)
}

// apply decides cmd on k at now and folds the events it produces.
func apply(t *testing.T, k domain.Key, cmd domain.Command, now time.Time) domain.Key {
	t.Helper()
	envs, err := domain.Decide(k, cmd, now, func() uuid.UUID { return uuid.Must(uuid.NewV7()) })
	if err != nil {
		t.Fatalf("%T: %v", cmd, err)
	}
	for _, env := range envs {
		k = domain.Evolve(k, env)
	}
	return k
}
