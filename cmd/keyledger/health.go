package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// readyChecks are the checks of /readyz; api.Check says what each means.
func (m *Main) readyChecks() []api.Check {
	return []api.Check{
		{Name: "event_store", Run: m.store.Writable},
		{Name: "key_state", Run: m.projectionReady},
		{Name: "audit_chain", Run: m.auditReady},
		{Name: "audit_log", Optional: true, Run: m.auditLogReady},
		{Name: "audit_sink", Optional: true, Run: m.sinkReady},
	}
}

// meters counts what the wiring sees go wrong: appends and usage
// publications that failed. The api package counts HTTP requests and
// verification outcomes itself.
type meters struct {
	appended       *prometheus.CounterVec
	appendFailures *prometheus.CounterVec
	usagePublished *prometheus.CounterVec
	usageFailures  *prometheus.CounterVec
	usageDuration  *prometheus.HistogramVec
}

func newMeters() *meters {
	return &meters{
		appended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_events_appended_total", Help: "Events appended by this node, by stream.",
		}, []string{"stream"}),
		appendFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_append_failures_total", Help: "Lifecycle appends that failed, by error class (conflict is a lost race and is retried; internal means JetStream refused or did not answer).",
		}, []string{"class"}),
		usagePublished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_usage_events_published_total", Help: "Usage events stored (or, in async mode, buffered), by outcome code.",
		}, []string{"outcome"}),
		usageFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_usage_publish_failures_total", Help: "Usage events that could not be stored; their verifications answered 503.",
		}, []string{"outcome"}),
		usageDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyledger_usage_publish_duration_seconds", Help: "How long a verification waited for its usage event to be stored (the group commit's fsync), by outcome code.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"outcome"}),
	}
}

func (mt *meters) register(reg *prometheus.Registry) {
	reg.MustRegister(mt.appended, mt.appendFailures, mt.usagePublished, mt.usageFailures, mt.usageDuration)
	// Every series an alert rule watches exists from the start at 0, so
	// that increase() sees its first failure.
	for _, s := range []string{domain.StreamKeys, domain.StreamUsage} {
		mt.appended.WithLabelValues(s)
	}
	for _, c := range []string{domain.ECONFLICT, domain.EINTERNAL} {
		mt.appendFailures.WithLabelValues(c)
	}
	mt.usageFailures.WithLabelValues(domain.OutcomeValid)
}

// meteredStore counts the command service's appends.
type meteredStore struct {
	next interface {
		AppendAll(ctx context.Context, writes []domain.Write) (uint64, error)
		LastSeq(ctx context.Context, stream string) (uint64, error)
	}
	m *meters
}

func (s meteredStore) AppendAll(ctx context.Context, writes []domain.Write) (uint64, error) {
	seq, err := s.next.AppendAll(ctx, writes)
	if err != nil {
		s.m.appendFailures.WithLabelValues(domain.ErrorCode(err)).Inc()
		return seq, err
	}
	for _, w := range writes {
		for _, e := range w.Events {
			s.m.appended.WithLabelValues(e.StreamName()).Inc()
		}
	}
	return seq, nil
}

func (s meteredStore) LastSeq(ctx context.Context, stream string) (uint64, error) {
	return s.next.LastSeq(ctx, stream)
}

// meteredUsage counts and times the usage events the API publishes.
type meteredUsage struct {
	next keystate.UsageRecorder
	m    *meters
}

func (u meteredUsage) Publish(ctx context.Context, envs ...domain.Envelope) error {
	start := time.Now()
	err := u.next.Publish(ctx, envs...)
	return u.count(envs, err, time.Since(start))
}

// PublishOnce meters the services' idempotent path (api.OnceRecorder).
func (u meteredUsage) PublishOnce(ctx context.Context, envs ...domain.Envelope) error {
	o, ok := u.next.(api.OnceRecorder)
	if !ok {
		return u.Publish(ctx, envs...)
	}
	start := time.Now()
	err := o.PublishOnce(ctx, envs...)
	return u.count(envs, err, time.Since(start))
}

// usageCode is the outcome code of a usage event's data. The events this
// node writes start with it ({"code":"VALID",...}), which spares the hot
// path a decode; anything else is decoded.
func usageCode(data []byte) string {
	const prefix = `{"code":"`
	if rest, ok := bytes.CutPrefix(data, []byte(prefix)); ok {
		if i := bytes.IndexByte(rest, '"'); i >= 0 && bytes.IndexByte(rest[:i], '\\') < 0 {
			return string(rest[:i])
		}
	}
	var d struct {
		Code string `json:"code"`
	}
	_ = json.Unmarshal(data, &d)
	return d.Code
}

