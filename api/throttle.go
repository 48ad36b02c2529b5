package api

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// FailureLimits bounds what failed authentications to keyledger itself
// (a caller's own bearer token) from one address may cost. The first Budget
// failures of an address in a Window are each recorded as their own
// key.denied event; past it the address is answered 429 too_many_failures
// with Retry-After, and its further failures in that window are counted
// into one THROTTLED summary event (their count and a sample of the key ids
// they presented). A valid token is never throttled, and the outcomes
// /v1/verify reports for the tokens a service presents are not affected.
type FailureLimits struct {
	// Budget is the failures an address may make per window, each
	// recorded on its own (20 when zero).
	Budget int
	// Window is how long an address's budget lasts from its first
	// failure (one minute when zero).
	Window time.Duration
	// Sample is how many distinct key ids a summary keeps (16 when zero).
	Sample int
	// MaxAddresses bounds the addresses tracked at once (65536 when
	// zero); failures from further addresses share one entry, still
	// counted.
	MaxAddresses int
}

func (l FailureLimits) withDefaults() FailureLimits {
	if l.Budget <= 0 {
		l.Budget = 20
	}
	if l.Window <= 0 {
		l.Window = time.Minute
	}
	if l.Sample <= 0 {
		l.Sample = 16
	}
	if l.MaxAddresses <= 0 {
		l.MaxAddresses = 1 << 16
	}
	return l
}

// failureThrottle counts failed authentications per address and window.
type failureThrottle struct {
	lim FailureLimits

	mu    sync.Mutex
	addrs map[netip.Addr]*failureWindow
	// due are summaries of windows that ended, waiting to be stored.
	due []failureSummary
	// closed: the summaries were drained for shutdown; from then on
	// every failure is recorded on its own, so none goes uncounted.
	closed bool
}

type failureWindow struct {
	start, end time.Time
	failures   int
	summary    failureSummary
}

// failureSummary is what one address did past its budget in one window.
type failureSummary struct {
	addr        netip.Addr
	since, last time.Time
	count       int
	keyIDs      []string
}

func newFailureThrottle(lim FailureLimits) *failureThrottle {
	return &failureThrottle{lim: lim.withDefaults(), addrs: map[netip.Addr]*failureWindow{}}
}

// bucket is the address failures are counted under: an IPv6 client can
// use a whole /64, so that is one bucket.
func bucket(a netip.Addr) netip.Addr {
	if a.Is6() && !a.Is4In6() {
		p, err := a.Prefix(64)
		if err == nil {
			return p.Addr()
		}
	}
	return a
}

// fail counts one failed authentication from addr at now that presented
// keyID ("" when the token did not parse). It reports whether the failure
// is to be recorded as its own event; when not, it was counted into the
// address's summary and retry says when the address's window ends.
func (t *failureThrottle) fail(addr netip.Addr, keyID string, now time.Time) (record bool, retry time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return true, 0
	}
	b := bucket(addr)
	w := t.addrs[b]
	if w != nil && !now.Before(w.end) {
		t.expire(b, w)
		w = nil
	}
	if w == nil {
		if len(t.addrs) >= t.lim.MaxAddresses {
			// Too many addresses at once: the rest share the zero
			// address's entry, counted all the same.
			b = netip.Addr{}
			w = t.addrs[b]
		}
		if w == nil {
			w = &failureWindow{start: now, end: now.Add(t.lim.Window)}
			t.addrs[b] = w
		}
	}
	if w.failures < t.lim.Budget {
		w.failures++
		return true, 0
	}
	s := &w.summary
	if s.count == 0 {
		s.addr, s.since = b, now
	}
	s.count++
	s.last = now
	if keyID != "" && len(s.keyIDs) < t.lim.Sample && !slices.Contains(s.keyIDs, keyID) {
		s.keyIDs = append(s.keyIDs, keyID)
	}
	return false, w.end.Sub(now)
}

// expire ends an address's window, keeping its summary for storing.
func (t *failureThrottle) expire(b netip.Addr, w *failureWindow) {
	delete(t.addrs, b)
	if w.summary.count > 0 {
		t.due = append(t.due, w.summary)
	}
}

// take returns the summaries of every window that ended by now.
func (t *failureThrottle) take(now time.Time) []failureSummary {
	t.mu.Lock()
	defer t.mu.Unlock()
	for b, w := range t.addrs {
		if !now.Before(w.end) {
			t.expire(b, w)
		}
	}
	out := t.due
	t.due = nil
	return out
}

// putBack returns summaries that could not be stored, to be tried again.
func (t *failureThrottle) putBack(s []failureSummary) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.due = append(s, t.due...)
}

// drain ends every window and returns every summary; failures after it are
// recorded one by one.
func (t *failureThrottle) drain() []failureSummary {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for b, w := range t.addrs {
		t.expire(b, w)
	}
	out := t.due
	t.due = nil
	return out
}

// summaryEvent is the one event that records a summary.
func (s *Server) summaryEvent(sm failureSummary) (domain.Envelope, error) {
	since := sm.since
	ev := domain.KeyDenied{Code: domain.OutcomeThrottled, Count: sm.count, Since: &since, KeyIDs: sm.keyIDs}
	rc := &domain.RequestContext{}
	if sm.addr.IsValid() {
		rc.SourceIP = sm.addr.String()
	}
	env, err := domain.NewEnvelope(s.cfg.NewID(), domain.UnknownKeyID, ev, sm.last, s.cfg.ServiceName, rc)
	if err != nil {
		return domain.Envelope{}, err
	}
	env.Seal("")
	return env, nil
}

// storeSummaries records summaries, each as one usage event; what could
// not be stored is returned.
func (s *Server) storeSummaries(ctx context.Context, sums []failureSummary) []failureSummary {
	if len(sums) == 0 {
		return nil
	}
	envs := make([]domain.Envelope, 0, len(sums))
	for _, sm := range sums {
		env, err := s.summaryEvent(sm)
		if err != nil {
			s.log.ErrorContext(ctx, "build failure summary", "err", err, "addr", sm.addr, "count", sm.count)
			continue
		}
		envs = append(envs, env)
	}
	if err := s.cfg.Usage.Publish(ctx, envs...); err != nil {
		s.log.WarnContext(ctx, "store failure summaries; will retry", "err", err, "summaries", len(sums))
		return sums
	}
	for _, sm := range sums {
		s.log.InfoContext(ctx, "failed authentications throttled", "addr", sm.addr, "count", sm.count, "since", sm.since)
	}
	return nil
}

// runFailureSummaries stores the summary of every window that ends, until
// ctx ends; then it ends every window and stores what is left.
func (s *Server) runFailureSummaries(ctx context.Context) {
	every := min(max(s.throttle.lim.Window/10, 10*time.Millisecond), 5*time.Second)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			sums := s.throttle.drain()
			if left := s.storeSummaries(sctx, sums); len(left) > 0 {
				n := 0
				for _, sm := range left {
					n += sm.count
				}
				s.log.Error("failure summaries could not be stored at shutdown", "summaries", len(left), "failures", n)
			}
			return
		case <-tick.C:
			if left := s.storeSummaries(ctx, s.throttle.take(s.cfg.Now())); len(left) > 0 {
				s.throttle.putBack(left)
			}
		}
	}
}
