// Package console is keyledger's web console: server-rendered pages for
// the administrators and compliance reviewers who manage keys every day.
//
// The console holds no rules of its own. Each page calls the JSON API
// in-process (an http.Handler, normally the api.Server that mounts it) with
// the session's bearer token, exactly as any other client would, so every
// authentication, authorization rule, validation and audit record is the
// API's. What a role may not do is left out of the pages; the API still
// refuses it.
//
// A browser signs in with a token, which is exchanged for a session: the
// token stays in this node's memory, the browser holds only a random
// session id in an HttpOnly, SameSite=Strict cookie (Secure under TLS).
// Every state-changing request carries the session's CSRF token.
package console

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

// Config configures a Console.
type Config struct {
	// API serves the JSON API the console calls in-process.
	API    http.Handler
	Logger *slog.Logger
	Now    func() time.Time
	// TrustProxy takes X-Forwarded-Proto into account when deciding
	// whether the session cookie must be Secure.
	TrustProxy bool
	// IdleTimeout ends a session nobody used for this long (30 minutes
	// by default); MaxAge ends any session (12 hours by default).
	IdleTimeout, MaxAge time.Duration
}

// Console serves the web console.
type Console struct {
	cfg      Config
	log      *slog.Logger
	mux      *http.ServeMux
	pages    map[string]*template.Template
	sessions *sessions
}

// Patterns are the routes the console answers, for the server that mounts
// it next to its own.
var Patterns = []string{
	"GET /{$}", "GET /assets/", "GET /login", "POST /login", "POST /logout",
	"POST /keys", "GET /keys/{id}", "POST /keys/{id}/{action}",
	"GET /logs", "GET /logs/export",
	"GET /alerts", "GET /alerts/stream",
	"GET /principals", "POST /principals", "POST /principals/{id}/{action}",
	"GET /roles", "POST /roles", "POST /roles/{name}/{action}",
	"GET /audit", "GET /audit/proof",
}

// New returns a Console.
func New(cfg Config) *Console {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 30 * time.Minute
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = 12 * time.Hour
	}
	c := &Console{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), sessions: newSessions(cfg.Now, cfg.IdleTimeout, cfg.MaxAge)}
	c.pages = parsePages()
	assets, _ := fs.Sub(assetFS, "assets")
	files := http.StripPrefix("/assets/", http.FileServerFS(assets))
	c.mux.Handle("GET /assets/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	}))
	c.mux.HandleFunc("GET /login", c.loginPage)
	c.mux.HandleFunc("POST /login", c.login)
	c.mux.HandleFunc("POST /logout", c.signedIn(c.logout))
	c.mux.HandleFunc("GET /{$}", c.signedIn(c.keysPage))
	c.mux.HandleFunc("POST /keys", c.signedIn(c.createKey))
	c.mux.HandleFunc("GET /keys/{id}", c.signedIn(c.keyPage))
	c.mux.HandleFunc("POST /keys/{id}/{action}", c.signedIn(c.keyAction))
	c.mux.HandleFunc("GET /logs", c.signedIn(c.logsPage))
	c.mux.HandleFunc("GET /logs/export", c.signedIn(c.logsExport))
	c.mux.HandleFunc("GET /alerts", c.signedIn(c.alertsPage))
	c.mux.HandleFunc("GET /alerts/stream", c.signedIn(c.alertsStream))
	c.mux.HandleFunc("GET /principals", c.signedIn(c.principalsPage))
	c.mux.HandleFunc("POST /principals", c.signedIn(c.createPrincipal))
	c.mux.HandleFunc("POST /principals/{id}/{action}", c.signedIn(c.principalAction))
	c.mux.HandleFunc("GET /roles", c.signedIn(c.rolesPage))
	c.mux.HandleFunc("POST /roles", c.signedIn(c.createRole))
	c.mux.HandleFunc("POST /roles/{name}/{action}", c.signedIn(c.roleAction))
	c.mux.HandleFunc("GET /audit", c.signedIn(c.auditPage))
	c.mux.HandleFunc("GET /audit/proof", c.signedIn(c.auditProof))
	return c
}

// ServeHTTP implements http.Handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Everything the console loads is its own: no CDN, no inline script.
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	c.mux.ServeHTTP(w, r)
}

// apiError is a problem document the API answered with.
type apiError struct {
	Status int    `json:"status"`
	Code   string `json:"code"`
	Detail string `json:"detail"`
}

func (e *apiError) Error() string {
	if e.Detail != "" {
		return e.Detail
	}
	return fmt.Sprintf("%d %s", e.Status, e.Code)
}

func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return http.StatusInternalServerError
}

// recorder buffers one in-process API response.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(p)
}

// apiRequest builds the in-process request for the browser's request r:
// the session's token, and the browser's address, user agent and
// forwarding headers, so the API records who acted from where.
func (c *Console) apiRequest(r *http.Request, s *session, method, path string, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(r.Context(), method, path, rd)
	if err != nil {
		return nil, fmt.Errorf("build %s %s: %w", method, path, err)
	}
	req.RemoteAddr = r.RemoteAddr
	req.Host = r.Host
	req.TLS = r.TLS
	for _, h := range []string{"User-Agent", "X-Forwarded-For", "X-Request-Id"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	return req, nil
}

// call sends one API request and decodes its JSON answer into out (when
// not nil); a problem answer comes back as *apiError.
func (c *Console) call(r *http.Request, s *session, method, path string, body, out any) error {
	req, err := c.apiRequest(r, s, method, path, body)
	if err != nil {
		return err
	}
	rec := &recorder{header: http.Header{}}
	c.cfg.API.ServeHTTP(rec, req)
	if rec.status >= 400 {
		ae := &apiError{Status: rec.status}
		if err := json.Unmarshal(rec.body.Bytes(), ae); err != nil {
			ae.Detail = http.StatusText(rec.status)
		}
		ae.Status = rec.status
		return ae
	}
	if out == nil || rec.status == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(rec.body.Bytes(), out); err != nil {
		return fmt.Errorf("decode %s %s: %w", method, path, err)
	}
	return nil
}

// relay streams an API response (an export, the alert stream) straight to
// the browser.
func (c *Console) relay(w http.ResponseWriter, r *http.Request, s *session, path string) {
	req, err := c.apiRequest(r, s, "GET", path, nil)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.cfg.API.ServeHTTP(w, req)
}

// query builds a path with query parameters, leaving out empty values.
func query(path string, kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			v.Add(kv[i], kv[i+1])
		}
	}
	if len(v) == 0 {
		return path
	}
	return path + "?" + v.Encode()
}

// safeBack returns p when it is a path on this origin to go back to, else
// def. Browsers drop tabs and newlines from a Location and read a
// backslash as a slash, so "/\t/evil.example" or "/\\evil.example" would
// lead off-site: any control or whitespace character, any backslash and
// invalid UTF-8 refuse p, and so does anything that parses with a scheme
// or a host.
func safeBack(p, def string) string {
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || !utf8.ValidString(p) {
		return def
	}
	for _, r := range p {
		if r == '\\' || unicode.IsControl(r) || unicode.IsSpace(r) || unicode.Is(unicode.Cf, r) {
			return def
		}
	}
	if u, err := url.Parse(p); err != nil || u.Scheme != "" || u.Host != "" || u.User != nil {
		return def
	}
	return p
}
