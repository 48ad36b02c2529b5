package alerts

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyledger/keyledger/domain"
)

// A webhook request is
//
//	POST <url>
//	Content-Type: application/json
//	Idempotency-Key: <alert event id>
//	X-Keyledger-Event-Id: <alert event id>
//	X-Keyledger-Timestamp: <unix seconds of this attempt>
//	X-Keyledger-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
//
//	<the alert event exactly as stored on ALERTS: the domain envelope with
//	 id, type "alert.raised", time, schema_version, data (domain.AlertRaised),
//	 hash, …>
//
// Every attempt carries a fresh timestamp and signature. A receiver
// recomputes the HMAC over the raw body (VerifySignature), compares it in
// constant time and rejects timestamps far from its clock, so a captured
// request cannot be replayed later; it drops a second request with an
// Idempotency-Key it has already accepted, because delivery is at least
// once. Any 2xx accepts the alert; anything else, a redirect included, or no
// answer within the timeout is a failure that is retried.
const (
	HeaderIdemKey   = "Idempotency-Key"
	HeaderEventID   = "X-Keyledger-Event-Id"
	HeaderTimestamp = "X-Keyledger-Timestamp"
	HeaderSignature = "X-Keyledger-Signature"
)

// DefaultSignatureTolerance is how far a webhook timestamp may be from the
// receiver's clock when VerifySignature is given no tolerance.
const DefaultSignatureTolerance = 5 * time.Minute

// WebhookConfig is one receiver of alerts. Zero durations take the
// defaults.
type WebhookConfig struct {
	// URL receives the POSTs. It names the receiver's durable consumer
	// (DurableName), so changing it starts a new subscription. It is
	// logged only as scheme and host: paths and queries of webhook URLs
	// often carry tokens.
	URL string
	// Secret keys the HMAC signature; it may not be empty. It comes from
	// the environment or a file, never from a flag, and is never logged.
	Secret []byte
	// MinSeverity is the lowest severity delivered (low). Lower alerts are
	// acknowledged without a request. An alert whose severity this
	// version does not know is delivered.
	MinSeverity string
	// Rules limits delivery to these rules (the consumer filters on
	// keyledger.alerts.<rule>.*); empty means every rule.
	Rules []string
	// Timeout bounds one attempt (10s).
	Timeout time.Duration
	// MinBackoff is the wait after the first failed attempt (1s); each
	// further failure doubles it, up to MaxBackoff (5m).
	MinBackoff, MaxBackoff time.Duration
	// MaxAge is how long one alert is retried, counted in back-off waits
	// (72h, as long as the large webhook senders retry). When the next
	// attempt would come later than that, the alert is given up: logged
	// at error level, counted in Dropped, and terminated on its consumer
	// so the alerts behind it flow again. It stays on ALERTS, in the audit
	// log and in GET /v1/alerts. Negative retries forever.
	MaxAge time.Duration
}

const (
	defaultWebhookTimeout = 10 * time.Second
	defaultMinBackoff     = time.Second
	defaultMaxBackoff     = 5 * time.Minute
	defaultMaxAge         = 72 * time.Hour
	// startSkew moves a new receiver's start back a little, so that
	// neither a NATS server whose clock is behind ours nor an alert
	// raised while the consumer was being created is missed.
	startSkew = time.Minute
	// fetchWait is the longest one pull waits; it bounds how long Run
	// takes to return after ctx ends.
	fetchWait = time.Second
	// maxInfraWait caps the wait between attempts to reach JetStream
	// itself, so delivery resumes soon after NATS is back.
	maxInfraWait = 5 * time.Second
)

func (h WebhookConfig) withDefaults() WebhookConfig {
	if h.Timeout <= 0 {
		h.Timeout = defaultWebhookTimeout
	}
	if h.MinBackoff <= 0 {
		h.MinBackoff = defaultMinBackoff
	}
	if h.MaxBackoff <= 0 {
		h.MaxBackoff = defaultMaxBackoff
	}
	h.MinBackoff = min(h.MinBackoff, h.MaxBackoff)
	if h.MaxAge == 0 {
		h.MaxAge = defaultMaxAge
	}
	if h.MinSeverity == "" {
		h.MinSeverity = domain.SeverityLow
	}
	h.Rules = slices.Clone(h.Rules)
	return h
}

