package alerts_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/alerts"
)

// hookReceiver is a webhook endpoint. It checks every attempt the way a
// real receiver would (method, headers, signature, body), answers from a
// script (its first attempts fail: "500" answers 500, "hang" never answers
// so the sender times out), and deduplicates accepted alerts by
// Idempotency-Key.
type hookReceiver struct {
	secret []byte

	mu       sync.Mutex
	script   []string
	down     bool            // refuse every attempt
	hangAll  bool            // answer no attempt
	inflight int             // attempts not answered yet
	refuse   map[string]bool // refuse these idempotency keys for ever
	attempts map[string][]time.Time
	accepted []string       // idempotency keys, first acceptance order
	times    map[string]int // acceptances per key; >1 is a duplicate the dedupe dropped
	problems []string
}

func newHookReceiver(secret string, script ...string) *hookReceiver {
	return &hookReceiver{secret: []byte(secret), script: script, refuse: map[string]bool{},
		attempts: map[string][]time.Time{}, times: map[string]int{}}
}

func (r *hookReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	at := time.Now()
	body, _ := io.ReadAll(req.Body)
	id := req.Header.Get(alerts.HeaderIdemKey)
	var problems []string
	if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" {
		problems = append(problems, fmt.Sprintf("%s with Content-Type %q", req.Method, req.Header.Get("Content-Type")))
	}
	if err := alerts.VerifySignature(r.secret, req.Header.Get(alerts.HeaderTimestamp), body, req.Header.Get(alerts.HeaderSignature), time.Now(), time.Minute); err != nil {
		problems = append(problems, "signature: "+err.Error())
	}
	env, err := domain.UnmarshalEnvelope(body)
	if err != nil || env.Type != domain.TypeAlertRaised || env.ID.String() != id || req.Header.Get(alerts.HeaderEventID) != id {
		problems = append(problems, fmt.Sprintf("body %.80s does not match Idempotency-Key %q and event id %q (%v)", body, id, req.Header.Get(alerts.HeaderEventID), err))
	}

	r.mu.Lock()
	r.problems = append(r.problems, problems...)
	r.attempts[id] = append(r.attempts[id], at)
	action := "ok"
	switch {
	case len(r.script) > 0:
		action, r.script = r.script[0], r.script[1:]
	case r.hangAll:
		action = "hang"
	case r.down || r.refuse[id]:
		action = "500"
	}
	if action == "ok" {
		if r.times[id] == 0 {
			r.accepted = append(r.accepted, id)
		}
		r.times[id]++
	}
	r.inflight++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.inflight--
		r.mu.Unlock()
	}()

	switch action {
	case "500":
		http.Error(w, "down", http.StatusInternalServerError)
	case "hang":
		select {
		case <-req.Context().Done(): // the sender gave up
		case <-time.After(10 * time.Second):
		}
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func (r *hookReceiver) set(down, hangAll bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down, r.hangAll = down, hangAll
}

func (r *hookReceiver) snapshot() (accepted []string, times map[string]int, attempts map[string][]time.Time, problems []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	attempts = map[string][]time.Time{}
	for k, v := range r.attempts {
		attempts[k] = slices.Clone(v)
	}
	times = map[string]int{}
	for k, v := range r.times {
		times[k] = v
	}
	return slices.Clone(r.accepted), times, attempts, slices.Clone(r.problems)
}

// hasAll is for checkFor: nil once every id was accepted.
func (r *hookReceiver) hasAll(ids ...string) error {
	_, times, _, _ := r.snapshot()
	for _, id := range ids {
		if times[id] == 0 {
			return fmt.Errorf("alert %s not accepted yet", id)
		}
	}
	return nil
}

// busy returns the attempts made so far and how many are unanswered.
func (r *hookReceiver) busy() (attempts, inflight int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.attempts {
		attempts += len(a)
	}
	return attempts, r.inflight
}

// startHookReceiver serves r until the test ends (after the deliverers, whose
// cleanups are registered later and so run first).
func startHookReceiver(t *testing.T, r *hookReceiver) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv
}

