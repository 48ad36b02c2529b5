package alerts

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// History answers the questions the in-memory windows cannot: what a key
// did before the engine started watching. The ClickHouse log implements it.
type History interface {
	// UsedFrom reports whether the key was used successfully from an
	// address in p during [since, before).
	UsedFrom(ctx context.Context, keyID string, p netip.Prefix, since, before time.Time) (bool, error)
	// LastUsedBefore returns the key's last successful use before t.
	LastUsedBefore(ctx context.Context, keyID string, before time.Time) (time.Time, bool, error)
}

// Publisher stores an alert event on the ALERTS stream.
type Publisher interface {
	PublishAlert(ctx context.Context, env domain.Envelope) (uint64, error)
}

// Engine evaluates the rules. Observe must be called with each stream's
// events in stream order; it is safe to call from one goroutine per stream.
type Engine struct {
	cfg     Config
	history History
	pub     Publisher
	log     *slog.Logger

	mu       sync.Mutex
	byIP     map[string]*window // denials per source address (brute force)
	sprayIP  map[string]*window // presentations per source address (spraying)
	failKey  map[string]*window // denials per key (failure burst)
	deadKey  map[string]*window // dead-key presentations per key
	netsKey  map[string]*window // successful uses per key, by network
	seenNet  map[string]time.Time
	lastUse  map[string]time.Time
	firstUse map[string]time.Time
	incident map[string]raised // suppression, by incident
	lastSeq  map[string]uint64
	stuck    time.Time // when the sink was first seen stuck
}

type raised struct {
	at       time.Time
	severity string
}

type hit struct {
	at    time.Time
	id    string // event id
	value string // what is counted distinct (key, network, address)
	ip    string // the source address, where value is not it
}

// window is the events of one subject within a rule's window, oldest
// first. It counts the hits of each value as they come and go, so that the
// rules learn how many distinct values it holds without scanning it: a
// scan on every event made a busy key or address cost more with each event
// it sent, until the engine fell behind for good.
type window struct {
	hits []hit
	n    map[string]int // hits per value; len(n) is the number of distinct values
}

func (w *window) add(h hit, span time.Duration) {
	if w.n == nil {
		w.n = map[string]int{}
	}
	w.hits = append(w.hits, h)
	w.n[h.value]++
	cut := 0
	for cut < len(w.hits) && w.hits[cut].at.Before(h.at.Add(-span)) {
		if v := w.hits[cut].value; w.n[v] == 1 {
			delete(w.n, v)
		} else {
			w.n[v]--
		}
		cut++
	}
	w.hits = w.hits[cut:]
}

// addLatest is add for a window that only counts distinct values. Such a
// window needs no more than each value's latest hit (see latest); the
// earlier ones are dropped in batches, so that its size follows the number
// of values, not the traffic, at a constant cost per hit.
func (w *window) addLatest(h hit, span time.Duration) {
	w.add(h, span)
	if len(w.hits) > 2*len(w.n)+16 {
		w.hits = w.latest()
		for v := range w.n {
			w.n[v] = 1
		}
	}
}

// latest returns each value's latest hit, oldest first.
func (w *window) latest() []hit {
	seen := make(map[string]bool, len(w.n))
	out := make([]hit, 0, len(w.n))
	for i := len(w.hits) - 1; i >= 0; i-- {
		if h := w.hits[i]; !seen[h.value] {
			seen[h.value] = true
			out = append(out, h)
		}
	}
	slices.Reverse(out)
	return out
}

// distinct returns the values in the order they first appear.
func (w *window) distinct() []string {
	seen := make(map[string]bool, len(w.n))
	var out []string
	for _, h := range w.hits {
		if !seen[h.value] {
			seen[h.value] = true
			out = append(out, h.value)
		}
	}
	return out
}

func (w *window) ids(max int) []string {
	var out []string
	for _, h := range w.hits {
		if len(out) == max {
			break
		}
		out = append(out, h.id)
	}
	return out
}

// New returns an engine. history may be nil: the history rules then only
// see what happened since the engine started.
func New(cfg Config, history History, pub Publisher, logger *slog.Logger) *Engine {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Engine{
		cfg: cfg.WithDefaults(), history: history, pub: pub, log: logger.With("component", "alerts"),
		byIP: map[string]*window{}, sprayIP: map[string]*window{}, failKey: map[string]*window{},
		deadKey: map[string]*window{}, netsKey: map[string]*window{}, seenNet: map[string]time.Time{},
		lastUse: map[string]time.Time{}, firstUse: map[string]time.Time{}, incident: map[string]raised{}, lastSeq: map[string]uint64{},
	}
}

