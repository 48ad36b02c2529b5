// Package api is keyledger's HTTP interface: key management, principals and
// roles, verification, and the operational endpoints. It depends on the
// domain and on the interfaces below, never on a concrete store.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api/console"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	fastjson "github.com/segmentio/encoding/json"
)

// EventStore loads lifecycle events.
type EventStore interface {
	// Load returns an aggregate's events, oldest first.
	Load(ctx context.Context, kind, id string) ([]domain.Envelope, error)
}

// Commands is the command path: every change to a key, a principal or a
// role goes through it (see package command). Each method authorizes by the
// rules of domain.Actor where an actor is given, decides, stores and
// returns once the local projection shows the change.
type Commands interface {
	// CreateKey issues a key to the actor's principal and returns it with
	// its token. Errors: EFORBIDDEN (insufficient_permissions,
	// permission_not_held), EINVALID, ELIMIT (plan_limit_reached),
	// ECONFLICT (version_conflict).
	CreateKey(ctx context.Context, a domain.Actor, cmd domain.CreateKey) (domain.Key, string, error)
	// ChangeKey applies any other key command to key id; a rotation
	// returns the new token. Errors: ENOTFOUND (key_not_found),
	// EFORBIDDEN, EINVALID, ECONFLICT (key_revoked, key_deleted,
	// key_already_disabled, key_not_disabled, version_conflict).
	ChangeKey(ctx context.Context, a domain.Actor, id string, cmd domain.Command) (domain.Key, string, error)
	// CreatePrincipal creates a principal and its first credential
	// atomically. Errors: EINVALID, ECONFLICT.
	CreatePrincipal(ctx context.Context, cmd domain.CreatePrincipal, credentialDays int) (domain.Principal, domain.Key, string, error)
	// ChangePrincipal updates, disables or enables a principal. Errors:
	// ENOTFOUND (principal_not_found), EINVALID, ECONFLICT.
	ChangePrincipal(ctx context.Context, id string, cmd domain.Command) (domain.Principal, error)
	// ChangeRole creates, updates or deletes a custom role. Errors:
	// EINVALID, ENOTFOUND (role_not_found), ECONFLICT (role_exists,
	// role_builtin, version_conflict).
	ChangeRole(ctx context.Context, name string, cmd domain.Command) (domain.Role, error)
	// IssueCredential issues a new credential, carrying every permission
	// the principal holds, to principal owner on behalf of an
	// administrator. Errors: ENOTFOUND (principal_not_found), EFORBIDDEN
	// (credential_to_self), EINVALID, ELIMIT (plan_limit_reached),
	// ECONFLICT (version_conflict).
	IssueCredential(ctx context.Context, a domain.Actor, owner string, cmd domain.CreateKey) (domain.Key, string, error)
	// Bootstrap makes sure a super administrator exists and returns its
	// root token when it created one.
	Bootstrap(ctx context.Context, rootToken string) (token string, created bool, err error)
}

// UsageRecorder stores usage events durably (see keystate.UsageRecorder).
type UsageRecorder = keystate.UsageRecorder

// LastUsed reports when and from where a key was last used.
type LastUsed interface {
	LastUsed(keyID string) (at time.Time, ip string, ok bool)
}

// ReadyCheck reports why the node is not ready, or nil.
type ReadyCheck func(ctx context.Context) error