func (u meteredUsage) count(envs []domain.Envelope, err error, d time.Duration) error {
	took := d.Seconds()
	for _, e := range envs {
		code := usageCode(e.Data)
		if err != nil {
			u.m.usageFailures.WithLabelValues(code).Inc()
			continue
		}
		u.m.usagePublished.WithLabelValues(code).Inc()
		u.m.usageDuration.WithLabelValues(code).Observe(took)
	}
	if err == nil {
		u.m.appended.WithLabelValues(domain.StreamUsage).Add(float64(len(envs)))
	}
	return err
}

// statsCollector reads counters that other parts keep (the sink, the
// webhooks, ClickHouse, the projection) at every scrape.
type statsCollector struct {
	m *Main

	sinkEvents, sinkBatches, sinkErrors, sinkLag, sinkSeq *prometheus.Desc
	sinkAckPending                                        *prometheus.Desc
	chUp, chRestarts                                      *prometheus.Desc
	streamSeq                                             *prometheus.Desc
	hookDelivered, hookFailed, hookDropped, hookPending   *prometheus.Desc
}

func newStatsCollector(m *Main) *statsCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &statsCollector{
		m:              m,
		sinkEvents:     d("keyledger_audit_sink_events_total", "Events this node's sink inserted into ClickHouse and acked, by stream.", "stream"),
		sinkBatches:    d("keyledger_audit_sink_inserts_total", "Batch inserts into ClickHouse that succeeded, by stream.", "stream"),
		sinkErrors:     d("keyledger_audit_sink_insert_errors_total", "Batch inserts into ClickHouse that failed and were retried, by stream.", "stream"),
		sinkLag:        d("keyledger_audit_sink_lag", "Messages stored in JetStream but not yet acknowledged into ClickHouse, by stream (a pack of usage events is one message).", "stream"),
		sinkAckPending: d("keyledger_audit_sink_ack_pending", "Events handed to a sink and not yet acked: being inserted, or waiting to be handed out again after a sink died.", "stream"),
		sinkSeq:        d("keyledger_audit_sink_seq", "Highest stream sequence this node's sink inserted, by stream.", "stream"),
		chUp:           d("keyledger_clickhouse_up", "1 when ClickHouse answers a ping (1s), else 0."),
		chRestarts:     d("keyledger_clickhouse_restarts_total", "Restarts of the managed local clickhouse-server after it died."),
		streamSeq:      d("keyledger_stream_last_seq", "Last sequence of each stream; compare keyledger_keystate_applied_seq with stream=\"KEYS\".", "stream"),
		hookDelivered:  d("keyledger_webhook_deliveries_total", "Alerts a webhook receiver accepted."),
		hookFailed:     d("keyledger_webhook_failures_total", "Webhook attempts that were refused, timed out or could not connect (each is retried)."),
		hookDropped:    d("keyledger_webhook_dropped_total", "Alerts given up after their maximum age; alert on any increase."),
		hookPending:    d("keyledger_webhook_pending", "Alerts not yet accepted by every webhook receiver."),
	}
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sinkEvents, c.sinkBatches, c.sinkErrors, c.sinkLag, c.sinkSeq, c.sinkAckPending, c.chUp, c.chRestarts,
		c.streamSeq, c.hookDelivered, c.hookFailed, c.hookDropped, c.hookPending} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, s := range m.sink.Stats() {
		counter(c.sinkEvents, s.Events, s.Stream)
		counter(c.sinkBatches, s.Batches, s.Stream)
		counter(c.sinkErrors, s.Failures, s.Stream)
		gauge(c.sinkSeq, float64(s.LastSeq), s.Stream)
	}
	// The slow reads (JetStream, ClickHouse) run at once so that a scrape
	// stays short while one of them is down.
	var wg sync.WaitGroup
	wg.Go(func() {
		if lags, err := m.sink.Lag(ctx); err == nil {
			for _, l := range lags {
				gauge(c.sinkLag, float64(l.Lag), l.Stream)
				gauge(c.sinkAckPending, float64(l.AckPending), l.Stream)
				gauge(c.streamSeq, float64(l.LastSeq), l.Stream)
			}
		}
	})
	wg.Go(func() {
		up := 0.0
		if m.auditLogReady(ctx) == nil {
			up = 1
		}
		gauge(c.chUp, up)
	})
	if m.localCH != nil {
		counter(c.chRestarts, uint64(m.localCH.Restarts()))
	}
	if m.hooks != nil {
		wg.Go(func() {
			st := m.hooks.Stats(ctx)
			counter(c.hookDelivered, st.Delivered)
			counter(c.hookFailed, st.FailedAttempts)
			counter(c.hookDropped, st.Dropped)
			gauge(c.hookPending, float64(st.Pending))
		})
	}
	wg.Wait()
}