func get(m map[string]*window, k string) *window {
	w := m[k]
	if w == nil {
		w = &window{}
		m[k] = w
	}
	return w
}

// network is the /24 (IPv4) or /48 (IPv6) an address belongs to.
func network(ip string) (netip.Prefix, bool) {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	bits := 24
	if a.Is6() {
		bits = 48
	}
	p, _ := a.Prefix(bits)
	return p, true
}

// alert is one alert about to be raised.
type alert struct {
	domain.AlertRaised
	at     time.Time
	window time.Duration
	supp   time.Duration
}

// Observe evaluates the rules on one event of USAGE or KEYS and raises
// the alerts it triggers. It returns the first error publishing an alert.
func (e *Engine) Observe(ctx context.Context, env domain.Envelope) error {
	var out []alert
	e.mu.Lock()
	if env.Stream != "" && env.Seq != 0 {
		if last, ok := e.lastSeq[env.Stream]; ok && env.Seq > last+1 {
			out = append(out, alert{AlertRaised: domain.AlertRaised{
				Rule: RuleSequenceGap, Severity: domain.SeverityCritical,
				Incident: fmt.Sprintf("%s:%s:%d-%d", RuleSequenceGap, env.Stream, last+1, env.Seq-1),
				Summary:  fmt.Sprintf("%s sequences %d to %d are missing from the audit pipeline", env.Stream, last+1, env.Seq-1),
				Evidence: []string{env.ID.String()},
			}, at: env.Time, supp: time.Nanosecond})
		}
		if env.Seq > e.lastSeq[env.Stream] {
			e.lastSeq[env.Stream] = env.Seq
		}
	}
	ev, err := env.Decode()
	if err == nil {
		switch d := ev.(type) {
		case domain.KeyDenied:
			out = append(out, e.denied(env, d)...)
		case domain.KeyUsed:
			out = append(out, e.used(ctx, env)...)
		}
	}
	out = e.suppress(out)
	e.mu.Unlock()
	return e.raise(ctx, out)
}

func sourceIP(env domain.Envelope) string {
	if env.Context != nil {
		return env.Context.SourceIP
	}
	return ""
}

