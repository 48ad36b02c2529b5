package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
)

// AlertFeed delivers alerts as they are raised.
type AlertFeed interface {
	// TailAlerts calls fn with every alert stored from now on until ctx
	// ends or fn returns an error.
	TailAlerts(ctx context.Context, fn func(domain.Envelope) error) error
}

// AlertView is an alert as the API shows it.
type AlertView struct {
	EventID string    `json:"event_id"`
	Time    time.Time `json:"time"`
	domain.AlertRaised
}

func alertView(env domain.Envelope) (AlertView, error) {
	ev, err := env.Decode()
	if err != nil {
		return AlertView{}, err
	}
	a, ok := ev.(domain.AlertRaised)
	if !ok {
		return AlertView{}, fmt.Errorf("event %s is not an alert", env.ID)
	}
	return AlertView{EventID: env.ID.String(), Time: env.Time, AlertRaised: a}, nil
}

// AlertPage is one page of alerts, newest first.
type AlertPage struct {
	Alerts     []AlertView `json:"alerts"`
	NextCursor string      `json:"next_cursor,omitempty"`
}

// parseAlertQuery reads rule, severity (repeatable) or min_severity,
// key_id, from, to, limit and cursor.
func parseAlertQuery(v map[string][]string) (chlog.Query, error) {
	base := map[string][]string{"action": {"raised"}}
	for _, p := range []string{"key_id", "from", "to", "limit", "cursor"} {
		if x, ok := v[p]; ok {
			base[p] = x
		}
	}
	q, _, err := parseLogQuery(base, time.Time{})
	if err != nil {
		return q, err
	}
	// Alerts are what ALERTS stored and the event store accepted: an
	// alert-typed event anyone wrote elsewhere is not one.
	q.Streams = []string{domain.StreamAlerts}
	for _, r := range splitList(v["rule"]) {
		if !domain.ValidPermission(r) || strings.Contains(r, "*") {
			return q, domain.Errorf(domain.EINVALID, "invalid_rule", "invalid rule %q", r)
		}
		q.Names = append(q.Names, r)
	}
	sev := splitList(v["severity"])
	if m := splitList(v["min_severity"]); len(m) > 0 {
		i := slices.Index(domain.Severities, m[0])
		if i < 0 {
			return q, domain.Errorf(domain.EINVALID, "invalid_severity", "unknown severity %q", m[0])
		}
		sev = append(sev, domain.Severities[i:]...)
	}
	for _, s := range sev {
		if !slices.Contains(domain.Severities, s) {
			return q, domain.Errorf(domain.EINVALID, "invalid_severity", "unknown severity %q", s)
		}
		q.Outcomes = append(q.Outcomes, s)
	}
	return q, nil
}

func splitList(vs []string) []string {
	var out []string
	for _, s := range vs {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func (s *Server) listAlerts(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.cfg.Logs == nil {
		s.problem(w, r, domain.Errorf(domain.EINTERNAL, "log_unavailable", "the audit log is not configured"))
		return
	}
	q, err := parseAlertQuery(r.URL.Query())
	if err != nil {
		s.problem(w, r, err)
		return
	}
	page := AlertPage{Alerts: []AlertView{}}
	next, err := s.cfg.Logs.Search(r.Context(), q, func(row chlog.Row) error {
		env, err := domain.UnmarshalEnvelope([]byte(row.Raw))
		if err != nil {
			return fmt.Errorf("stored alert %s: %w", row.EventID, err)
		}
		v, err := alertView(env)
		if err != nil {
			return err
		}
		page.Alerts = append(page.Alerts, v)
		return nil
	})
	if err != nil {
		s.problem(w, r, err)
		return
	}
	if next != nil {
		page.NextCursor = next.String()
	}
	writeJSON(w, http.StatusOK, page)
}

// streamAlerts sends alerts as server-sent events as they are raised, with
// a comment line every 15 seconds so proxies keep the connection open.
// Every stream is fed from the node's one alert subscription (alertHub);
// past a cap it is refused with 429, and a reader that falls behind is
// dropped rather than buffered for. Each write has its own deadline.
func (s *Server) streamAlerts(w http.ResponseWriter, r *http.Request, c caller) {
	if s.hub == nil {
		s.problem(w, r, domain.Errorf(domain.EINTERNAL, "alerts_unavailable", "alerting is not configured"))
		return
	}
	q := r.URL.Query()
	rules := splitList(q["rule"])
	minSev := 0
	if m := q.Get("min_severity"); m != "" {
		if minSev = slices.Index(domain.Severities, m); minSev < 0 {
			s.problem(w, r, domain.Errorf(domain.EINVALID, "invalid_severity", "unknown severity %q", m))
			return
		}
	}
	sub, err := s.hub.subscribe(c.Principal.ID, func(v AlertView) bool {
		return (len(rules) == 0 || slices.Contains(rules, v.Rule)) && slices.Index(domain.Severities, v.Severity) >= minSev
	})
	if err != nil {
		s.problem(w, r, err)
		return
	}
	defer s.hub.unsubscribe(sub)
	rc := http.NewResponseController(w)
	// A stream outlives the server's read and write timeouts: the read
	// deadline is lifted (a request's end is told by the connection
	// closing) and every write gets a deadline of its own.
	_ = rc.SetReadDeadline(time.Time{})
	write := func(f func()) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.hub.lim.WriteTimeout))
		f()
		return rc.Flush() == nil
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	if !write(func() { w.WriteHeader(http.StatusOK) }) {
		return
	}
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		var ok bool
		select {
		case <-r.Context().Done():
			return
		case <-sub.gone:
			write(func() { fmt.Fprintf(w, ": stream ended: %s\n\n", sub.why) })
			return
		case <-tick.C:
			ok = write(func() { fmt.Fprint(w, ": keep-alive\n\n") })
		case v := <-sub.ch:
			b, _ := json.Marshal(v)
			ok = write(func() { fmt.Fprintf(w, "id: %s\nevent: alert\ndata: %s\n\n", v.EventID, b) })
		}
		if !ok {
			return
		}
	}
}
