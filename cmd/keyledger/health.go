package main

import (
	"context"
	"fmt"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/prometheus/client_golang/prometheus"
)

func (m *Main) registerMetrics(reg *prometheus.Registry) {
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	gauge("keyledger_usage_buffer_depth", "Usage events waiting to be stored.", func() float64 { return float64(m.usage.Depth()) })
	gauge("keyledger_keystate_applied_seq", "Last KEYS sequence applied by the key-state projection.", func() float64 { return float64(m.state.Applied()) })
	gauge("keyledger_keys", "Keys in the key-state projection.", func() float64 { return float64(m.state.Len()) })
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_forged_events_total", Help: "KEYS events refused because no trusted writer signed them."},
		func() float64 { return float64(m.state.Forged()) }))
	gauge("keyledger_audit_sink_lag", "Events stored in JetStream but not yet in the ClickHouse log.", func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		lag, err := m.sink.TotalLag(ctx)
		if err != nil {
			return -1
		}
		return float64(lag)
	})
	if m.hooks != nil {
		gauge("keyledger_webhook_pending", "Alerts not yet accepted by every webhook receiver.", func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return float64(m.hooks.Stats(ctx).Pending)
		})
	}
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

// sinkReady fails when the audit log trails JetStream by more than
// --max-sink-lag events.
func (m *Main) sinkReady(ctx context.Context) error {
	lag, err := m.sink.TotalLag(ctx)
	if err != nil {
		return fmt.Errorf("audit sink: %w", err)
	}
	if lag > m.MaxSinkLag {
		return fmt.Errorf("audit log %d events behind JetStream (limit %d)", lag, m.MaxSinkLag)
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