func (e *Engine) denied(env domain.Envelope, d domain.KeyDenied) []alert {
	var out []alert
	ip := sourceIP(env)
	id := env.ID.String()
	c := e.cfg
	presented := env.KeyID
	if presented == domain.UnknownKeyID || presented == "" {
		presented = "token:" + d.TokenHash
	}
	if ip != "" {
		w := get(e.byIP, ip)
		w.add(hit{at: env.Time, id: id, value: presented}, c.BruteForce.Window)
		incident := RuleBruteForce + ":" + ip
		if len(w.hits) >= c.BruteForce.Count && !e.quiet(incident, domain.SeverityHigh, env.Time, c.BruteForce.Suppress) {
			out = append(out, alert{AlertRaised: domain.AlertRaised{
				Rule: RuleBruteForce, Severity: domain.SeverityHigh, Incident: incident,
				Summary:   fmt.Sprintf("%d failed verifications from %s within %s", len(w.hits), ip, c.BruteForce.Window),
				SourceIPs: []string{ip}, Count: len(w.hits), Evidence: w.ids(c.MaxEvidence),
				WindowStart: w.hits[0].at, WindowEnd: env.Time,
				Query: logQuery(url.Values{"ip": {ip}, "action": {"denied"}}, w.hits[0].at, env.Time),
			}, at: env.Time, supp: c.BruteForce.Suppress})
		}
		out = append(out, e.spray(env, ip, presented)...)
	}
	if env.KeyID != domain.UnknownKeyID && env.KeyID != "" {
		switch d.Code {
		case domain.OutcomeRevoked, domain.OutcomeExpired, domain.OutcomeDisabled:
			w := get(e.deadKey, env.KeyID)
			w.add(hit{at: env.Time, id: id, value: ip}, c.DeadKey.Window)
			incident, severity := RuleDeadKey+":"+env.KeyID, domain.SeverityMedium
			if len(w.n) >= c.DeadKey.Count {
				severity = domain.SeverityHigh
			}
			if e.quiet(incident, severity, env.Time, c.DeadKey.Suppress) {
				break
			}
			ips := w.distinct()
			a := alert{AlertRaised: domain.AlertRaised{
				Rule: RuleDeadKey, Severity: domain.SeverityMedium, Incident: incident,
				Summary: fmt.Sprintf("%s key %s presented", strings.ToLower(d.Code), env.KeyID),
				KeyIDs:  []string{env.KeyID}, SourceIPs: ips, Count: len(w.hits), Evidence: w.ids(c.MaxEvidence),
				WindowStart: w.hits[0].at, WindowEnd: env.Time,
				Query: logQuery(url.Values{"key_id": {env.KeyID}, "action": {"denied"}}, w.hits[0].at, env.Time),
			}, at: env.Time, supp: c.DeadKey.Suppress}
			if len(ips) >= c.DeadKey.Count {
				a.Severity = domain.SeverityHigh
				a.Summary = fmt.Sprintf("%s key %s presented from %d addresses within %s", strings.ToLower(d.Code), env.KeyID, len(ips), c.DeadKey.Window)
			}
			out = append(out, a)
		case domain.OutcomeInvalidSecret, domain.OutcomeIPNotAllowed, domain.OutcomeInsufficientPermissions:
			w := get(e.failKey, env.KeyID)
			w.add(hit{at: env.Time, id: id, value: ip}, c.FailureBurst.Window)
			incident := RuleFailureBurst + ":" + env.KeyID
			if len(w.hits) >= c.FailureBurst.Count && !e.quiet(incident, domain.SeverityMedium, env.Time, c.FailureBurst.Suppress) {
				out = append(out, alert{AlertRaised: domain.AlertRaised{
					Rule: RuleFailureBurst, Severity: domain.SeverityMedium, Incident: incident,
					Summary: fmt.Sprintf("%d failed verifications of key %s within %s", len(w.hits), env.KeyID, c.FailureBurst.Window),
					KeyIDs:  []string{env.KeyID}, SourceIPs: w.distinct(), Count: len(w.hits), Evidence: w.ids(c.MaxEvidence),
					WindowStart: w.hits[0].at, WindowEnd: env.Time,
					Query: logQuery(url.Values{"key_id": {env.KeyID}, "action": {"denied"}}, w.hits[0].at, env.Time),
				}, at: env.Time, supp: c.FailureBurst.Suppress})
			}
		}
	}
	return out
}

// spray counts the distinct keys (or unparseable tokens) one address
// presents, successes included: an address trying many keys is spraying
// whether or not some of them work.
func (e *Engine) spray(env domain.Envelope, ip, presented string) []alert {
	c := e.cfg.KeySpraying
	w := get(e.sprayIP, ip)
	w.addLatest(hit{at: env.Time, id: env.ID.String(), value: presented}, c.Window)
	incident := RuleKeySpraying + ":" + ip
	if len(w.n) < c.Count || e.quiet(incident, domain.SeverityHigh, env.Time, c.Suppress) {
		return nil
	}
	// The alert cites each key's latest presentation.
	w = &window{hits: w.latest()}
	keys := w.distinct()
	var ids []string
	for _, k := range keys {
		if !strings.HasPrefix(k, "token:") {
			ids = append(ids, k)
		}
	}
	return []alert{{AlertRaised: domain.AlertRaised{
		Rule: RuleKeySpraying, Severity: domain.SeverityHigh, Incident: incident,
		Summary: fmt.Sprintf("%s presented %d distinct keys within %s", ip, len(keys), c.Window),
		KeyIDs:  ids, SourceIPs: []string{ip}, Count: len(keys), Evidence: w.ids(e.cfg.MaxEvidence),
		WindowStart: w.hits[0].at, WindowEnd: env.Time,
		Query: logQuery(url.Values{"ip": {ip}}, w.hits[0].at, env.Time),
	}, at: env.Time, supp: c.Suppress}}
}