func newHookStore(t *testing.T) *eventstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, err := eventstore.Open(ctx, eventstore.Config{DataDir: t.TempDir(), NoSync: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store
}

// raiseForHook stores an alert on ALERTS as the engine does and returns its id.
func raiseForHook(t *testing.T, store *eventstore.Store, rule, severity string) string {
	t.Helper()
	a := domain.AlertRaised{Rule: rule, Severity: severity, Incident: rule + ":" + uuid.NewString(), Summary: "test alert"}
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), uuid.NewString(), a, time.Now(), "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	env.Seal("")
	if _, err := store.PublishAlert(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	return env.ID.String()
}

// runWebhooks runs w until the returned stop is called or the test ends;
// stop fails the test when Run does not return promptly.
func runWebhooks(t *testing.T, w *alerts.Webhooks) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return 10s after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// hookLog collects log output from several goroutines.
type hookLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *hookLog) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *hookLog) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func hookNoProblems(t *testing.T, r *hookReceiver) {
	t.Helper()
	if _, _, _, problems := r.snapshot(); len(problems) > 0 {
		t.Fatalf("receiver saw bad requests:\n%s", strings.Join(problems, "\n"))
	}
}

func TestWebhookRetriesWithBackoffUntilAccepted(t *testing.T) {
	t.Parallel()
	store := newHookStore(t)
	// Three refusals, then an attempt that never answers.
	rcv := newHookReceiver("receiver-secret-0123456789", "500", "500", "500", "hang")
	srv := startHookReceiver(t, rcv)
	// Webhook URLs often carry credentials; none of these may be logged.
	url := strings.Replace(srv.URL, "http://", "http://user:URLPASSWORD@", 1) + "/hooks/PATHTOKEN?token=QUERYTOKEN"
	hook := alerts.WebhookConfig{URL: url, Secret: rcv.secret, Timeout: 300 * time.Millisecond,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}
	logs := &hookLog{}
	w := alerts.NewWebhooks(store.JetStream(), []alerts.WebhookConfig{hook}, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	runWebhooks(t, w)

	ids := []string{
		raiseForHook(t, store, alerts.RuleBruteForce, domain.SeverityHigh),
		raiseForHook(t, store, alerts.RuleDeadKey, domain.SeverityCritical),
		raiseForHook(t, store, alerts.RuleNewSource, domain.SeverityMedium),
	}
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error { return rcv.hasAll(ids...) })
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if s := w.Stats(context.Background()); s.Pending != 0 || s.Delivered != 3 {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	})
	hookNoProblems(t, rcv)

	accepted, times, attempts, _ := rcv.snapshot()
	// The receiver's dedupe sees every alert once, in the order raised:
	// a receiver gets one alert at a time.
	if !slices.Equal(accepted, ids) {
		t.Fatalf("accepted %v, want %v", accepted, ids)
	}
	for id, n := range times {
		if n != 1 {
			t.Errorf("alert %s accepted %d times", id, n)
		}
	}
	// The first alert took the five attempts; the others went through at
	// once.
	first := attempts[ids[0]]
	if got := []int{len(first), len(attempts[ids[1]]), len(attempts[ids[2]])}; !slices.Equal(got, []int{5, 1, 1}) {
		t.Fatalf("attempts per alert = %v, want [5 1 1]", got)
	}
	// Back-off doubles from MinBackoff, capped at MaxBackoff; the hanging
	// attempt also took its Timeout. These are lower bounds: a slow
	// machine only makes the gaps longer. The receiver stamps an attempt
	// when it arrives, after the sender's clock for it started, so a gap
	// may look shorter by an attempt's time in transit (arrive).
	const arrive = 25 * time.Millisecond
	wantGap := []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 300*time.Millisecond + 400*time.Millisecond}
	for i, want := range wantGap {
		if got := first[i+1].Sub(first[i]); got < want-arrive {
			t.Errorf("gap after attempt %d = %v, want at least %v", i+1, got, want)
		}
	}
	if s := w.Stats(context.Background()); s.FailedAttempts != 4 || s.Dropped != 0 || s.Skipped != 0 {
		t.Fatalf("stats = %+v, want 4 failed attempts", s)
	}
	out := logs.String()
	if !strings.Contains(out, "retrying") {
		t.Errorf("failures were not logged:\n%s", out)
	}
	for _, secret := range []string{string(rcv.secret), "URLPASSWORD", "PATHTOKEN", "QUERYTOKEN"} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains %q:\n%s", secret, out)
		}
	}
}

