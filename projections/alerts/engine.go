package alerts

import (
	"context"
	"crypto/sha256"
	"errors"
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

// Publisher stores an alert event on the ALERTS stream. An EINVALID
// error says the event can never be stored, and the engine drops it; any
// other error is retried.
type Publisher interface {
	PublishAlert(ctx context.Context, env domain.Envelope) (uint64, error)
}

// Engine evaluates the rules. Observe must be called with each stream's
// events in stream order; it is safe to call from one goroutine per stream.
//
// An alert counts for suppression once ALERTS has stored it. One that
// ALERTS refuses stays queued, in order, and is retried with back-off (see
// Config.RetryMin) by Run, or else by the next Observe, Tick or
// ChainBroken; while it waits, its incident raises no second alert at the
// same severity. The queue lives in memory: alerts still in it when the
// process stops are lost.
//
// The history is asked outside the engine's lock, within
// Config.HistoryTimeout, so a slow ClickHouse delays only the event that
// asked (never the other stream, Tick or ChainBroken).
type Engine struct {
	cfg     Config
	history History
	pub     Publisher
	log     *slog.Logger
	now     func() time.Time // the wall clock, for back-off; the rules run on event time

	// flushing is held by the one goroutine storing the queue. It is taken
	// before mu, and given up only while mu is held and the queue is
	// empty or backing off, so that an alert queued by a caller who found
	// it taken is always seen by its holder.
	flushing sync.Mutex
	wake     chan struct{} // tells Run a store failed

	mu       sync.Mutex
	byIP     map[string]*window // denials per source address (brute force)
	sprayIP  map[string]*window // presentations per source address (spraying)
	failKey  map[string]*window // denials per key (failure burst)
	deadKey  map[string]*window // dead-key presentations per key
	netsKey  map[string]*window // successful uses per key, by network
	seenNet  map[string]time.Time
	lastUse  map[string]time.Time
	firstUse map[string]time.Time
	incident map[string]raised   // stored alerts, by incident: what suppression counts
	inflight map[string]*pending // the latest queued alert of each incident
	queue    []*pending          // alerts not yet stored, oldest first
	// raisedN and suppressedN count alerts stored on ALERTS and alerts an
	// incident's suppression window kept quiet; for metrics.
	raisedN, suppressedN uint64
	pubFails             int       // failed attempts to store the queue's head in a row
	retryAt              time.Time // no attempt to store before this (zero: none failed)
	// histFails counts failed history queries in a row; the history rules
	// leave the history alone until histRetry, so that a ClickHouse that
	// times out costs one event a timeout per back-off, not every event.
	histFails int
	histRetry time.Time
	lastSeq   map[string]uint64
	stuck     time.Time // when the sink was first seen stuck
}

// pending is an alert queued to be stored, with its envelope.
type pending struct {
	alert
	env domain.Envelope
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
		now: time.Now, wake: make(chan struct{}, 1),
		byIP: map[string]*window{}, sprayIP: map[string]*window{}, failKey: map[string]*window{},
		deadKey: map[string]*window{}, netsKey: map[string]*window{}, seenNet: map[string]time.Time{},
		lastUse: map[string]time.Time{}, firstUse: map[string]time.Time{},
		incident: map[string]raised{}, inflight: map[string]*pending{}, lastSeq: map[string]uint64{},
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
	at   time.Time
	supp time.Duration
	// idKey, when set, is what the alert's event id is derived from, in
	// place of its incident, severity, evidence and window: for alerts
	// whose window or evidence come from each node's clock.
	idKey string
}

// Observe evaluates the rules on one event of USAGE or KEYS and raises
// the alerts it triggers. It returns once they are stored, queued behind
// earlier alerts that wait for a retry, or handed to a concurrent call
// that is storing; it returns an error when ALERTS refused one in this
// call (the alert stays queued and is retried).
func (e *Engine) Observe(ctx context.Context, env domain.Envelope) error {
	ev, err := env.Decode()
	return e.ObserveDecoded(ctx, env, ev, err)
}

// ObserveDecoded is Observe for an event whose data the caller decoded
// already (ev, decodeErr = env.Decode()): a node's USAGE subscription
// decodes each event once for every follower.
func (e *Engine) ObserveDecoded(ctx context.Context, env domain.Envelope, ev domain.Event, decodeErr error) error {
	_, isUse := ev.(domain.KeyUsed)
	var p probe
	var ans answers
	if decodeErr == nil && isUse && e.history != nil {
		e.mu.Lock()
		p = e.probe(env)
		e.mu.Unlock()
		ans = e.ask(ctx, env, p)
	}
	var out []alert
	e.mu.Lock()
	e.historyAnswered(ans)
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
	if d, ok := ev.(domain.KeyDenied); decodeErr == nil && ok {
		out = append(out, e.denied(env, d)...)
	}
	if decodeErr == nil && isUse {
		out = append(out, e.used(env, p, ans)...)
	}
	err := e.enqueue(out)
	e.mu.Unlock()
	return errors.Join(err, e.flush(ctx))
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

// probe is what the history rules need to ask about one use, read from
// memory under the lock before the history is asked without it.
type probe struct {
	last   time.Time // the key's last use in memory, if lastOK
	lastOK bool
	newNet bool         // the new-source rule runs: the network is not known within the lookback
	net    netip.Prefix // its network
	estMem bool         // memory alone shows the key established
	skip   bool         // the history is backing off after a failure
}

// answers is what the history said, outside the lock.
type answers struct {
	asked            bool
	err              error
	last             time.Time // the key's last use before the event (dormant)
	lastOK, haveLast bool
	est              bool // the key was established (new source)
	known, haveKnown bool // the key used the network within the lookback
}

func (e *Engine) probe(env domain.Envelope) probe {
	var p probe
	p.last, p.lastOK = e.lastUse[env.KeyID]
	if net, ok := network(sourceIP(env)); ok {
		if seen, ok := e.seenNet[env.KeyID+"|"+net.String()]; !ok || env.Time.Sub(seen) >= e.cfg.NewSourceLookback {
			p.newNet, p.net = true, net
			p.estMem = e.establishedMem(env.KeyID, env.Time)
		}
	}
	p.skip = e.now().Before(e.histRetry)
	return p
}

// ask puts the probe's questions to the history, within HistoryTimeout
// for all of them. It runs without the lock. After a failure it asks
// nothing more: the rules treat what it did not learn as no evidence.
func (e *Engine) ask(ctx context.Context, env domain.Envelope, p probe) answers {
	var a answers
	if p.skip || (p.lastOK && !p.newNet) {
		return a
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.HistoryTimeout)
	defer cancel()
	key, t := env.KeyID, env.Time
	a.asked = true
	if !p.lastOK {
		a.last, a.lastOK, a.err = e.history.LastUsedBefore(ctx, key, t)
		a.haveLast = a.err == nil
	}
	if !p.newNet || a.err != nil {
		return a
	}
	a.est = p.estMem
	if !a.est {
		var last time.Time
		var ok bool
		last, ok, a.err = e.history.LastUsedBefore(ctx, key, t.Add(-establishedAfter))
		a.est = a.err == nil && ok && t.Sub(last) < e.cfg.NewSourceLookback
	}
	if a.est && a.err == nil {
		a.known, a.err = e.history.UsedFrom(ctx, key, p.net, t.Add(-e.cfg.NewSourceLookback), t)
		a.haveKnown = a.err == nil
	}
	return a
}

// historyAnswered backs the history off after a failed question and
// restores it after an answered one.
func (e *Engine) historyAnswered(a answers) {
	if !a.asked {
		return
	}
	if a.err == nil {
		e.histFails, e.histRetry = 0, time.Time{}
		return
	}
	e.histFails++
	d := domain.Backoff(e.histFails, e.cfg.RetryMin, e.cfg.RetryMax)
	e.histRetry = e.now().Add(d)
	e.log.Warn("history unavailable: the new-source and dormant-key rules go without it until it answers",
		"failures", e.histFails, "retry_in", d, "err", a.err)
}

// used runs the rules on a use. The probe p and its answers a were taken
// before the lock was, so memory is read again here: an event observed in
// between may have taught it more than the history said.
func (e *Engine) used(env domain.Envelope, p probe, a answers) []alert {
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
	// Dormant: the last use before this one, from memory (now, or when
	// the probe read it, in case it was forgotten since) or the log.
	last, ok := e.lastUse[key]
	if !ok {
		last, ok = p.last, p.lastOK
	}
	if !ok && a.haveLast {
		last, ok = a.last, a.lastOK
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
		hadUse := e.establishedMem(key, env.Time) || p.estMem || a.est
		if e.history != nil && hadUse {
			// Unasked (the history failed, or memory changed since the
			// probe): no evidence either way, so stay quiet.
			known = a.known || !a.haveKnown
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

// establishedMem reports whether memory shows that a key has habits to
// deviate from: it was already in use a day before t, within the
// new-source lookback. A new key finding its first few networks is not an
// anomaly. The history answers the same question for uses before the
// engine started (see ask).
func (e *Engine) establishedMem(key string, t time.Time) bool {
	first, ok := e.firstUse[key]
	return ok && t.Sub(first) >= establishedAfter && t.Sub(first) < e.cfg.NewSourceLookback
}

// establishedAfter is how long a key must have been in use before a new
// network counts as a deviation.
const establishedAfter = 24 * time.Hour

// Tick raises the reminders (rotation age, expiry) over the current keys
// and the pipeline rule for a stuck sink; call it periodically. Like
// Observe, it returns an error when ALERTS refused an alert in this call.
//
// These alerts come from each node's clock, so their ids are derived from
// the incident and a bucket of time, never from now itself: nodes ticking
// a little apart raise the same ids, and ALERTS stores each alert once.
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
			}, at: now, supp: c.ReminderSuppress,
				// The how-manyth reminder this is: one per ReminderSuppress
				// from the day the secret became due.
				idKey: fmt.Sprintf("%s:%s|%d", RuleRotationDue, k.ID, (age-c.RotationAge)/c.ReminderSuppress)})
		}
		if left := k.ExpiresAt.Sub(now); left <= c.ExpiringWithin {
			out = append(out, alert{AlertRaised: domain.AlertRaised{
				Rule: RuleExpiringSoon, Severity: domain.SeverityLow, Incident: RuleExpiringSoon + ":" + k.ID + ":" + k.ExpiresAt.Format(time.RFC3339),
				Summary: fmt.Sprintf("key %s (%s) expires in %d hours", k.ID, k.Name, int(left.Hours())),
				KeyIDs:  []string{k.ID}, WindowStart: now, WindowEnd: k.ExpiresAt,
			}, at: now, supp: c.ExpiringWithin + time.Hour,
				// One reminder per expiry date, which the incident names.
				idKey: RuleExpiringSoon + ":" + k.ID + ":" + k.ExpiresAt.Format(time.RFC3339)})
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
			}, at: now, supp: sinkStuckSuppress,
				// The hour it is raised in: each node sees the sink stuck from
				// its own first tick, but all of them within a tick or two.
				idKey: fmt.Sprintf("%s|%d", RuleSinkStuck, now.Truncate(sinkStuckSuppress).Unix())})
		}
	} else {
		e.stuck = time.Time{}
	}
	e.gc(now)
	err := e.enqueue(out)
	e.mu.Unlock()
	return errors.Join(err, e.flush(ctx))
}