func (e *Engine) used(ctx context.Context, env domain.Envelope) []alert {
	var out []alert
	c := e.cfg
	key, ip, id := env.KeyID, sourceIP(env), env.ID.String()
	if ip != "" {
		out = append(out, e.spray(env, ip, key)...)
	}
	// A success right after a failure burst on the same key: the guessing
	// may have worked.
	if w := e.failKey[key]; w != nil && len(w.hits) >= c.FailureBurst.Count && env.Time.Sub(w.hits[len(w.hits)-1].at) <= c.FailureBurst.Window {
		ips := w.distinct()
		if ip != "" && !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
		out = append(out, alert{AlertRaised: domain.AlertRaised{
			Rule: RuleFailureBurst, Severity: domain.SeverityCritical, Incident: RuleFailureBurst + ":" + key, Escalation: true,
			Summary: fmt.Sprintf("key %s verified successfully right after %d failures", key, len(w.hits)),
			KeyIDs:  []string{key}, SourceIPs: ips, Count: len(w.hits) + 1,
			Evidence: append(w.ids(c.MaxEvidence-1), id), WindowStart: w.hits[0].at, WindowEnd: env.Time,
			Query: logQuery(url.Values{"key_id": {key}}, w.hits[0].at, env.Time),
		}, at: env.Time, supp: c.FailureBurst.Suppress})
		delete(e.failKey, key)
	}
	// Dormant: the last use before this one, from memory or the log.
	last, ok := e.lastUse[key]
	if !ok && e.history != nil {
		var err error
		last, ok, err = e.history.LastUsedBefore(ctx, key, env.Time)
		if err != nil {
			e.log.Warn("dormant-key rule: history unavailable", "key", key, "err", err)
		}
	}
	if ok && env.Time.Sub(last) >= c.DormantAfter {
		out = append(out, alert{AlertRaised: domain.AlertRaised{
			Rule: RuleDormantKey, Severity: domain.SeverityMedium, Incident: RuleDormantKey + ":" + key,
			Summary: fmt.Sprintf("key %s used after %d days idle", key, int(env.Time.Sub(last).Hours()/24)),
			KeyIDs:  []string{key}, SourceIPs: nonEmpty(ip), Evidence: []string{id}, WindowStart: last, WindowEnd: env.Time,
			Query: logQuery(url.Values{"key_id": {key}, "action": {"used"}}, last, env.Time.Add(time.Millisecond)),
		}, at: env.Time, supp: c.DormantAfter})
	}
	if !ok || env.Time.After(last) {
		e.lastUse[key] = env.Time
	}
	if first, seen := e.firstUse[key]; !seen || env.Time.Before(first) {
		e.firstUse[key] = env.Time
	}
	if ip == "" {
		return out
	}
	net, okNet := network(ip)
	if !okNet {
		return out
	}
	nk := key + "|" + net.String()
	// New source: a network this key has not used within the lookback.
	// A key with no use at all in the lookback (new, or dormant) has no
	// habits to deviate from.
	if seen, ok := e.seenNet[nk]; !ok || env.Time.Sub(seen) >= c.NewSourceLookback {
		known := false
		hadUse := e.established(ctx, key, env.Time)
		if e.history != nil && hadUse {
			var err error
			known, err = e.history.UsedFrom(ctx, key, net, env.Time.Add(-c.NewSourceLookback), env.Time)
			if err != nil {
				e.log.Warn("new-source rule: history unavailable", "key", key, "err", err)
				known = true // no evidence either way: stay quiet
			}
		}
		if hadUse && !known {
			out = append(out, alert{AlertRaised: domain.AlertRaised{
				Rule: RuleNewSource, Severity: domain.SeverityMedium, Incident: RuleNewSource + ":" + nk,
				Summary: fmt.Sprintf("key %s used from %s, a network it has not used within %d days", key, ip, int(c.NewSourceLookback.Hours()/24)),
				KeyIDs:  []string{key}, SourceIPs: []string{ip}, Evidence: []string{id}, WindowStart: env.Time.Add(-c.NewSourceLookback), WindowEnd: env.Time,
				Query: logQuery(url.Values{"key_id": {key}, "action": {"used"}}, env.Time.Add(-c.NewSourceLookback), env.Time.Add(time.Millisecond)),
			}, at: env.Time, supp: c.NewSourceSuppress})
		}
	}
	e.seenNet[nk] = env.Time
	w := get(e.netsKey, key)
	w.addLatest(hit{at: env.Time, id: id, value: net.String(), ip: ip}, c.ManyNetworks.Window)
	incident := RuleManyNetworks + ":" + key
	if len(w.n) >= c.ManyNetworks.Count && !e.quiet(incident, domain.SeverityHigh, env.Time, c.ManyNetworks.Suppress) {
		// The alert cites each network's latest use. SourceIPs holds
		// addresses, one per network (the log files an alert under the
		// first, and searches by address parse it); the networks go in
		// the summary.
		w := &window{hits: w.latest()}
		nets := w.distinct()
		var ips []string
		for _, h := range w.hits {
			ips = append(ips, h.ip)
		}
		out = append(out, alert{AlertRaised: domain.AlertRaised{
			Rule: RuleManyNetworks, Severity: domain.SeverityHigh, Incident: incident,
			Summary: fmt.Sprintf("key %s used from %d networks within %s: %s", key, len(nets), c.ManyNetworks.Window, strings.Join(nets, ", ")),
			KeyIDs:  []string{key}, SourceIPs: ips, Count: len(nets), Evidence: w.ids(c.MaxEvidence),
			WindowStart: w.hits[0].at, WindowEnd: env.Time,
			Query: logQuery(url.Values{"key_id": {key}, "action": {"used"}}, w.hits[0].at, env.Time.Add(time.Millisecond)),
		}, at: env.Time, supp: c.ManyNetworks.Suppress})
	}
	return out
}

