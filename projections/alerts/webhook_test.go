package alerts_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/alerts"
)

// receiver is a webhook endpoint that fails its first attempts: fails
// answers 500, then one attempt hangs past the client's timeout.
type receiver struct {
	t      *testing.T
	secret []byte
	mu     sync.Mutex
	fails  int
	hang   bool
	// attempts counts every request; accepted maps idempotency keys to
	// how many times each was answered 2xx.
	attempts int
	accepted map[string]int
	times    []time.Time
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if err := alerts.VerifySignature(r.secret, req.Header.Get(alerts.HeaderTimestamp), body, req.Header.Get(alerts.HeaderSignature), time.Now(), 5*time.Minute); err != nil {
		r.t.Errorf("attempt with a bad signature: %v", err)
	}
	env, err := domain.UnmarshalEnvelope(body)
	if err != nil || env.ID.String() != req.Header.Get(alerts.HeaderIdemKey) {
		r.t.Errorf("body %s does not match idempotency key %s (%v)", body, req.Header.Get(alerts.HeaderIdemKey), err)
	}
	r.mu.Lock()
	r.attempts++
	r.times = append(r.times, time.Now())
	fail := r.fails > 0
	if fail {
		r.fails--
	}
	hang := !fail && r.hang
	if hang {
		r.hang = false
	}
	r.mu.Unlock()
	switch {
	case fail:
		http.Error(w, "down", http.StatusInternalServerError)
	case hang:
		time.Sleep(400 * time.Millisecond)
		http.Error(w, "too late", http.StatusServiceUnavailable)
	default:
		r.mu.Lock()
		r.accepted[req.Header.Get(alerts.HeaderIdemKey)]++
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}
}

func (r *receiver) acceptedIDs() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.accepted {
		out[k] = v
	}
	return out
}

func publishAlert(t *testing.T, p *pipeline, rule, severity string) string {
	t.Helper()
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), "_", domain.AlertRaised{Rule: rule, Severity: severity, Incident: rule + ":x", Summary: "test"}, time.Now(), "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	env.Seal("")
	if _, err := p.store.PublishAlert(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	return env.ID.String()
}

func runHooks(t *testing.T, p *pipeline, hooks []alerts.WebhookConfig) (*alerts.Webhooks, func()) {
	w := alerts.NewWebhooks(p.store.JetStream(), hooks, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return w, stop
}

func TestWebhookDeliveryRetriesAndSurvivesRestart(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, false)
	rcv := &receiver{t: t, secret: []byte("s3cret"), fails: 3, hang: true, accepted: map[string]int{}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	hook := alerts.WebhookConfig{URL: srv.URL + "/hook?token=abc", Secret: rcv.secret, Timeout: 200 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	first := publishAlert(t, p, alerts.RuleBruteForce, domain.SeverityHigh)
	w, stop := runHooks(t, p, []alerts.WebhookConfig{hook})
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if rcv.acceptedIDs()[first] == 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	stop()
	rcv.mu.Lock()
	attempts, times := rcv.attempts, append([]time.Time(nil), rcv.times...)
	rcv.mu.Unlock()
	if attempts != 5 { // three 500s, one timeout, one success
		t.Fatalf("%d attempts, want 5", attempts)
	}
	for i := 2; i < len(times)-1; i++ {
		// Back-off grows: each wait is at least the one before.
		if times[i+1].Sub(times[i]) < times[i].Sub(times[i-1])-15*time.Millisecond {
			t.Fatalf("back-off shrank: %v", times)
		}
	}
	if s := w.Stats(context.Background()); s.Delivered != 1 || s.FailedAttempts != 4 {
		t.Fatalf("stats = %+v", s)
	}
	// Alerts raised while no deliverer runs wait in JetStream; a new one
	// on the same receiver picks up where the last stopped.
	more := []string{publishAlert(t, p, alerts.RuleDeadKey, domain.SeverityMedium), publishAlert(t, p, alerts.RuleSinkStuck, domain.SeverityCritical)}
	runHooks(t, p, []alerts.WebhookConfig{hook})
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		got := rcv.acceptedIDs()
		for _, id := range more {
			if got[id] == 0 {
				return context.DeadlineExceeded
			}
		}
		return nil
	})
	for id, n := range rcv.acceptedIDs() {
		if n != 1 {
			t.Fatalf("alert %s accepted %d times", id, n)
		}
	}
}

func TestWebhookFilters(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, false)
	rcv := &receiver{t: t, secret: []byte("k"), accepted: map[string]int{}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	low := publishAlert(t, p, alerts.RuleRotationDue, domain.SeverityLow)
	otherRule := publishAlert(t, p, alerts.RuleNewSource, domain.SeverityCritical)
	want := publishAlert(t, p, alerts.RuleBruteForce, domain.SeverityHigh)
	w, _ := runHooks(t, p, []alerts.WebhookConfig{{URL: srv.URL, Secret: rcv.secret, MinSeverity: domain.SeverityHigh,
		Rules: []string{alerts.RuleBruteForce, alerts.RuleRotationDue}, MinBackoff: 10 * time.Millisecond}})
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if rcv.acceptedIDs()[want] == 0 || w.Stats(context.Background()).Pending != 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	got := rcv.acceptedIDs()
	if got[low] != 0 || got[otherRule] != 0 || len(got) != 1 {
		t.Fatalf("delivered %v; want only %s", got, want)
	}
}

func TestVerifySignature(t *testing.T) {
	secret, body := []byte("k"), []byte(`{"a":1}`)
	now := time.Unix(1_800_000_000, 0)
	ts := "1800000000"
	sig := alerts.Sign(secret, ts, body)
	if err := alerts.VerifySignature(secret, ts, body, sig, now, time.Minute); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func() error{
		"other secret": func() error { return alerts.VerifySignature([]byte("x"), ts, body, sig, now, time.Minute) },
		"other body":   func() error { return alerts.VerifySignature(secret, ts, []byte(`{"a":2}`), sig, now, time.Minute) },
		"replayed": func() error {
			return alerts.VerifySignature(secret, ts, body, sig, now.Add(10*time.Minute), time.Minute)
		},
		"bad ts":    func() error { return alerts.VerifySignature(secret, "x", body, sig, now, time.Minute) },
		"no header": func() error { return alerts.VerifySignature(secret, ts, body, "", now, time.Minute) },
	} {
		if f() == nil {
			t.Errorf("%s verifies", name)
		}
	}
}