func TestWebhookRestartLosesNothing(t *testing.T) {
	t.Parallel()
	store := newHookStore(t)
	rcv := newHookReceiver("receiver-secret-0123456789")
	rcv.set(true, false)
	srv := startHookReceiver(t, rcv)
	hook := alerts.WebhookConfig{URL: srv.URL + "/hook", Secret: rcv.secret, Timeout: 5 * time.Second,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}

	stopA := runWebhooks(t, alerts.NewWebhooks(store.JetStream(), []alerts.WebhookConfig{hook}, nil))
	var ids []string
	for range 4 {
		ids = append(ids, raiseForHook(t, store, alerts.RuleBruteForce, domain.SeverityHigh))
	}
	// Let the first alert fail a few times, then stop the deliverer in
	// the middle of an attempt that gets no answer.
	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n, _ := rcv.busy(); n < 3 {
			return fmt.Errorf("%d attempts so far", n)
		}
		return nil
	})
	rcv.set(false, true)
	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if _, n := rcv.busy(); n == 0 {
			return errors.New("no attempt in flight")
		}
		return nil
	})
	stopA()
	// Alerts raised while nothing delivers wait in JetStream.
	for range 2 {
		ids = append(ids, raiseForHook(t, store, alerts.RuleDeadKey, domain.SeverityCritical))
	}
	rcv.set(false, false)

	// Two deliverers on the same receiver, as two keyledger nodes would
	// run, share its consumer.
	b := alerts.NewWebhooks(store.JetStream(), []alerts.WebhookConfig{hook}, nil)
	c := alerts.NewWebhooks(store.JetStream(), []alerts.WebhookConfig{hook}, nil)
	runWebhooks(t, b)
	runWebhooks(t, c)
	// Well within the consumer's AckWait (Timeout+30s): the alert whose
	// attempt the stop interrupted was handed back, not waited out.
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error { return rcv.hasAll(ids...) })
	hookNoProblems(t, rcv)

	accepted, times, _, _ := rcv.snapshot()
	if !slices.Equal(accepted, ids) {
		t.Fatalf("accepted %v, want every alert in the order raised %v", accepted, ids)
	}
	for id, n := range times {
		if n != 1 {
			t.Errorf("alert %s accepted %d times by two deliverers sharing a consumer", id, n)
		}
	}
	// The receiver counts an alert before its answer reaches the sender.
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if got := b.Stats(context.Background()).Delivered + c.Stats(context.Background()).Delivered; got != uint64(len(ids)) {
			return fmt.Errorf("delivered %d, want %d", got, len(ids))
		}
		return nil
	})
	cons, err := store.JetStream().Consumer(context.Background(), domain.StreamAlerts, alerts.DurableName(hook.URL))
	if err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		info, err := cons.Info(context.Background())
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("consumer has %d pending, %d unacked", info.NumPending, info.NumAckPending)
		}
		return nil
	})
}