// validate returns an EINVALID error for a configuration that could never
// deliver (or never deliver safely). Nothing secret goes into the message.
func (h WebhookConfig) validate() error {
	u, err := url.Parse(h.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return domain.Errorf(domain.EINVALID, "bad_webhook", "webhook %s: not an http(s) URL", redactURL(h.URL))
	}
	if len(h.Secret) == 0 {
		return domain.Errorf(domain.EINVALID, "bad_webhook", "webhook %s: no secret; unsigned alerts could be forged", redactURL(h.URL))
	}
	if !slices.Contains(domain.Severities, h.MinSeverity) {
		return domain.Errorf(domain.EINVALID, "bad_webhook", "webhook %s: minimum severity %q is not one of %v", redactURL(h.URL), h.MinSeverity, domain.Severities)
	}
	for _, r := range h.Rules {
		if r == "" || strings.ContainsAny(r, ".*> \t\r\n") {
			return domain.Errorf(domain.EINVALID, "bad_webhook", "webhook %s: rule %q is not a rule name", redactURL(h.URL), r)
		}
	}
	return nil
}

// backoff returns the wait after failed attempt n (1 is the first).
func (h WebhookConfig) backoff(n uint64) time.Duration {
	return domain.Backoff(int(min(n, math.MaxInt32)), h.MinBackoff, h.MaxBackoff)
}

// exhausted reports whether, after failed attempt n, the next attempt would
// come more than MaxAge of back-off after the first.
func (h WebhookConfig) exhausted(n uint64) bool {
	if h.MaxAge < 0 {
		return false
	}
	var total time.Duration
	for i := uint64(1); i <= n; i++ {
		if total += h.backoff(i); total > h.MaxAge {
			return true
		}
	}
	return false
}

// DurableName is the name of a receiver's durable consumer on ALERTS,
// derived from a hash of its URL so that a receiver keeps its place across
// restarts, every keyledger node with the same receiver shares one
// consumer, and the name does not reveal the URL.
func DurableName(url string) string {
	sum := sha256.Sum256([]byte(url))
	return "webhook-" + hex.EncodeToString(sum[:8])
}

// Webhooks delivers alerts to configured receivers, at least once each.
//
// Every receiver has its own durable pull consumer on ALERTS, so an alert
// stays on it until that receiver answered 2xx, across restarts, and one
// slow receiver never holds up another. Several keyledger nodes with the
// same receiver share its consumer and deliver each alert once between
// them; they must configure it alike, since the last to start sets the
// consumer's filter. A receiver gets one alert at a time, in stream order.
//
// A failed attempt is handed back to JetStream with NakWithDelay, the delay
// doubling with the message's delivery count. The back-off therefore lives
// in the server: it survives a restart of this process, the alert goes to
// whichever node pulls next, and no message is held (and no ack deadline
// has to be kept alive) while it waits. The consumer's BackOff setting
// would not do: it only applies when an ack deadline expires, so every
// retry would first wait out a whole AckWait.
//
// A receiver that fails for longer than MaxAge gives up on the alert at
// hand, loudly, rather than block every later alert behind it for ever.
type Webhooks struct {
	js     jetstream.JetStream
	hooks  []WebhookConfig
	log    *slog.Logger
	client *http.Client
	start  time.Time

	delivered, failed, skipped, dropped atomic.Uint64

	mu        sync.Mutex
	consumers map[string]jetstream.Consumer

	// verdict, when set, is the event store's verdict on a message of
	// ALERTS: a quarantined one reaches no receiver.
	verdict func(subject string, data []byte, writer, signature string, storedAt time.Time, typ, actor string) error
}

// SetVerdict makes the deliverer ask the event store about each message
// before delivering it: one no node wrote (quarantined) reaches no
// receiver. typ and actor are those of the message's one event.
func (w *Webhooks) SetVerdict(fn func(subject string, data []byte, writer, signature string, storedAt time.Time, typ, actor string) error) {
	w.verdict = fn
}