// sinkStuckSuppress is how often a stuck sink is raised again.
const sinkStuckSuppress = time.Hour

// ChainBroken raises the pipeline alert for a hash chain that does not
// verify; the audit verifier calls it.
func (e *Engine) ChainBroken(ctx context.Context, now time.Time, eventID, why string) error {
	e.mu.Lock()
	err := e.enqueue([]alert{{AlertRaised: domain.AlertRaised{
		Rule: RuleChainBroken, Severity: domain.SeverityCritical, Incident: RuleChainBroken + ":" + eventID,
		Summary: "audit chain broken at event " + eventID + ": " + why, Evidence: []string{eventID},
	}, at: now, supp: 24 * time.Hour}})
	e.mu.Unlock()
	return errors.Join(err, e.flush(ctx))
}

// ForgedEvent raises the critical alert for an event stored on a ledger
// stream that no trusted writer signed: someone with access to NATS wrote
// it, and keyledger did not apply it.
func (e *Engine) ForgedEvent(ctx context.Context, now time.Time, env domain.Envelope) error {
	q := Quarantined{Stream: env.Stream, Seq: env.Seq, Subject: env.Subject(), Why: env.Forged, EventID: env.ID.String(), Type: env.Type}
	if env.Type == "" {
		q.EventID = ""
	}
	if k := nonEmptyKey(env); k != nil {
		q.KeyID = k[0]
	}
	return e.Quarantine(ctx, now, q)
}