// groupCommits measures the durable usage publisher's group commits: how
// many events share one write, and how long it takes.
type groupCommits struct {
	once   sync.Once
	events prometheus.Histogram
	took   prometheus.Histogram
}

func (g *groupCommits) init() {
	g.once.Do(func() {
		g.events = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "keyledger_usage_group_commit_events", Help: "Usage events stored by one group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		})
		g.took = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "keyledger_usage_group_commit_duration_seconds", Help: "Time one usage group commit took to store.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		})
	})
}

func (g *groupCommits) observe(events int, took time.Duration) {
	g.init()
	g.events.Observe(float64(events))
	g.took.Observe(took.Seconds())
}

func (m *Main) registerMetrics(reg *prometheus.Registry) {
	m.commits.init()
	reg.MustRegister(m.commits.events, m.commits.took)
	if e := m.forged.engine; e != nil {
		reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_alerts_raised_total", Help: "Alerts the rule engine stored on ALERTS."},
				func() float64 { n, _ := e.Counts(); return float64(n) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_alerts_suppressed_total", Help: "Alerts an incident's suppression window kept quiet."},
				func() float64 { _, n := e.Counts(); return float64(n) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyledger_alerts_pending", Help: "Alerts waiting for ALERTS to store them."},
				func() float64 { return float64(e.Pending()) }))
	}
	if n := m.notary; n != nil {
		reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_notary_fed_messages_total", Help: "USAGE messages the notary folded as the node's subscription offered them."},
				func() float64 { fed, _ := n.FeedCounts(); return float64(fed) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_notary_read_messages_total", Help: "USAGE messages the notary read from the stream itself: stored before the start, or not offered in time."},
				func() float64 { _, read := n.FeedCounts(); return float64(read) }))
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newStatsCollector(m),
	)
	m.meters.register(reg)
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	gauge("keyledger_usage_buffer_depth", "Usage events waiting to be stored.", func() float64 { return float64(m.usage.Depth()) })
	gauge("keyledger_keystate_applied_seq", "Last KEYS sequence applied by the key-state projection.", func() float64 { return float64(m.state.Applied()) })
	gauge("keyledger_keys", "Keys in the key-state projection.", func() float64 { return float64(m.state.Len()) })
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_event_store_restarts_total", Help: "Restarts of the embedded JetStream after it could not write to its disk (a full disk)."},
		func() float64 { return float64(m.store.DiskRestarts()) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_forged_events_total", Help: "Stored messages quarantined (applied nowhere): unsigned, signed by an unknown or retired writer, of a type their stream may not hold, naming another actor, or not events."},
		func() float64 { return float64(m.forged.count.Load()) }))
}

// auditReady fails once the notary has seen an event that does not verify.
func (m *Main) auditReady(context.Context) error {
	if m.notary == nil {
		return nil
	}
	if why := m.notary.Broken(); why != "" {
		return fmt.Errorf("audit chain broken: %s", why)
	}
	return nil
}

// auditLogReady fails while ClickHouse does not answer a ping within a
// second, or while the managed local server is being restarted.
func (m *Main) auditLogReady(ctx context.Context) error {
	if m.localCH != nil {
		if err := m.localCH.Up(); err != nil {
			return err
		}
	}
	if m.ch == nil {
		return errors.New("the audit log is not open")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := m.ch.Ping(ctx); err != nil {
		return fmt.Errorf("ClickHouse does not answer: %w", err)
	}
	return nil
}

// sinkReady fails when the audit log trails JetStream by more than
// --max-sink-lag events.
func (m *Main) sinkReady(ctx context.Context) error {
	lag, err := m.sink.TotalLag(ctx)
	if err != nil {
		return fmt.Errorf("audit sink: %w", err)
	}
	if lag > m.MaxSinkLag {
		return fmt.Errorf("audit log %d messages behind JetStream (limit %d)", lag, m.MaxSinkLag)
	}
	return nil
}

// projectionReady fails while the key-state projection is behind KEYS.
func (m *Main) projectionReady(ctx context.Context) error {
	last, err := m.store.LastSeq(ctx, domain.StreamKeys)
	if err != nil {
		return fmt.Errorf("event store: %w", err)
	}
	if applied := m.state.Applied(); applied < last {
		return fmt.Errorf("key-state projection at %d of %d", applied, last)
	}
	return nil
}
