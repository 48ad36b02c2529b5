package api

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/keystate"
)

// LogSearcher searches the audit log.
type LogSearcher interface {
	// Search calls fn with each matching event, newest first, and returns
	// the next page's cursor when q.Limit was reached.
	Search(ctx context.Context, q chlog.Query, fn func(chlog.Row) error) (*chlog.Cursor, error)
}

// LogEntry is one event of the audit log as the API shows it.
type LogEntry struct {
	EventID     string    `json:"event_id"`
	Time        time.Time `json:"time"`
	Type        string    `json:"type"`
	Action      string    `json:"action"`
	Outcome     string    `json:"outcome,omitempty"`
	Actor       string    `json:"actor"`
	KeyID       string    `json:"key_id"`
	Owner       string    `json:"owner,omitempty"`
	Permissions []string  `json:"permissions"`
	SourceIP    string    `json:"source_ip,omitempty"`
	UserAgent   string    `json:"user_agent,omitempty"`
	RequestID   string    `json:"request_id,omitempty"`
	Name        string    `json:"name,omitempty"`
	Comments    string    `json:"comments,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	Stream      string    `json:"stream"`
	Seq         uint64    `json:"seq"`
	PrevHash    string    `json:"prev_hash"`
	Hash        string    `json:"hash"`
	// Quarantine is why the event store quarantined the event's message;
	// set only on the rows a reviewer asks for with quarantined=true.
	Quarantine string `json:"quarantine,omitempty"`
}

var csvHeader = []string{"event_id", "time", "type", "action", "outcome", "actor", "key_id", "owner", "permissions",
	"source_ip", "user_agent", "request_id", "name", "comments", "reason", "stream", "seq", "prev_hash", "hash"}

func (e LogEntry) csv() []string {
	rec := []string{e.EventID, e.Time.Format(time.RFC3339Nano), e.Type, e.Action, e.Outcome, e.Actor, e.KeyID, e.Owner,
		strings.Join(e.Permissions, " "), e.SourceIP, e.UserAgent, e.RequestID, e.Name, e.Comments, e.Reason,
		e.Stream, strconv.FormatUint(e.Seq, 10), e.PrevHash, e.Hash}
	for i, v := range rec {
		// A cell that starts like a formula is quoted for spreadsheets, so
		// an exported log cannot run anything when a reviewer opens it.
		if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
			rec[i] = "'" + v
		}
	}
	return rec
}

func entryOf(r chlog.Row) LogEntry {
	return LogEntry{
		EventID: r.EventID, Time: r.Time, Type: r.Type, Action: r.Action, Outcome: r.Outcome, Actor: r.Actor,
		KeyID: r.KeyID, Owner: r.Owner, Permissions: nonNil(r.Permissions), SourceIP: r.SourceIP, UserAgent: r.UserAgent,
		RequestID: r.RequestID, Name: r.Name, Comments: r.Comments, Reason: r.Reason, Stream: r.Stream, Seq: r.Seq,
		PrevHash: r.PrevHash, Hash: r.Hash, Quarantine: r.Quarantine,
	}
}

// LogPage is one page of log search results.
type LogPage struct {
	Events     []LogEntry `json:"events"`
	NextCursor string     `json:"next_cursor,omitempty"`
}

const maxLogPage = 1000

// knownActions are the verbs of every event type.
var knownActions = []string{"created", "regenerated", "updated", "disabled", "enabled", "revoked", "deleted", "used", "denied", "raised", "checkpoint"}

// parseLogQuery turns query parameters into a log query. Every value is
// validated or passed on as a bound parameter; errors are EINVALID with a
// stable reason.
func parseLogQuery(v map[string][]string, now time.Time) (chlog.Query, string, error) {
	var q chlog.Query
	list := func(name string) []string {
		var out []string
		for _, s := range v[name] {
			for _, p := range strings.Split(s, ",") {
				if p = strings.TrimSpace(p); p != "" {
					out = append(out, p)
				}
			}
		}
		return out
	}
	one := func(name string) string {
		if s := v[name]; len(s) > 0 {
			return strings.TrimSpace(s[0])
		}
		return ""
	}
	for _, id := range list("key_id") {
		if _, err := uuid.Parse(id); (err != nil || len(id) != 36) && id != domain.UnknownKeyID {
			return q, "", domain.Errorf(domain.EINVALID, "invalid_key_id", "key_id %q is not a key id", id)
		}
		q.KeyIDs = append(q.KeyIDs, strings.ToLower(id))
	}
	if len(q.KeyIDs) > 1000 {
		return q, "", domain.Errorf(domain.EINVALID, "invalid_key_id", "at most 1000 key ids")
	}
	q.Owner, q.Actor, q.Text = one("owner"), one("actor"), one("q")
	if len(q.Owner) > 128 || len(q.Actor) > 128 || len(q.Text) > 256 {
		return q, "", domain.Errorf(domain.EINVALID, "invalid_parameter", "owner, actor and q are limited to 128, 128 and 256 bytes")
	}
	for _, a := range list("action") {
		if !slices.Contains(knownActions, a) {
			return q, "", domain.Errorf(domain.EINVALID, "invalid_action", "unknown action %q", a)
		}
		q.Actions = append(q.Actions, a)
	}
	for _, c := range append(list("outcome"), list("code")...) {
		if !slices.Contains(domain.Outcomes, c) && c != domain.OutcomeThrottled {
			return q, "", domain.Errorf(domain.EINVALID, "invalid_outcome", "unknown outcome code %q", c)
		}
		q.Outcomes = append(q.Outcomes, c)
	}
	if s := one("ip"); s != "" {
		p, err := domain.ParsePrefix(s)
		if err != nil {
			return q, "", domain.Errorf(domain.EINVALID, "invalid_cidr", "ip: %s", domain.ErrorMessage(err))
		}
		q.Source = p
		q.HasSource = true
	}
	for name, dst := range map[string]*time.Time{"from": &q.From, "to": &q.To} {
		if s := one(name); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return q, "", domain.Errorf(domain.EINVALID, "invalid_time", "%s %q is not an RFC 3339 time", name, s)
			}
			if t.Year() < 1970 || t.Year() > 2105 {
				return q, "", domain.Errorf(domain.EINVALID, "invalid_time", "%s is out of range", name)
			}
			*dst = t
		}
	}
	if !q.From.IsZero() && !q.To.IsZero() && !q.From.Before(q.To) {
		return q, "", domain.Errorf(domain.EINVALID, "invalid_time", "from must be before to")
	}
	switch one("quarantined") {
	case "", "false":
	case "true":
		// The rows of quarantined messages, kept apart from the
		// accepted history, and only them.
		q.Quarantined = true
	default:
		return q, "", domain.Errorf(domain.EINVALID, "invalid_parameter", "quarantined must be true or false")
	}
	format := one("format")
	switch format {
	case "", "json":
		format = "json"
		q.Limit = 100
	case "ndjson", "csv":
	default:
		return q, "", domain.Errorf(domain.EINVALID, "invalid_format", "format must be json, ndjson or csv")
	}
	if s := one("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxLogPage {
			return q, "", domain.Errorf(domain.EINVALID, "invalid_limit", "limit must be between 1 and %d", maxLogPage)
		}
		q.Limit = n
	}
	if s := one("cursor"); s != "" {
		c, err := chlog.ParseCursor(s)
		if err != nil {
			return q, "", err
		}
		q.After = &c
	}
	return q, format, nil
}

// logs searches the audit log. A key-admin sees the events of its own keys
// only; auditor and superadmin see everything.
func (s *Server) logs(w http.ResponseWriter, r *http.Request, c caller) {
	if s.cfg.Logs == nil {
		s.problem(w, r, domain.Errorf(domain.EINTERNAL, "log_unavailable", "the audit log is not configured"))
		return
	}
	q, format, err := parseLogQuery(r.URL.Query(), s.cfg.Now())
	if err != nil {
		s.problem(w, r, err)
		return
	}
	if q.Quarantined && !c.Can(domain.PermLogViewAny) {
		s.problem(w, r, domain.Errorf(domain.EFORBIDDEN, "insufficient_permissions", "quarantined rows need %s", domain.PermLogViewAny))
		return
	}
	if !c.Can(domain.PermLogViewAny) {
		keys, _ := s.cfg.State.List(keystate.Filter{Owner: c.Principal.ID, Status: "all", Now: s.cfg.Now()})
		q.Visible = make([]string, 0, len(keys))
		for _, k := range keys {
			q.Visible = append(q.Visible, k.ID)
		}
	}
	switch format {
	case "json":
		page := LogPage{Events: []LogEntry{}}
		next, err := s.cfg.Logs.Search(r.Context(), q, func(row chlog.Row) error {
			page.Events = append(page.Events, entryOf(row))
			return nil
		})
		if err != nil {
			s.searchFailed(w, r, err)
			return
		}
		if next != nil {
			page.NextCursor = next.String()
		}
		writeJSON(w, http.StatusOK, page)
	case "ndjson", "csv":
		s.export(w, r, q, format)
	}
}

// export streams every matching event. Headers go out with the first row,
// so a search that fails before any row still gets a problem response.
func (s *Server) export(w http.ResponseWriter, r *http.Request, q chlog.Query, format string) {
	rc := http.NewResponseController(w)
	// An export of any size outlives the server's read and write
	// timeouts: the read deadline is lifted and every chunk written
	// gets a deadline of its own.
	_ = rc.SetReadDeadline(time.Time{})
	writeTimeout := s.cfg.AlertStreams.withDefaults().WriteTimeout
	_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	started := false
	var cw *csv.Writer
	enc := json.NewEncoder(w)
	start := func() {
		started = true
		if format == "csv" {
			w.Header().Set("Content-Type", "text/csv; charset=utf-8")
			w.Header().Set("Content-Disposition", `attachment; filename="keyledger-log.csv"`)
			w.WriteHeader(http.StatusOK)
			cw = csv.NewWriter(w)
			_ = cw.Write(csvHeader)
		} else {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
		}
	}
	n := 0
	_, err := s.cfg.Logs.Search(r.Context(), q, func(row chlog.Row) error {
		if !started {
			start()
		}
		e := entryOf(row)
		var err error
		if cw != nil {
			err = cw.Write(e.csv())
		} else {
			err = enc.Encode(e)
		}
		if n++; n%1000 == 0 {
			if cw != nil {
				cw.Flush()
			}
			_ = rc.Flush()
			_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		}
		return err
	})
	if err != nil && !started {
		s.searchFailed(w, r, err)
		return
	}
	if err != nil {
		// The status line is gone; end the body early so the client sees
		// a truncated export rather than a silently complete one.
		s.log.ErrorContext(r.Context(), "log export failed midway", "rows", n, "err", err)
		panic(http.ErrAbortHandler)
	}
	if !started {
		start()
	}
	if cw != nil {
		cw.Flush()
	}
}

// searchFailed answers a failed search: 503 audit_log_unavailable when the
// audit log does not answer a ping (ClickHouse is down or unreachable; the
// events wait in JetStream and reach the log once it is back), else the
// error's own problem.
func (s *Server) searchFailed(w http.ResponseWriter, r *http.Request, err error) {
	pinger, ok := s.cfg.Logs.(interface{ Ping(context.Context) error })
	if !ok || domain.ErrorCode(err) != domain.EINTERNAL || r.Context().Err() != nil {
		s.problem(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	perr := pinger.Ping(ctx)
	if perr == nil {
		s.problem(w, r, err)
		return
	}
	// Debug only: /readyz and keyledger_clickhouse_up already say it,
	// once, rather than once per search.
	s.log.DebugContext(r.Context(), "log search while the audit log is unavailable", "err", err, "ping", perr)
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Retry-After", "5")
	w.WriteHeader(http.StatusServiceUnavailable)
	_ = json.NewEncoder(w).Encode(Problem{
		Type:     "https://keyledger.dev/problems/audit_log_unavailable",
		Title:    http.StatusText(http.StatusServiceUnavailable),
		Status:   http.StatusServiceUnavailable,
		Detail:   "the audit log (ClickHouse) is not answering; no event is lost: events wait in JetStream and reach the log when it is back",
		Code:     "audit_log_unavailable",
		Instance: r.URL.Path,
	})
}