func TestWebhookSeverityAndRuleFilters(t *testing.T) {
	t.Parallel()
	store := newHookStore(t)
	high := newHookReceiver("receiver-secret-high-0123")
	brute := newHookReceiver("receiver-secret-brute-012")
	highSrv, bruteSrv := startHookReceiver(t, high), startHookReceiver(t, brute)
	w := alerts.NewWebhooks(store.JetStream(), []alerts.WebhookConfig{
		{URL: highSrv.URL, Secret: high.secret, MinSeverity: domain.SeverityHigh, MinBackoff: 10 * time.Millisecond},
		{URL: bruteSrv.URL, Secret: brute.secret, Rules: []string{alerts.RuleBruteForce}, MinBackoff: 10 * time.Millisecond},
	}, nil)
	runWebhooks(t, w)

	bfLow := raiseForHook(t, store, alerts.RuleBruteForce, domain.SeverityLow)
	bfCritical := raiseForHook(t, store, alerts.RuleBruteForce, domain.SeverityCritical)
	deadHigh := raiseForHook(t, store, alerts.RuleDeadKey, domain.SeverityHigh)
	raiseForHook(t, store, alerts.RuleNewSource, domain.SeverityMedium)
	raiseForHook(t, store, alerts.RuleRotationDue, domain.SeverityLow)
	// A severity this version does not know is delivered, not filtered.
	bfUnknown := raiseForHook(t, store, alerts.RuleBruteForce, "")

	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if err := high.hasAll(bfCritical, deadHigh, bfUnknown); err != nil {
			return err
		}
		if err := brute.hasAll(bfLow, bfCritical, bfUnknown); err != nil {
			return err
		}
		if s := w.Stats(context.Background()); s.Pending != 0 {
			return fmt.Errorf("%d alerts pending", s.Pending)
		}
		return nil
	})
	hookNoProblems(t, high)
	hookNoProblems(t, brute)
	if got, _, _, _ := high.snapshot(); !slices.Equal(got, []string{bfCritical, deadHigh, bfUnknown}) {
		t.Errorf("high receiver got %v", got)
	}
	if got, _, _, _ := brute.snapshot(); !slices.Equal(got, []string{bfLow, bfCritical, bfUnknown}) {
		t.Errorf("brute-force receiver got %v", got)
	}
	// The high receiver's consumer saw every alert and acked the three
	// below high without a request; the brute-force receiver's consumer
	// never saw another rule.
	if s := w.Stats(context.Background()); s.Delivered != 6 || s.Skipped != 3 || s.FailedAttempts != 0 {
		t.Errorf("stats = %+v, want 6 delivered, 3 skipped", s)
	}
}

func TestWebhookGivesUpAfterMaxAge(t *testing.T) {
	t.Parallel()
	store := newHookStore(t)
	rcv := newHookReceiver("receiver-secret-0123456789")
	srv := startHookReceiver(t, rcv)
	logs := &hookLog{}
	// Waits of 20, 40, 80ms: the fourth attempt would come 140ms after
	// the first, past MaxAge, so the alert is given up after three.
	hook := alerts.WebhookConfig{URL: srv.URL, Secret: rcv.secret, MinBackoff: 20 * time.Millisecond,
		MaxBackoff: time.Second, MaxAge: 100 * time.Millisecond}
	w := alerts.NewWebhooks(store.JetStream(), []alerts.WebhookConfig{hook}, slog.New(slog.NewTextHandler(logs, nil)))
	runWebhooks(t, w)

	poison := raiseForHook(t, store, alerts.RuleSinkStuck, domain.SeverityCritical)
	rcv.mu.Lock()
	rcv.refuse[poison] = true
	rcv.mu.Unlock()
	next := raiseForHook(t, store, alerts.RuleBruteForce, domain.SeverityHigh)

	// The alert behind the refused one is not held up for ever.
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error { return rcv.hasAll(next) })
	hookNoProblems(t, rcv)
	_, times, attempts, _ := rcv.snapshot()
	if n := len(attempts[poison]); n != 3 || times[poison] != 0 {
		t.Errorf("refused alert: %d attempts, %d accepted; want 3 attempts", n, times[poison])
	}
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if s := w.Stats(context.Background()); s.Dropped != 1 || s.FailedAttempts != 3 || s.Delivered != 1 || s.Pending != 0 {
			return fmt.Errorf("stats = %+v, want 1 dropped, 3 failed, 1 delivered, none pending", s)
		}
		return nil
	})
	if out := logs.String(); !strings.Contains(out, "level=ERROR") || !strings.Contains(out, poison) {
		t.Errorf("giving up was not logged as an error naming the alert:\n%s", out)
	}
}