// established reports whether a key has habits to deviate from: it was
// already in use a day before t, within the new-source lookback. A new key
// finding its first few networks is not an anomaly.
func (e *Engine) established(ctx context.Context, key string, t time.Time) bool {
	lookback := e.cfg.NewSourceLookback
	if first, ok := e.firstUse[key]; ok && t.Sub(first) >= establishedAfter && t.Sub(first) < lookback {
		return true
	}
	if e.history == nil {
		return false
	}
	last, ok, err := e.history.LastUsedBefore(ctx, key, t.Add(-establishedAfter))
	if err != nil {
		e.log.Warn("new-source rule: history unavailable", "key", key, "err", err)
		return false
	}
	return ok && t.Sub(last) < lookback
}

// establishedAfter is how long a key must have been in use before a new
// network counts as a deviation.
const establishedAfter = 24 * time.Hour

// Tick raises the reminders (rotation age, expiry) over the current keys
// and the pipeline rule for a stuck sink; call it periodically.
func (e *Engine) Tick(ctx context.Context, now time.Time, keys []domain.Key, sinkLag uint64) error {
	var out []alert
	c := e.cfg
	e.mu.Lock()
	for _, k := range keys {
		if k.Status(now) != domain.StatusActive {
			continue
		}
		if age := now.Sub(k.SecretSetAt); !k.SecretSetAt.IsZero() && age >= c.RotationAge {
			out = append(out, alert{AlertRaised: domain.AlertRaised{
				Rule: RuleRotationDue, Severity: domain.SeverityLow, Incident: RuleRotationDue + ":" + k.ID,
				Summary: fmt.Sprintf("key %s (%s) has had the same secret for %d days", k.ID, k.Name, int(age.Hours()/24)),
				KeyIDs:  []string{k.ID}, WindowStart: k.SecretSetAt, WindowEnd: now,
			}, at: now, supp: c.ReminderSuppress})
		}
		if left := k.ExpiresAt.Sub(now); left <= c.ExpiringWithin {
			out = append(out, alert{AlertRaised: domain.AlertRaised{
				Rule: RuleExpiringSoon, Severity: domain.SeverityLow, Incident: RuleExpiringSoon + ":" + k.ID + ":" + k.ExpiresAt.Format(time.RFC3339),
				Summary: fmt.Sprintf("key %s (%s) expires in %d hours", k.ID, k.Name, int(left.Hours())),
				KeyIDs:  []string{k.ID}, WindowStart: now, WindowEnd: k.ExpiresAt,
			}, at: now, supp: c.ExpiringWithin + time.Hour})
		}
	}
	if sinkLag > c.SinkStuckLag {
		if e.stuck.IsZero() {
			e.stuck = now
		}
		if now.Sub(e.stuck) >= c.SinkStuckFor {
			out = append(out, alert{AlertRaised: domain.AlertRaised{
				Rule: RuleSinkStuck, Severity: domain.SeverityCritical, Incident: RuleSinkStuck,
				Summary:     fmt.Sprintf("the audit log has trailed JetStream by more than %d events for %s (now %d)", c.SinkStuckLag, now.Sub(e.stuck).Round(time.Second), sinkLag),
				Count:       int(sinkLag),
				WindowStart: e.stuck, WindowEnd: now,
			}, at: now, supp: time.Hour})
		}
	} else {
		e.stuck = time.Time{}
	}
	e.gc(now)
	out = e.suppress(out)
	e.mu.Unlock()
	return e.raise(ctx, out)
}