// NewWebhooks returns a deliverer for hooks. It does nothing until Run. A
// receiver that has no consumer yet gets the alerts stored from about now
// on, not the whole history of ALERTS.
func NewWebhooks(js jetstream.JetStream, hooks []WebhookConfig, logger *slog.Logger) *Webhooks {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &Webhooks{
		js:    js,
		log:   logger.With("component", "webhooks"),
		start: time.Now().Add(-startSkew),
		client: &http.Client{
			// A redirect is a failure, not a new destination: the
			// body and its signature go only where configured.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		consumers: map[string]jetstream.Consumer{},
	}
	for _, h := range hooks {
		w.hooks = append(w.hooks, h.withDefaults())
	}
	return w
}

// Validate returns an EINVALID error for a configuration that cannot work:
// a URL that is not http(s), an empty secret, an unknown severity, a rule
// name that is not a subject token, or one URL twice (they would share a
// consumer). The message names a receiver by scheme and host only.
func (w *Webhooks) Validate() error {
	seen := map[string]bool{}
	for _, h := range w.hooks {
		if err := h.validate(); err != nil {
			return err
		}
		if seen[h.URL] {
			return domain.Errorf(domain.EINVALID, "bad_webhook", "webhook %s configured twice", redactURL(h.URL))
		}
		seen[h.URL] = true
	}
	return nil
}

// Run delivers alerts until ctx ends, then returns nil. It returns
// Validate's error at once, before using JetStream. Failures of receivers
// or JetStream are retried, never returned.
func (w *Webhooks) Run(ctx context.Context) error {
	if err := w.Validate(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, h := range w.hooks {
		wg.Go(func() { w.run(ctx, h) })
	}
	wg.Wait()
	return nil
}

func (w *Webhooks) run(ctx context.Context, h WebhookConfig) {
	log := w.log.With("webhook", redactURL(h.URL), "durable", DurableName(h.URL))
	cons, ok := w.consumer(ctx, h, log)
	if !ok {
		return
	}
	log.Info("webhook delivering", "min_severity", h.MinSeverity, "rules", h.Rules)
	failures := 0
	for ctx.Err() == nil {
		msg, err := fetchAlert(cons)
		if err != nil {
			// A deleted consumer (an operator, a re-created stream) is
			// created again, starting a minute before this deliverer
			// was made; anything else is waited out.
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				log.Warn("webhook consumer gone; creating it again", "err", err)
				if cons, ok = w.consumer(ctx, h, log); !ok {
					return
				}
				continue
			}
			failures++
			if failures == 1 || failures%10 == 0 {
				log.Warn("fetch from ALERTS failed", "attempt", failures, "err", err)
			}
			if !hookSleep(ctx, min(h.backoff(uint64(failures)), maxInfraWait)) {
				return
			}
			continue
		}
		failures = 0
		if msg == nil {
			continue
		}
		if ctx.Err() != nil {
			// Hand it back at once rather than after AckWait, so the
			// next deliverer (here or on another node) starts with it.
			_ = msg.Nak()
			return
		}
		w.handle(ctx, h, msg, log)
	}
}

// consumer creates the receiver's durable consumer, or brings an existing
// one up to date with h, retrying until it exists or ctx is done. Where a
// consumer starts is fixed when it is created: an update keeps it.
func (w *Webhooks) consumer(ctx context.Context, h WebhookConfig, log *slog.Logger) (jetstream.Consumer, bool) {
	start := w.start
	cfg := jetstream.ConsumerConfig{
		Durable:       DurableName(h.URL),
		Description:   "keyledger: alerts to webhook " + redactURL(h.URL),
		DeliverPolicy: jetstream.DeliverByStartTimePolicy,
		OptStartTime:  &start,
		AckPolicy:     jetstream.AckExplicitPolicy,
		// Only an attempt in progress holds a message, so AckWait
		// matters only when a node dies during one.
		AckWait:       h.Timeout + 30*time.Second,
		MaxDeliver:    -1,
		MaxAckPending: 1,
	}
	for _, r := range h.Rules {
		cfg.FilterSubjects = append(cfg.FilterSubjects, "keyledger.alerts."+r+".*")
	}
	for attempt := uint64(1); ; attempt++ {
		cons, err := w.ensureConsumer(ctx, cfg)
		if err == nil {
			w.mu.Lock()
			w.consumers[h.URL] = cons
			w.mu.Unlock()
			return cons, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		// ErrConsumerExists is another node creating it at the same
		// moment: the next round updates it.
		if !errors.Is(err, jetstream.ErrConsumerExists) {
			log.Warn("cannot create webhook consumer yet", "attempt", attempt, "err", err)
		}
		if !hookSleep(ctx, min(h.backoff(attempt), maxInfraWait)) {
			return nil, false
		}
	}
}

func (w *Webhooks) ensureConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	cons, err := w.js.Consumer(ctx, domain.StreamAlerts, cfg.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return w.js.CreateConsumer(ctx, domain.StreamAlerts, cfg)
	}
	if err != nil {
		return nil, err
	}
	old := cons.CachedInfo().Config
	cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = old.DeliverPolicy, old.OptStartSeq, old.OptStartTime
	return w.js.UpdateConsumer(ctx, domain.StreamAlerts, cfg)
}

// fetchAlert waits up to fetchWait for the next alert; nil when none came.
func fetchAlert(cons jetstream.Consumer) (jetstream.Msg, error) {
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(fetchWait))
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	var msg jetstream.Msg
	for m := range batch.Messages() {
		msg = m
	}
	if err := batch.Error(); err != nil && msg == nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	return msg, nil
}