// Config configures a Server.
type Config struct {
	Store    EventStore
	Commands Commands
	State    *keystate.Projection
	Usage    UsageRecorder
	Logger   *slog.Logger
	Now      func() time.Time
	NewID    func() uuid.UUID
	Ready    []ReadyCheck
	// Checks are named readiness checks (see Check); Ready's are run as
	// required checks after them.
	Checks  []Check
	Metrics *prometheus.Registry
	// LastUsed is optional.
	LastUsed LastUsed
	// Logs is the audit log; /v1/logs answers 500 without it.
	Logs LogSearcher
	// Alerts streams new alerts for /v1/alerts/stream.
	Alerts AlertFeed
	// Audit is the notary: public key, checkpoints, inclusion proofs.
	Audit Auditor
	// MaxActiveKeys is the default plan limit per principal.
	MaxActiveKeys int
	// TrustProxy takes the client address from X-Forwarded-For.
	TrustProxy bool
	// ServiceName is the actor recorded for authentications of
	// management calls.
	ServiceName string
	// AuthFailures bounds failed authentications per address;
	// AlertStreams the alert streams (see their types).
	AuthFailures FailureLimits
	AlertStreams AlertStreamLimits
	// Writers manages the trusted writers (/v1/writers); optional.
	Writers WriterAdmin
}

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 64 << 10

// Server serves the HTTP API.
type Server struct {
	cfg      Config
	log      *slog.Logger
	verifier *keystate.Verifier
	mux      *http.ServeMux
	metrics  *metrics
	table    []Route
	throttle *failureThrottle
	hub      *alertHub
}

// New returns a Server with every route registered.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NewID == nil {
		cfg.NewID = func() uuid.UUID { return uuid.Must(uuid.NewV7()) }
	}
	if cfg.MaxActiveKeys == 0 {
		cfg.MaxActiveKeys = domain.DefaultMaxActiveKeys
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	if cfg.ServiceName == "" {
		cfg.ServiceName = "keyledger-api"
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		verifier: &keystate.Verifier{State: cfg.State, Usage: cfg.Usage, Now: cfg.Now, NewID: cfg.NewID},
		mux:      http.NewServeMux(),
		metrics:  newMetrics(cfg.Metrics),
		throttle: newFailureThrottle(cfg.AuthFailures),
	}
	if cfg.Alerts != nil {
		s.hub = newAlertHub(s, cfg.Alerts, cfg.AlertStreams)
	}
	s.routes()
	return s
}

// Route is one registered route, for the OpenAPI test and the docs. The
// route table in routes is the one place a route's permission is written:
// the router authenticates the caller with it and hands the caller to the
// handler, which neither authenticates nor checks it again.
type Route struct {
	Method, Pattern string
	// Permission is what the caller's key and principal must both carry;
	// empty for public routes and for routes any authenticated caller may
	// use.
	Permission string
	// Public routes take no token.
	Public bool
}

// handle registers an authenticated route: the router authenticates the
// request's token with perm (recording the authentication) and calls h
// with the caller.
func (s *Server) handle(method, pattern, perm string, h func(http.ResponseWriter, *http.Request, caller)) {
	s.register(Route{Method: method, Pattern: pattern, Permission: perm}, func(w http.ResponseWriter, r *http.Request) {
		c, ok := s.auth(w, r, perm)
		if !ok {
			return
		}
		h(w, r, c)
	})
}

// handleBatched registers an authenticated route whose handler stores the
// caller's authentication together with its own events (or drops it when
// its own event names the caller): the router authenticates with perm
// without recording a success and hands h the pending event.
func (s *Server) handleBatched(method, pattern, perm string, h func(http.ResponseWriter, *http.Request, caller, authEvent)) {
	s.register(Route{Method: method, Pattern: pattern, Permission: perm}, func(w http.ResponseWriter, r *http.Request) {
		c, pending, err := s.authenticate(r, perm, false)
		if err != nil {
			s.problem(w, r, err)
			return
		}
		h(w, r, c, pending)
	})
}

// public registers a route that takes no token.
func (s *Server) public(method, pattern string, h http.HandlerFunc) {
	s.register(Route{Method: method, Pattern: pattern, Public: true}, h)
}

func (s *Server) register(rt Route, h http.HandlerFunc) {
	s.table = append(s.table, rt)
	s.mux.Handle(rt.Method+" "+rt.Pattern, s.instrument(rt.Pattern, h))
}