// Pass tells the engine that the message at seq of stream is not one it
// observes (it was quarantined), so that the next one is no sequence gap.
func (e *Engine) Pass(stream string, seq uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if last, ok := e.lastSeq[stream]; ok && seq > last {
		e.lastSeq[stream] = seq
	}
}

// Quarantined is a stored message that the event store's verdict keeps out
// of every projection.
type Quarantined struct {
	Stream  string
	Seq     uint64
	Subject string
	// Writer is the writer the message names, "" when it is unsigned.
	Writer string
	Why    error
	// EventID, Type and KeyID describe the message's first event, when
	// it has one that decodes.
	EventID, Type, KeyID string
}

// Quarantine raises the critical forged_event alert for a quarantined
// message, naming its writer and its subject: someone with access to NATS
// wrote it, and keyledger applied it nowhere.
func (e *Engine) Quarantine(ctx context.Context, now time.Time, q Quarantined) error {
	why := "unsigned"
	if q.Why != nil {
		why = domain.ErrorMessage(q.Why)
	}
	writer := q.Writer
	if writer == "" {
		writer = "(unsigned)"
	}
	what := "message"
	if q.Type != "" {
		what = q.Type + " event " + q.EventID
	}
	incident := fmt.Sprintf("%s:%s:%d", RuleForgedEvent, q.Stream, q.Seq)
	var evidence, keys []string
	if q.EventID != "" {
		evidence = []string{q.EventID}
	}
	if q.KeyID != "" {
		keys = []string{q.KeyID}
	}
	e.mu.Lock()
	err := e.enqueue([]alert{{AlertRaised: domain.AlertRaised{
		Rule: RuleForgedEvent, Severity: domain.SeverityCritical, Incident: incident,
		Summary:  fmt.Sprintf("forged %s at %s sequence %d on subject %s by writer %s was quarantined: %s", what, q.Stream, q.Seq, q.Subject, writer, why),
		Evidence: evidence,
		KeyIDs:   keys,
	}, at: now, supp: 24 * time.Hour}})
	e.mu.Unlock()
	return errors.Join(err, e.flush(ctx))
}