// alertHead is what forwarding needs of a stored alert. The body goes out
// as stored, so a node forwards alerts written by a newer keyledger (a
// rolling upgrade) without having to decode them.
type alertHead struct {
	ID    uuid.UUID `json:"id"`
	Type  string    `json:"type"`
	Actor string    `json:"actor"`
}

// handle makes one delivery attempt of msg and settles it: ack on 2xx or
// when filtered out, a delayed nak on failure, term when given up.
func (w *Webhooks) handle(ctx context.Context, h WebhookConfig, msg jetstream.Msg, log *slog.Logger) {
	var head alertHead
	if err := json.Unmarshal(msg.Data(), &head); err != nil || head.ID == uuid.Nil || head.Type != domain.TypeAlertRaised {
		log.Error("message on ALERTS is not an alert; not delivered", "subject", msg.Subject())
		w.dropped.Add(1)
		_ = msg.TermWithReason("not an alert")
		return
	}
	if w.verdict != nil {
		var stored time.Time
		if md, err := msg.Metadata(); err == nil {
			stored = md.Timestamp
		}
		h := msg.Headers()
		if err := w.verdict(msg.Subject(), msg.Data(), h.Get(domain.HdrWriter), h.Get(domain.HdrSignature), stored, head.Type, head.Actor); err != nil {
			log.Error("message on ALERTS is quarantined; not delivered", "subject", msg.Subject(), "why", err)
			w.dropped.Add(1)
			_ = msg.TermWithReason("quarantined")
			return
		}
	}
	// The subject is keyledger.alerts.<rule>.<severity>, the same
	// thing the consumer's rule filter looks at.
	var rule, severity string
	if tok := strings.Split(msg.Subject(), "."); len(tok) == 4 {
		rule, severity = tok[2], tok[3]
	}
	id := head.ID.String()
	log = log.With("event", id, "rule", rule, "severity", severity)
	if severityBelow(severity, h.MinSeverity) {
		w.skipped.Add(1)
		if err := msg.Ack(); err != nil {
			log.Debug("ack of filtered alert failed", "err", err)
		}
		return
	}
	var attempt uint64 = 1
	if md, err := msg.Metadata(); err == nil {
		attempt = md.NumDelivered
	}

	err := w.post(ctx, h, id, msg.Data())
	// Settling outlives ctx: an accepted alert must be acked even while
	// shutting down, or the receiver sees it again.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	switch {
	case err == nil:
		w.delivered.Add(1)
		if err := msg.DoubleAck(sctx); err != nil {
			// The alert will be delivered again; the receiver drops it
			// by its Idempotency-Key.
			log.Warn("ack after delivery failed", "err", err)
		}
		if attempt > 1 {
			log.Info("webhook delivered after retries", "attempts", attempt)
		}
	case ctx.Err() != nil:
		// Interrupted, not refused: hand it back without delay.
		_ = msg.Nak()
	case h.exhausted(attempt):
		w.failed.Add(1)
		w.dropped.Add(1)
		log.Error("WEBHOOK GAVE UP ON AN ALERT: the receiver did not accept it; it stays on ALERTS and in the audit log",
			"attempts", attempt, "max_age", h.MaxAge, "err", err)
		if err := msg.TermWithReason("webhook retries exhausted"); err != nil {
			log.Warn("term failed", "err", err)
		}
	default:
		w.failed.Add(1)
		d := h.backoff(attempt)
		// Once, then every tenth attempt: a receiver down for hours must
		// not flood the log.
		if attempt == 1 || attempt%10 == 0 {
			log.Warn("webhook delivery failed; retrying", "attempt", attempt, "retry_in", d, "err", err)
		}
		if err := msg.NakWithDelay(d); err != nil {
			log.Warn("nak failed; the alert comes back after the ack wait", "err", err)
		}
	}
}