// Routes returns every registered route.
func (s *Server) Routes() []Route { return append([]Route(nil), s.table...) }

func (s *Server) routes() {
	s.handle("POST", "/v1/keys", domain.PermKeyCreate, s.createKey)
	s.handle("GET", "/v1/keys", domain.PermKeyView, s.listKeys)
	s.handle("GET", "/v1/keys/{id}", domain.PermKeyView, s.getKey)
	s.handle("PATCH", "/v1/keys/{id}", domain.PermKeyUpdate, s.updateKey)
	s.handle("DELETE", "/v1/keys/{id}", domain.PermKeyDelete, s.deleteKey)
	s.handle("POST", "/v1/keys/{id}/regenerate", domain.PermKeyRegenerate, s.regenerateKey)
	s.handle("POST", "/v1/keys/{id}/revoke", domain.PermKeyRevoke, s.revokeKey)
	s.handle("POST", "/v1/keys/{id}/disable", domain.PermKeyDisable, s.disableKey)
	s.handle("POST", "/v1/keys/{id}/enable", domain.PermKeyEnable, s.enableKey)
	s.handle("GET", "/v1/keys/{id}/events", domain.PermKeyView, s.keyEvents)
	s.handleBatched("POST", "/v1/verify", domain.PermVerify, s.verify)
	s.handleBatched("POST", "/v1/usage", domain.PermUsagePublish, s.publishUsage)
	s.handle("GET", "/v1/logs", domain.PermLogView, s.logs)
	s.handle("GET", "/v1/alerts", domain.PermAlertView, s.listAlerts)
	s.handle("GET", "/v1/alerts/stream", domain.PermAlertView, s.streamAlerts)
	s.handle("GET", "/v1/audit/public-key", "", s.auditPublicKey)
	s.handle("GET", "/v1/audit/checkpoints", domain.PermAuditView, s.auditCheckpoints)
	s.handle("GET", "/v1/audit/proof", domain.PermAuditView, s.auditProof)
	s.handle("GET", "/v1/me", "", s.me)
	s.handle("POST", "/v1/principals", domain.PermPrincipalManage, s.createPrincipal)
	s.handle("GET", "/v1/principals", domain.PermPrincipalManage, s.listPrincipals)
	s.handle("GET", "/v1/principals/{id}", domain.PermPrincipalManage, s.getPrincipal)
	s.handle("PATCH", "/v1/principals/{id}", domain.PermPrincipalManage, s.updatePrincipal)
	s.handle("POST", "/v1/principals/{id}/disable", domain.PermPrincipalManage, s.disablePrincipal)
	s.handle("POST", "/v1/principals/{id}/enable", domain.PermPrincipalManage, s.enablePrincipal)
	s.handle("POST", "/v1/principals/{id}/credentials", domain.PermPrincipalManage, s.issueCredential)
	s.handle("POST", "/v1/writers", domain.PermPrincipalManage, s.changeWriter)
	s.handle("GET", "/v1/writers", domain.PermPrincipalManage, s.listWriters)
	s.handle("GET", "/v1/roles", "", s.listRoles)
	s.handle("POST", "/v1/roles", domain.PermRoleManage, s.createRole)
	s.handle("PUT", "/v1/roles/{name}", domain.PermRoleManage, s.updateRole)
	s.handle("DELETE", "/v1/roles/{name}", domain.PermRoleManage, s.deleteRole)
	s.public("GET", "/healthz", s.healthz)
	s.public("GET", "/readyz", s.readyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Metrics, promhttp.HandlerOpts{}))
	s.public("GET", "/openapi.json", s.openapi)
	s.public("GET", "/docs", s.docs)
	// The web console calls this server in-process, as any client would.
	con := console.New(console.Config{API: s, Logger: s.log, Now: s.cfg.Now, TrustProxy: s.cfg.TrustProxy})
	for _, p := range console.Patterns {
		s.mux.Handle(p, con)
	}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	}
	if _, pattern := s.mux.Handler(r); pattern == "" {
		s.noRoute(w, r)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// noRoute answers a request no route matches with a problem document: 405
// with an Allow header when the path exists under other methods, else 404.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, rt := range s.table {
		probe := r.Clone(r.Context())
		probe.Method = rt.Method
		if _, p := s.mux.Handler(probe); p != "" && !slices.Contains(allow, rt.Method) {
			allow = append(allow, rt.Method)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		s.problem(w, r, domain.Errorf(domain.EINVALID, "method_not_allowed", "%s is not allowed on %s; use %s", r.Method, r.URL.Path, strings.Join(allow, ", ")))
		return
	}
	s.problem(w, r, domain.Errorf(domain.ENOTFOUND, "route_not_found", "no route %s %s", r.Method, r.URL.Path))
}