// nonEmptyKey names the key a forged event claims to be about, when it is
// a key's event.
func nonEmptyKey(env domain.Envelope) []string {
	if env.Kind() == domain.KindKey && env.KeyID != "" {
		return []string{env.KeyID}
	}
	return nil
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

// enqueue keeps an alert only when its incident has not been raised
// within the suppression window, or has been raised at a lower severity
// (an escalation, which then resets the window), and queues it to be
// stored. "Raised" is stored or queued: an alert waiting for ALERTS to take
// it is not raised twice.
func (e *Engine) enqueue(in []alert) error {
	var errs []error
	for _, a := range in {
		if e.quiet(a.Incident, a.Severity, a.at, a.supp) {
			continue
		}
		if prev, ok := e.last(a.Incident); ok && a.at.Sub(prev.at) < a.supp {
			a.Escalation = true
		}
		key := domain.UnknownKeyID
		if len(a.KeyIDs) > 0 {
			key = a.KeyIDs[0]
		}
		env, err := domain.NewEnvelope(alertID(a), key, a.AlertRaised, a.at, "keyledger-alerts", nil)
		if err != nil {
			// Nothing a retry would change: the alert cannot be encoded.
			e.log.Error("raise alert: cannot encode it", "rule", a.Rule, "incident", a.Incident, "err", err)
			errs = append(errs, fmt.Errorf("alert %s: %w", a.Incident, err))
			continue
		}
		env.Seal("")
		p := &pending{alert: a, env: env}
		e.inflight[a.Incident] = p
		e.queue = append(e.queue, p)
	}
	return errors.Join(errs...)
}

// last returns the latest raising of an incident: its queued alert if it
// has one, else its stored one.
func (e *Engine) last(incident string) (raised, bool) {
	if p, ok := e.inflight[incident]; ok {
		return raised{at: p.at, severity: p.Severity}, true
	}
	r, ok := e.incident[incident]
	return r, ok
}

// quiet reports whether enqueue would drop an alert of incident at
// severity raised at at. A rule asks before it builds an alert: during a
// long incident, building every suppressed alert cost as much as the
// incident was large, on every event.
func (e *Engine) quiet(incident, severity string, at time.Time, supp time.Duration) bool {
	prev, ok := e.last(incident)
	q := ok && at.Sub(prev.at) < supp && domain.SeverityRank(severity) <= domain.SeverityRank(prev.severity)
	if q {
		e.suppressedN++
	}
	return q
}

// alertID is derived from the incident and its first evidence (or the
// alert's idKey), so that nodes evaluating the same events raise the same
// id and JetStream stores the alert once.
func alertID(a alert) uuid.UUID {
	h := sha256.New()
	if a.idKey != "" {
		fmt.Fprintf(h, "%s|%s", a.idKey, a.Severity)
	} else {
		fmt.Fprintf(h, "%s|%s|%s|%d", a.Incident, a.Severity, strings.Join(a.Evidence, ","), a.WindowStart.UnixMilli())
	}
	return uuid.NewHash(sha256.New(), uuid.NameSpaceOID, h.Sum(nil), 8)
}

// publishTimeout bounds one attempt to store an alert.
const publishTimeout = 10 * time.Second

// flush stores the queued alerts, oldest first, until the queue is empty
// or one is refused. A caller that finds another one storing leaves its
// alerts to it (see flushing).
func (e *Engine) flush(ctx context.Context) error {
	if !e.flushing.TryLock() {
		return nil
	}
	return e.drain(ctx)
}

// drain is flush with flushing held; it releases it.
func (e *Engine) drain(ctx context.Context) error {
	e.mu.Lock()
	for {
		if len(e.queue) == 0 || e.now().Before(e.retryAt) {
			e.flushing.Unlock()
			e.mu.Unlock()
			return nil
		}
		p := e.queue[0]
		e.mu.Unlock()
		pctx, cancel := context.WithTimeout(ctx, publishTimeout)
		_, err := e.pub.PublishAlert(pctx, p.env)
		cancel()
		if err == nil {
			e.log.Info("alert raised", "rule", p.Rule, "severity", p.Severity, "incident", p.Incident, "escalation", p.Escalation)
		}
		e.mu.Lock()
		if domain.ErrorCode(err) == domain.EINVALID {
			// No retry would change the answer, and the queue behind
			// it must not wait for one. It counts as raised, so that
			// the incident does not rebuild it on every event.
			e.log.Error("ALERT DROPPED: ALERTS can never store it", "rule", p.Rule, "incident", p.Incident, "err", err)
			err = nil
		}
		if err != nil {
			e.pubFails++
			d := domain.Backoff(e.pubFails, e.cfg.RetryMin, e.cfg.RetryMax)
			e.retryAt = e.now().Add(d)
			fails, queued := e.pubFails, len(e.queue)
			e.flushing.Unlock()
			e.mu.Unlock()
			select {
			case e.wake <- struct{}{}:
			default:
			}
			e.log.Error("alert not stored; it stays queued and is retried", "rule", p.Rule, "incident", p.Incident,
				"attempts", fails, "retry_in", d, "queued", queued, "err", err)
			return fmt.Errorf("store alert %s: %w", p.Incident, err)
		}
		e.queue[0] = nil
		e.queue = e.queue[1:]
		e.raisedN++
		e.pubFails, e.retryAt = 0, time.Time{}
		e.incident[p.Incident] = raised{at: p.at, severity: p.Severity}
		if e.inflight[p.Incident] == p {
			delete(e.inflight, p.Incident)
		}
	}
}

// Run retries the alerts ALERTS refused, after their back-off, until ctx
// ends; then it returns nil. Without it they are retried only by the next
// Observe, Tick or ChainBroken that comes after their back-off.
func (e *Engine) Run(ctx context.Context) error {
	for {
		e.mu.Lock()
		// Without a failure there is nothing to retry: whoever queued an
		// alert is storing it.
		wait := time.Duration(-1)
		if len(e.queue) > 0 && !e.retryAt.IsZero() {
			wait = max(0, e.retryAt.Sub(e.now()))
		}
		e.mu.Unlock()
		if !e.sleep(ctx, wait) {
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		e.flushing.Lock()
		_ = e.drain(ctx) // drain logs its failures
	}
}

// sleep waits for d (forever when negative) and reports true, or returns
// false early when a store fails or ctx ends.
func (e *Engine) sleep(ctx context.Context, d time.Duration) bool {
	var due <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		due = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-e.wake:
		return false
	case <-due:
		return true
	}
}

// Counts returns how many alerts the engine stored on ALERTS and how many
// their incident's suppression window kept quiet, since it started.
func (e *Engine) Counts() (raised, suppressed uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.raisedN, e.suppressedN
}

// Pending returns how many alerts wait to be stored on ALERTS; for
// metrics (alert on a value that stays above zero).
func (e *Engine) Pending() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.queue)
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
