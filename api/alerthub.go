package api

import (
	"context"
	"sync"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// AlertStreamLimits bounds the alert streams (GET /v1/alerts/stream) a node
// serves. Every stream is fed from the node's one subscription to the
// alerts; a stream beyond a cap is answered 429 too_many_streams.
type AlertStreamLimits struct {
	// PerPrincipal is the streams one principal may hold open (4 when
	// zero); Total those of every principal together (256 when zero).
	PerPrincipal, Total int
	// Buffer is how many alerts may wait for one stream's reader; a
	// reader that falls that far behind is dropped (64 when zero).
	Buffer int
	// WriteTimeout bounds each write to a stream (10s when zero): a
	// stream ignores the server's write timeout, so a reader that stops
	// reading is cut off by this one.
	WriteTimeout time.Duration
}

func (l AlertStreamLimits) withDefaults() AlertStreamLimits {
	if l.PerPrincipal <= 0 {
		l.PerPrincipal = 4
	}
	if l.Total <= 0 {
		l.Total = 256
	}
	if l.Buffer <= 0 {
		l.Buffer = 64
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = 10 * time.Second
	}
	return l
}

// alertHub fans the node's one alert subscription out to every open
// stream.
type alertHub struct {
	feed AlertFeed
	lim  AlertStreamLimits
	s    *Server

	mu     sync.Mutex
	subs   map[*alertSub]struct{}
	per    map[string]int
	closed bool
}

// alertSub is one stream's place in the hub.
type alertSub struct {
	principal string
	keep      func(AlertView) bool
	ch        chan AlertView
	// gone is closed when the hub drops the stream: its reader is too
	// slow, or the hub stopped. why says which.
	gone chan struct{}
	why  string
}

func newAlertHub(s *Server, feed AlertFeed, lim AlertStreamLimits) *alertHub {
	return &alertHub{feed: feed, lim: lim.withDefaults(), s: s, subs: map[*alertSub]struct{}{}, per: map[string]int{}}
}

// subscribe opens a stream for principal that receives the alerts keep
// accepts. Errors: ELIMIT (too_many_streams) past a cap, EUNAVAILABLE when
// the hub has stopped.
func (h *alertHub) subscribe(principal string, keep func(AlertView) bool) (*alertSub, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, domain.Errorf(domain.EUNAVAILABLE, "alerts_unavailable", "the node is shutting down")
	}
	if len(h.subs) >= h.lim.Total {
		return nil, domain.Errorf(domain.ELIMIT, "too_many_streams", "this node serves %d alert streams already; retry later", h.lim.Total)
	}
	if h.per[principal] >= h.lim.PerPrincipal {
		return nil, domain.Errorf(domain.ELIMIT, "too_many_streams", "this principal holds %d alert streams already; close one first", h.lim.PerPrincipal)
	}
	sub := &alertSub{principal: principal, keep: keep, ch: make(chan AlertView, h.lim.Buffer), gone: make(chan struct{})}
	h.subs[sub] = struct{}{}
	h.per[principal]++
	return sub, nil
}

// unsubscribe closes a stream's place; it is safe after a drop.
func (h *alertHub) unsubscribe(sub *alertSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.remove(sub, "")
}

// remove takes sub out of the hub, telling its stream why when why is
// not empty. h.mu is held.
func (h *alertHub) remove(sub *alertSub, why string) {
	if _, ok := h.subs[sub]; !ok {
		return
	}
	delete(h.subs, sub)
	if h.per[sub.principal]--; h.per[sub.principal] <= 0 {
		delete(h.per, sub.principal)
	}
	sub.why = why
	close(sub.gone)
}

// broadcast offers one alert to every stream. It never waits for a
// reader: a stream whose buffer is full is dropped.
func (h *alertHub) broadcast(env domain.Envelope) error {
	v, err := alertView(env)
	if err != nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs {
		if !sub.keep(v) {
			continue
		}
		select {
		case sub.ch <- v:
		default:
			h.s.log.Warn("alert stream dropped: its reader is too slow", "principal", sub.principal, "buffered", len(sub.ch))
			h.remove(sub, "slow_reader")
		}
	}
	return nil
}

// streams returns how many streams are open.
func (h *alertHub) streams() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// run holds the node's one subscription to the alerts until ctx ends,
// subscribing again after a failure; then it ends every stream.
func (h *alertHub) run(ctx context.Context) {
	defer func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.closed = true
		for sub := range h.subs {
			h.remove(sub, "shutting_down")
		}
	}()
	wait := 250 * time.Millisecond
	for {
		err := h.feed.TailAlerts(ctx, h.broadcast)
		if ctx.Err() != nil {
			return
		}
		h.s.log.Warn("alert subscription ended; subscribing again", "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, 15*time.Second)
	}
}