// AddMetrics registers collectors on the server's registry.
func (s *Server) AddMetrics(cs ...prometheus.Collector) {
	s.cfg.Metrics.MustRegister(cs...)
}

// statusFor maps error classes to HTTP status codes: the one table.
var statusFor = map[string]int{
	domain.ECONFLICT:     http.StatusConflict,
	domain.EINVALID:      http.StatusBadRequest,
	domain.ENOTFOUND:     http.StatusNotFound,
	domain.EUNAUTHORIZED: http.StatusUnauthorized,
	domain.EFORBIDDEN:    http.StatusForbidden,
	domain.ELIMIT:        http.StatusConflict,
	domain.EINTERNAL:     http.StatusInternalServerError,
	domain.EUNAVAILABLE:  http.StatusServiceUnavailable,
}

// Problem is an RFC 9457 problem document with keyledger's stable code.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Code     string `json:"code"`
	Instance string `json:"instance,omitempty"`
}

func (s *Server) problem(w http.ResponseWriter, r *http.Request, err error) {
	code := domain.ErrorCode(err)
	status := statusFor[code]
	if status == 0 {
		status = http.StatusInternalServerError
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		code, status, err = domain.EINVALID, http.StatusRequestEntityTooLarge, domain.Errorf(domain.EINVALID, "body_too_large", "request body exceeds %d bytes", MaxBodyBytes)
	}
	// A few reasons have a more precise status than their class.
	switch domain.ErrorReason(err) {
	case "unsupported_media_type":
		status = http.StatusUnsupportedMediaType
	case "method_not_allowed":
		status = http.StatusMethodNotAllowed
	case "too_many_failures", "too_many_streams":
		status = http.StatusTooManyRequests
	}
	var tmf tooManyFailures
	if errors.As(err, &tmf) {
		w.Header().Set("Retry-After", tmf.retrySeconds())
	}
	if code == domain.EINTERNAL {
		s.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	reason := domain.ErrorReason(err)
	if errors.Is(err, errUnavailable) {
		status, reason = http.StatusServiceUnavailable, "unavailable"
	}
	p := Problem{
		Type:     "https://keyledger.dev/problems/" + reason,
		Title:    http.StatusText(status),
		Status:   status,
		Detail:   domain.ErrorMessage(err),
		Code:     reason,
		Instance: r.URL.Path,
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="keyledger"`)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(p)
}

var errUnavailable = errors.New("verification log unavailable")

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	// Indented only when the client asks with ?pretty: the hot path
	// answers compactly.
	if sw, ok := w.(*statusWriter); ok && sw.pretty {
		enc.SetIndent("", "  ")
	}
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// bodies holds the buffers request bodies are read into; a buffer that grew
// past bodyKeep is dropped instead of kept. They start at 2 KiB, since
// bytes.Buffer.ReadFrom grows any buffer with less than 512 bytes free.
var bodies = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 2<<10)) }}

const bodyKeep = 16 << 10

// decode reads exactly one JSON object into v, rejecting unknown fields.
// It reads the whole body (bounded by MaxBodyBytes) into a pooled buffer
// and parses it with segmentio's decoder, which has encoding/json's
// semantics, its unknown-field check included, at a fraction of the cost;
// strings are copied out of the buffer, so it is reused.
func decode(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return domain.Errorf(domain.EINVALID, "unsupported_media_type", "Content-Type must be application/json")
	}
	buf := bodies.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= bodyKeep {
			buf.Reset()
			bodies.Put(buf)
		}
	}()
	if r.Body != nil {
		if _, err := buf.ReadFrom(r.Body); err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return err
			}
			return domain.Errorf(domain.EINVALID, "invalid_json", "invalid JSON: %v", err)
		}
	}
	body := bytes.TrimLeft(buf.Bytes(), " \t\r\n")
	if len(body) == 0 {
		return domain.Errorf(domain.EINVALID, "invalid_json", "request body is empty")
	}
	rest, err := fastjson.Parse(body, v, fastjson.DisallowUnknownFields)
	if err != nil {
		return domain.Errorf(domain.EINVALID, "invalid_json", "invalid JSON: %v", err)
	}
	if len(bytes.TrimLeft(rest, " \t\r\n")) > 0 {
		return domain.Errorf(domain.EINVALID, "invalid_json", "request body has trailing data")
	}
	return nil
}

// clientAddr is the address a request came from.
func (s *Server) clientAddr(r *http.Request) netip.Addr {
	if s.cfg.TrustProxy {
		if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
			first, _, _ := strings.Cut(xff, ",")
			if a, err := netip.ParseAddr(strings.TrimSpace(first)); err == nil {
				return a.Unmap()
			}
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

type ctxKey int

const requestIDKey ctxKey = iota

func (s *Server) requestContext(r *http.Request) *domain.RequestContext {
	return s.requestContextFrom(r, s.clientAddr(r))
}

// requestContextFrom is requestContext for a request whose client address
// is already known.
func (s *Server) requestContextFrom(r *http.Request, addr netip.Addr) *domain.RequestContext {
	rc := &domain.RequestContext{UserAgent: truncate(r.UserAgent(), 256)}
	if id, ok := r.Context().Value(requestIDKey).(string); ok {
		rc.RequestID = id
	}
	if addr.IsValid() {
		rc.SourceIP = addr.String()
	}
	return rc
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func (s *Server) instrument(pattern string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-Id")
		if id == "" || len(id) > 128 {
			id = uuid.NewString()
		}
		w.Header().Set("X-Request-Id", id)
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, id))
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK, pretty: r.URL.RawQuery != "" && r.URL.Query().Has("pretty")}
		h(sw, r)
		s.metrics.requests.WithLabelValues(r.Method, pattern, statusClass(sw.status)).Inc()
		s.metrics.latency.WithLabelValues(r.Method, pattern, statusClass(sw.status)).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
	pretty bool
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// statusClasses are the metrics' status labels, built once instead of per
// request.
var statusClasses = [...]string{"0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx"}

func statusClass(code int) string {
	if c := code / 100; c >= 0 && c < len(statusClasses) {
		return statusClasses[c]
	}
	return string(rune('0'+code/100)) + "xx"
}

type metrics struct {
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	verifications *prometheus.CounterVec
	verifyLatency *prometheus.HistogramVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_http_requests_total", Help: "HTTP requests by method, route and status class.",
		}, []string{"method", "route", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyledger_http_request_duration_seconds", Help: "HTTP request latency by route and status class.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 2.5, 5},
		}, []string{"method", "route", "status"}),
		verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_verifications_total", Help: "Verifications by outcome code.",
		}, []string{"code"}),
		verifyLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyledger_verification_duration_seconds", Help: "POST /v1/verify from the request to the answer, its event stored, by outcome code.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 2.5, 5},
		}, []string{"code"}),
	}
	reg.MustRegister(m.requests, m.latency, m.verifications, m.verifyLatency)
	return m
}
