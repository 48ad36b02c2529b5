package alerts

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go/jetstream"
)

// Webhook request headers. The signature is
//
//	X-Keyledger-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
//
// where timestamp is the X-Keyledger-Timestamp header (Unix seconds): a
// receiver recomputes it, compares in constant time, and rejects old
// timestamps, so a captured request cannot be replayed later.
const (
	HeaderSignature = "X-Keyledger-Signature"
	HeaderTimestamp = "X-Keyledger-Timestamp"
	HeaderEventID   = "X-Keyledger-Event-Id"
	HeaderIdemKey   = "Idempotency-Key"
)

// WebhookConfig is one receiver of alerts.
type WebhookConfig struct {
	URL string
	// Secret keys the HMAC signature. It comes from the environment or a
	// file, never from a flag, and is never logged.
	Secret []byte
	// MinSeverity drops (acknowledges without delivering) lower alerts.
	MinSeverity string
	// Rules limits delivery to these rules; empty means all.
	Rules []string
	// Timeout bounds one delivery attempt (10s).
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts (1s, 5m).
	MinBackoff, MaxBackoff time.Duration
}

// Webhooks delivers every alert to each configured receiver at least once.
// Each receiver has its own durable consumer on ALERTS, so an alert stays
// pending until that receiver answered 2xx, across restarts of keyledger.
// A failing receiver is retried with exponential back-off for as long as it
// fails: alerts are never dropped, and the pending count and failure
// counters show the backlog. Receivers deduplicate on Idempotency-Key.
type Webhooks struct {
	js     jetstream.JetStream
	hooks  []WebhookConfig
	log    *slog.Logger
	client *http.Client

	delivered, failures, skipped atomic.Uint64
	mu                           sync.Mutex
	consumers                    []jetstream.Consumer
}

// NewWebhooks returns a deliverer; it does nothing until Run.
func NewWebhooks(js jetstream.JetStream, hooks []WebhookConfig, logger *slog.Logger) *Webhooks {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	for i := range hooks {
		h := &hooks[i]
		if h.Timeout <= 0 {
			h.Timeout = 10 * time.Second
		}
		if h.MinBackoff <= 0 {
			h.MinBackoff = time.Second
		}
		if h.MaxBackoff <= 0 {
			h.MaxBackoff = 5 * time.Minute
		}
		if h.MinSeverity == "" {
			h.MinSeverity = domain.SeverityLow
		}
	}
	return &Webhooks{js: js, hooks: hooks, log: logger.With("component", "webhooks"), client: &http.Client{}}
}

// durableName derives a consumer name from the URL, so a receiver keeps its
// position across restarts and two receivers never share one.
func durableName(url string) string {
	sum := sha256.Sum256([]byte(url))
	return "webhook-" + hex.EncodeToString(sum[:8])
}

// Run delivers until ctx ends.
func (w *Webhooks) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, h := range w.hooks {
		wg.Go(func() { w.run(ctx, h) })
	}
	wg.Wait()
	return nil
}

func (w *Webhooks) run(ctx context.Context, h WebhookConfig) {
	log := w.log.With("webhook", redactURL(h.URL))
	cfg := jetstream.ConsumerConfig{
		Durable:       durableName(h.URL),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxDeliver:    -1,
		MaxAckPending: 1, // in order, one alert at a time per receiver
	}
	for _, r := range h.Rules {
		cfg.FilterSubjects = append(cfg.FilterSubjects, "keyledger.alerts."+r+".>")
	}
	var cons jetstream.Consumer
	for {
		var err error
		cons, err = w.js.CreateOrUpdateConsumer(ctx, domain.StreamAlerts, cfg)
		if err == nil {
			break
		}
		log.Warn("webhook consumer unavailable", "err", err)
		if !sleep(ctx, h.MinBackoff) {
			return
		}
	}
	w.mu.Lock()
	w.consumers = append(w.consumers, cons)
	w.mu.Unlock()
	for ctx.Err() == nil {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if !sleep(ctx, h.MinBackoff) {
				return
			}
			continue
		}
		for msg := range batch.Messages() {
			w.deliver(ctx, h, msg, log)
		}
	}
}

// deliver posts one alert until the receiver accepts it or ctx ends.
func (w *Webhooks) deliver(ctx context.Context, h WebhookConfig, msg jetstream.Msg, log *slog.Logger) {
	env, err := domain.UnmarshalEnvelope(msg.Data())
	if err != nil {
		log.Error("undecodable alert skipped", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	ev, err := env.Decode()
	a, ok := ev.(domain.AlertRaised)
	if err != nil || !ok {
		_ = msg.Term()
		return
	}
	if slices.Index(domain.Severities, a.Severity) < slices.Index(domain.Severities, h.MinSeverity) ||
		(len(h.Rules) > 0 && !slices.Contains(h.Rules, a.Rule)) {
		w.skipped.Add(1)
		_ = msg.Ack()
		return
	}
	backoff := h.MinBackoff
	for attempt := 1; ; attempt++ {
		err := w.post(ctx, h, env.ID.String(), msg.Data())
		if err == nil {
			if err := msg.DoubleAck(ctx); err != nil {
				log.Warn("ack after delivery", "event", env.ID, "err", err)
			}
			w.delivered.Add(1)
			return
		}
		w.failures.Add(1)
		log.Warn("webhook delivery failed; retrying", "event", env.ID, "attempt", attempt, "retry_in", backoff, "err", err)
		// Tell JetStream the alert is still being worked on, so it is
		// not handed out again while we wait.
		_ = msg.InProgress()
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(backoff*2, h.MaxBackoff)
	}
}

func (w *Webhooks) post(ctx context.Context, h WebhookConfig, eventID string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return err
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
		return fmt.Errorf("post: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}

// Sign returns the signature header value for a timestamp and body.
func Sign(secret []byte, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte("."))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// ErrBadSignature is returned by VerifySignature for any mismatch.
var ErrBadSignature = errors.New("webhook signature does not verify")

// VerifySignature checks a webhook request the way a receiver should: the
// signature over "<timestamp>.<body>" in constant time, and a timestamp no
// further than tolerance from now.
func VerifySignature(secret []byte, timestamp string, body []byte, header string, now time.Time, tolerance time.Duration) error {
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: bad timestamp", ErrBadSignature)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: timestamp outside %s", ErrBadSignature, tolerance)
	}
	if !hmac.Equal([]byte(Sign(secret, timestamp, body)), []byte(header)) {
		return ErrBadSignature
	}
	return nil
}

// WebhookStats counts deliveries for metrics.
type WebhookStats struct {
	Delivered, FailedAttempts, Skipped uint64
	// Pending is alerts not yet accepted, over every receiver.
	Pending uint64
}

// Stats returns the counters and the receivers' backlog.
func (w *Webhooks) Stats(ctx context.Context) WebhookStats {
	s := WebhookStats{Delivered: w.delivered.Load(), FailedAttempts: w.failures.Load(), Skipped: w.skipped.Load()}
	w.mu.Lock()
	cs := slices.Clone(w.consumers)
	w.mu.Unlock()
	for _, c := range cs {
		if info, err := c.Info(ctx); err == nil {
			s.Pending += info.NumPending + uint64(info.NumAckPending)
		}
	}
	return s
}

// redactURL keeps a URL's scheme, host and path for logs, dropping its
// user info and query, which may carry credentials.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