// ChainBroken raises the pipeline alert for a hash chain that does not
// verify; the audit verifier calls it.
func (e *Engine) ChainBroken(ctx context.Context, now time.Time, eventID, why string) error {
	e.mu.Lock()
	out := e.suppress([]alert{{AlertRaised: domain.AlertRaised{
		Rule: RuleChainBroken, Severity: domain.SeverityCritical, Incident: RuleChainBroken + ":" + eventID,
		Summary: "audit chain broken at event " + eventID + ": " + why, Evidence: []string{eventID},
	}, at: now, supp: 24 * time.Hour}})
	e.mu.Unlock()
	return e.raise(ctx, out)
}

// gc drops windows with nothing left in them, so memory follows current
// traffic rather than all traffic ever seen.
func (e *Engine) gc(now time.Time) {
	for _, m := range []map[string]*window{e.byIP, e.sprayIP, e.failKey, e.deadKey, e.netsKey} {
		for k, w := range m {
			if len(w.hits) == 0 || now.Sub(w.hits[len(w.hits)-1].at) > 24*time.Hour {
				delete(m, k)
			}
		}
	}
	for _, m := range []map[string]time.Time{e.seenNet, e.lastUse, e.firstUse} {
		for k, t := range m {
			if now.Sub(t) > e.cfg.NewSourceLookback && now.Sub(t) > e.cfg.DormantAfter {
				delete(m, k)
			}
		}
	}
	for k, r := range e.incident {
		if now.Sub(r.at) > 30*24*time.Hour {
			delete(e.incident, k)
		}
	}
}

var severityRank = map[string]int{domain.SeverityLow: 1, domain.SeverityMedium: 2, domain.SeverityHigh: 3, domain.SeverityCritical: 4}

// suppress keeps an alert only when its incident has not been raised
// within the suppression window, or has been raised at a lower severity
// (an escalation, which then resets the window).
func (e *Engine) suppress(in []alert) []alert {
	var out []alert
	for _, a := range in {
		if e.quiet(a.Incident, a.Severity, a.at, a.supp) {
			continue
		}
		if prev, ok := e.incident[a.Incident]; ok && a.at.Sub(prev.at) < a.supp {
			a.Escalation = true
		}
		e.incident[a.Incident] = raised{at: a.at, severity: a.Severity}
		out = append(out, a)
	}
	return out
}

// quiet reports whether suppress would drop an alert of incident at
// severity raised at at. A rule asks before it builds an alert: during a
// long incident, building every suppressed alert cost as much as the
// incident was large, on every event.
func (e *Engine) quiet(incident, severity string, at time.Time, supp time.Duration) bool {
	prev, ok := e.incident[incident]
	return ok && at.Sub(prev.at) < supp && severityRank[severity] <= severityRank[prev.severity]
}

// alertID is derived from the incident and its first evidence, so that
// nodes evaluating the same events raise the same id and JetStream stores
// the alert once.
func alertID(a alert) uuid.UUID {
	h := sha256.New()
	fmt.Fprintf(h, "%s|%s|%s|%d", a.Incident, a.Severity, strings.Join(a.Evidence, ","), a.WindowStart.UnixMilli())
	return uuid.NewHash(sha256.New(), uuid.NameSpaceOID, h.Sum(nil), 8)
}

func (e *Engine) raise(ctx context.Context, as []alert) error {
	var first error
	for _, a := range as {
		key := domain.UnknownKeyID
		if len(a.KeyIDs) > 0 {
			key = a.KeyIDs[0]
		}
		env, err := domain.NewEnvelope(alertID(a), key, a.AlertRaised, a.at, "keyledger-alerts", nil)
		if err == nil {
			env.Seal("")
			_, err = e.pub.PublishAlert(ctx, env)
		}
		if err != nil {
			e.log.Error("raise alert", "rule", a.Rule, "incident", a.Incident, "err", err)
			if first == nil {
				first = err
			}
			continue
		}
		e.log.Info("alert raised", "rule", a.Rule, "severity", a.Severity, "incident", a.Incident, "escalation", a.Escalation)
	}
	return first
}

func logQuery(v url.Values, from, to time.Time) string {
	v.Set("from", from.UTC().Format(time.RFC3339Nano))
	v.Set("to", to.UTC().Add(time.Millisecond).Format(time.RFC3339Nano))
	return "/v1/logs?" + v.Encode()
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}