// severityBelow reports whether severity ranks under floor. An unknown
// severity (rank 0) is delivered: a receiver filtering by severity must not
// lose alerts of a newer version it cannot rank.
func severityBelow(severity, floor string) bool {
	r := domain.SeverityRank(severity)
	return r != 0 && r < domain.SeverityRank(floor)
}

// post makes one attempt. Its error never contains the URL, which may
// carry a token.
func (w *Webhooks) post(ctx context.Context, h WebhookConfig, eventID string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return errors.New("post: cannot build the request")
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "keyledger-webhooks")
	req.Header.Set(HeaderIdemKey, eventID)
	req.Header.Set(HeaderEventID, eventID)
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, Sign(h.Secret, ts, body))
	resp, err := w.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("post: %w", err)
	}
	defer resp.Body.Close()
	// Read a little of the answer so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("receiver answered %d", resp.StatusCode)
	}
	return nil
}

// Sign returns the X-Keyledger-Signature value for a timestamp (Unix
// seconds, as sent in X-Keyledger-Timestamp) and a body:
// "sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body)).
func Sign(secret []byte, timestamp string, body []byte) string {
	return "sha256=" + hex.EncodeToString(webhookMAC(secret, timestamp, body))
}

func webhookMAC(secret []byte, timestamp string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte("."))
	m.Write(body)
	return m.Sum(nil)
}

// ErrBadSignature is wrapped by every VerifySignature error; its class is
// EUNAUTHORIZED.
var ErrBadSignature = domain.Errorf(domain.EUNAUTHORIZED, "bad_webhook_signature", "webhook signature does not verify")

// VerifySignature checks a webhook request as a receiver should: timestamp
// is the X-Keyledger-Timestamp header, body the raw request body, header
// the X-Keyledger-Signature header. It fails when the timestamp is more
// than tolerance (DefaultSignatureTolerance when not positive) from now, so
// a captured request cannot be replayed later, or when the HMAC does not
// match; the comparison takes constant time. Errors wrap ErrBadSignature.
func VerifySignature(secret []byte, timestamp string, body []byte, header string, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultSignatureTolerance
	}
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: timestamp is not Unix seconds", ErrBadSignature)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: timestamp more than %s from now", ErrBadSignature, tolerance)
	}
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	got, err := hex.DecodeString(hexSig)
	if !ok || err != nil || len(got) != sha256.Size {
		return fmt.Errorf("%w: malformed signature header", ErrBadSignature)
	}
	if !hmac.Equal(got, webhookMAC(secret, timestamp, body)) {
		return ErrBadSignature
	}
	return nil
}

// WebhookStats counts this deliverer's work since NewWebhooks, over every
// receiver, for metrics.
type WebhookStats struct {
	// Delivered counts alerts a receiver accepted (2xx).
	Delivered uint64
	// FailedAttempts counts attempts that were refused, timed out or
	// could not connect; each is retried unless given up.
	FailedAttempts uint64
	// Skipped counts alerts under a receiver's MinSeverity, acknowledged
	// without a request.
	Skipped uint64
	// Dropped counts alerts given up after MaxAge, and messages on ALERTS
	// that are not alerts. Alert on any increase.
	Dropped uint64
	// Pending is, as JetStream sees it, the alerts not yet settled on the
	// receivers' consumers (waiting, in flight or waiting for a retry),
	// whichever node delivers them.
	Pending uint64
}

// Stats returns the counters, and the backlog from JetStream (left at zero
// for a consumer JetStream cannot answer for within ctx).
func (w *Webhooks) Stats(ctx context.Context) WebhookStats {
	s := WebhookStats{
		Delivered:      w.delivered.Load(),
		FailedAttempts: w.failed.Load(),
		Skipped:        w.skipped.Load(),
		Dropped:        w.dropped.Load(),
	}
	w.mu.Lock()
	cs := make([]jetstream.Consumer, 0, len(w.consumers))
	for _, c := range w.consumers {
		cs = append(cs, c)
	}
	w.mu.Unlock()
	for _, c := range cs {
		if info, err := c.Info(ctx); err == nil {
			s.Pending += info.NumPending + uint64(info.NumAckPending)
		}
	}
	return s
}

// redactURL is a URL as it may be logged: scheme and host. User info, path
// and query are left out because webhook URLs often carry a token in them.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "(invalid URL)"
	}
	return u.Scheme + "://" + u.Host
}

func hookSleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