func TestWebhookConfigRejected(t *testing.T) {
	t.Parallel()
	secret := []byte("never-in-an-error-0123456789")
	ok := alerts.WebhookConfig{URL: "https://alerts.example.test/hook/PATHTOKEN", Secret: secret}
	for name, hooks := range map[string][]alerts.WebhookConfig{
		"no secret":        {{URL: ok.URL}},
		"not http":         {{URL: "ftp://alerts.example.test/x", Secret: secret}},
		"not a URL":        {{URL: "alerts", Secret: secret}},
		"unknown severity": {{URL: ok.URL, Secret: secret, MinSeverity: "urgent"}},
		"rule wildcard":    {{URL: ok.URL, Secret: secret, Rules: []string{"brute_force.>"}}},
		"empty rule":       {{URL: ok.URL, Secret: secret, Rules: []string{""}}},
		"same URL twice":   {ok, ok},
	} {
		w := alerts.NewWebhooks(nil, hooks, nil)
		if err := w.Validate(); domain.ErrorCode(err) != domain.EINVALID {
			t.Errorf("%s: Validate = %v, want an EINVALID error", name, err)
		}
		// Run checks the same before it uses JetStream.
		err := w.Run(context.Background())
		if domain.ErrorCode(err) != domain.EINVALID {
			t.Errorf("%s: Run = %v, want an EINVALID error", name, err)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, string(secret)) || strings.Contains(msg, "PATHTOKEN") {
			t.Errorf("%s: error reveals a secret: %s", name, msg)
		}
	}
	if err := alerts.NewWebhooks(nil, []alerts.WebhookConfig{ok, {URL: "http://other.example.test", Secret: secret, Rules: []string{alerts.RuleBruteForce}}}, nil).Validate(); err != nil {
		t.Errorf("valid configuration: %v", err)
	}
}

func TestWebhookVerifySignature(t *testing.T) {
	t.Parallel()
	secret, body := []byte("k-0123456789abcdef"), []byte(`{"id":"x","type":"alert.raised"}`)
	now := time.Unix(1_800_000_000, 0)
	ts := "1800000000"
	sig := alerts.Sign(secret, ts, body)
	for name, tc := range map[string]struct {
		secret    []byte
		ts        string
		body      []byte
		header    string
		now       time.Time
		tolerance time.Duration
		ok        bool
	}{
		"valid":                {secret, ts, body, sig, now, time.Minute, true},
		"upper-case hex":       {secret, ts, body, "sha256=" + strings.ToUpper(strings.TrimPrefix(sig, "sha256=")), now, time.Minute, true},
		"just inside":          {secret, ts, body, sig, now.Add(time.Minute), time.Minute, true},
		"default tolerance":    {secret, ts, body, sig, now.Add(4 * time.Minute), 0, true},
		"other secret":         {[]byte("x"), ts, body, sig, now, time.Minute, false},
		"other body":           {secret, ts, []byte(`{"id":"y"}`), sig, now, time.Minute, false},
		"timestamp changed":    {secret, "1800000001", body, sig, now, time.Minute, false},
		"replayed later":       {secret, ts, body, sig, now.Add(10 * time.Minute), time.Minute, false},
		"past default":         {secret, ts, body, sig, now.Add(6 * time.Minute), 0, false},
		"from the future":      {secret, ts, body, sig, now.Add(-10 * time.Minute), time.Minute, false},
		"timestamp not number": {secret, "yesterday", body, sig, now, time.Minute, false},
		"no prefix":            {secret, ts, body, strings.TrimPrefix(sig, "sha256="), now, time.Minute, false},
		"not hex":              {secret, ts, body, "sha256=zz", now, time.Minute, false},
		"truncated":            {secret, ts, body, sig[:len(sig)-2], now, time.Minute, false},
		"empty":                {secret, ts, body, "", now, time.Minute, false},
	} {
		err := alerts.VerifySignature(tc.secret, tc.ts, tc.body, tc.header, tc.now, tc.tolerance)
		if tc.ok {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if !errors.Is(err, alerts.ErrBadSignature) || domain.ErrorCode(err) != domain.EUNAUTHORIZED {
			t.Errorf("%s: err = %v, want ErrBadSignature (EUNAUTHORIZED)", name, err)
		}
	}
}

// The consumer of a receiver is found by its derived name, and a changed
// URL is a different receiver.
func TestWebhookDurableName(t *testing.T) {
	t.Parallel()
	a, b := alerts.DurableName("https://h.test/a?token=1"), alerts.DurableName("https://h.test/a?token=2")
	if a == b || a != alerts.DurableName("https://h.test/a?token=1") || strings.Contains(a, "h.test") {
		t.Fatalf("durable names %q %q", a, b)
	}
}
