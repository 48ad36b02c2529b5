// Package client is what a Go service needs to use keyledger: a typed
// client of the HTTP API (Client), problem documents as Go errors carrying
// their stable code (*Error), and net/http middleware that admits only
// requests with a verified key (RequireKey). The middleware verifies
// through anything that implements Verifier: a Client (one POST /v1/verify
// per request) or a local replica of the key state (package
// api/client/replica), which verifies in-process with the server's own code.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/keyledger/keyledger/api"
)

// The API's wire types, defined once by the server.
type (
	KeyView          = api.KeyView
	CreatedKey       = api.CreatedKey
	KeyPage          = api.KeyPage
	EventView        = api.EventView
	PrincipalView    = api.PrincipalView
	CreatedPrincipal = api.CreatedPrincipal
	RoleView         = api.RoleView
	MeView           = api.MeView
	LogEntry         = api.LogEntry
	LogPage          = api.LogPage
	AlertView        = api.AlertView
	AlertPage        = api.AlertPage
	UsageResponse    = api.UsageResponse
	UsageResult      = api.UsageResult
)

// Error is a problem document (RFC 9457) the server answered with. Code is
// keyledger's stable code (key_revoked, insufficient_permissions, ...):
// switch on it, never on Detail.
type Error struct {
	Status int
	Code   string
	Detail string
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("keyledger: %s: %s", e.Code, e.Detail)
	}
	return fmt.Sprintf("keyledger: %d %s: %s", e.Status, e.Code, e.Detail)
}

// Codes of errors that did not come from a problem document.
const (
	// CodeUnreachable: no answer (connection refused, timeout, ...).
	CodeUnreachable = "unreachable"
	// CodeBadResponse: an answer that is not what the API returns.
	CodeBadResponse = "bad_response"
)

// ErrorCode returns the stable code of an *Error in err's chain, or "".
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// Client calls one keyledger server with one token. It is safe for
// concurrent use.
type Client struct {
	base  *url.URL
	token string
	// HTTP is the client requests are sent with; http.DefaultClient when
	// nil.
	HTTP *http.Client
	// UserAgent is sent with every request.
	UserAgent string
}

// New returns a client of the server at baseURL ("https://keyledger:8080")
// that authenticates with token. Returns an *Error (bad_url) for a URL
// that is not http or https.
func New(baseURL, token string) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, &Error{Code: "bad_url", Detail: fmt.Sprintf("server %q must be an http or https URL", baseURL)}
	}
	return &Client{base: u, token: token, UserAgent: "keyledger-go"}, nil
}

// WithToken returns a copy of c that authenticates with token.
func (c *Client) WithToken(token string) *Client {
	cc := *c
	cc.token = token
	return &cc
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values, in any) (*http.Request, error) {
	u := *c.base
	u.Path += path
	u.RawQuery = query.Encode()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// Do sends one request and decodes a 2xx JSON answer into out (when not
// nil); it returns the raw body. Any other answer is an *Error.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, in, out any) ([]byte, error) {
	req, err := c.newRequest(ctx, method, path, query, in)
	if err != nil {
		return nil, err
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, &Error{Code: CodeUnreachable, Detail: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, &Error{Code: CodeUnreachable, Detail: fmt.Sprintf("read response of %s %s: %v", method, path, err)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, ProblemError(resp.StatusCode, resp.Header.Get("Content-Type"), raw)
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, &Error{Status: resp.StatusCode, Code: CodeBadResponse, Detail: fmt.Sprintf("%s %s: %v", method, path, err)}
		}
	}
	return raw, nil
}

// unwrapURLError drops url.Error's repetition of the method and URL when
// the underlying error already says what went wrong.
func unwrapURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Sprintf("%s %s: %v", strings.ToUpper(ue.Op), ue.URL, ue.Err)
	}
	return err.Error()
}

// ProblemError decodes a problem document; anything else (a proxy's HTML
// page, say) becomes code http_<status> with the first line of the body.
func ProblemError(status int, contentType string, raw []byte) *Error {
	var p struct {
		Code   string `json:"code"`
		Detail string `json:"detail"`
		Title  string `json:"title"`
	}
	mt, _, _ := mime.ParseMediaType(contentType)
	if (mt == "application/problem+json" || mt == "application/json") && json.Unmarshal(raw, &p) == nil && p.Code != "" {
		d := p.Detail
		if d == "" {
			d = p.Title
		}
		return &Error{Status: status, Code: p.Code, Detail: d}
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(raw)), "\n")
	if len(line) > 200 {
		line = line[:200]
	}
	if line == "" {
		line = http.StatusText(status)
	}
	return &Error{Status: status, Code: fmt.Sprintf("http_%d", status), Detail: line}
}

// VerifyRequest is one token to verify.
type VerifyRequest struct {
	Token string `json:"token"`
	// Permission the request needs; empty checks only that the key is
	// valid.
	Permission string `json:"permission,omitempty"`
	// IP is the address the request came from; keys with allowed_ips
	// need it.
	IP string `json:"ip,omitempty"`
}

// Verification is the outcome of a verification.
type Verification = api.VerifyResponse

// Verifier verifies tokens: a Client over HTTP, or a local replica.
type Verifier interface {
	// Verify returns the outcome of one verification. An error means no
	// verification was made (or it could not be recorded): fail closed.
	Verify(ctx context.Context, req VerifyRequest) (Verification, error)
}

// Verify verifies a token with POST /v1/verify (needs api.verify).
func (c *Client) Verify(ctx context.Context, req VerifyRequest) (Verification, error) {
	var out Verification
	_, err := c.Do(ctx, "POST", "/v1/verify", nil, req, &out)
	return out, err
}

// UsageRecord is one usage record a service publishes.
type UsageRecord struct {
	RecordID   string `json:"record_id"`
	KeyID      string `json:"key_id"`
	Outcome    string `json:"outcome"`
	SourceIP   string `json:"source_ip,omitempty"`
	Permission string `json:"permission,omitempty"`
	RequestID  string `json:"request_id,omitempty"`
	Endpoint   string `json:"endpoint,omitempty"`
	HTTPStatus int    `json:"http_status,omitempty"`
	Units      int64  `json:"units,omitempty"`
}

// PublishUsage stores usage records with POST /v1/usage (needs
// api.usage.publish). Records are validated one by one: the answer says
// which were rejected and why. Sending the same records again stores them
// once.
func (c *Client) PublishUsage(ctx context.Context, records []UsageRecord) (UsageResponse, error) {
	var out UsageResponse
	_, err := c.Do(ctx, "POST", "/v1/usage", nil, map[string]any{"records": records}, &out)
	return out, err
}

// Me returns the caller's principal and key.
func (c *Client) Me(ctx context.Context) (MeView, error) {
	var out MeView
	_, err := c.Do(ctx, "GET", "/v1/me", nil, nil, &out)
	return out, err
}

// CreateKeyRequest creates a key. Zero fields take the server's defaults.
type CreateKeyRequest struct {
	Name         string            `json:"name"`
	Comments     string            `json:"comments,omitempty"`
	Permissions  []string          `json:"permissions,omitempty"`
	Role         string            `json:"role,omitempty"`
	LifetimeDays int               `json:"lifetime_days,omitempty"`
	AllowedIPs   []string          `json:"allowed_ips,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`
}

// CreateKey issues a key to the caller; the token is in the answer only.
func (c *Client) CreateKey(ctx context.Context, req CreateKeyRequest) (CreatedKey, error) {
	var out CreatedKey
	_, err := c.Do(ctx, "POST", "/v1/keys", nil, req, &out)
	return out, err
}

// KeyFilter selects keys for ListKeys.
type KeyFilter struct {
	Status string // a status name or "all"; empty: all but deleted
	Query  string
	Owner  string
	Limit  int
	Cursor string
}

// ListKeys returns one page of keys.
func (c *Client) ListKeys(ctx context.Context, f KeyFilter) (KeyPage, error) {
	q := url.Values{}
	set(q, "status", f.Status)
	set(q, "q", f.Query)
	set(q, "owner", f.Owner)
	set(q, "cursor", f.Cursor)
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out KeyPage
	_, err := c.Do(ctx, "GET", "/v1/keys", q, nil, &out)
	return out, err
}

// Key returns one key.
func (c *Client) Key(ctx context.Context, id string) (KeyView, error) {
	var out KeyView
	_, err := c.Do(ctx, "GET", "/v1/keys/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}

// KeyUpdate changes a key; nil fields stay as they are.
type KeyUpdate struct {
	Name        *string   `json:"name,omitempty"`
	Comments    *string   `json:"comments,omitempty"`
	Permissions *[]string `json:"permissions,omitempty"`
}

// UpdateKey changes a key's name, comments or permissions.
func (c *Client) UpdateKey(ctx context.Context, id string, u KeyUpdate) (KeyView, error) {
	var out KeyView
	_, err := c.Do(ctx, "PATCH", "/v1/keys/"+url.PathEscape(id), nil, u, &out)
	return out, err
}

// Regenerate extends a key's lifetime; with rotate it gets a new secret
// (the old one stays valid for grace, a Go duration, when given) and the
// answer carries the new token.
func (c *Client) Regenerate(ctx context.Context, id string, rotate bool, grace time.Duration) (CreatedKey, error) {
	body := map[string]any{"rotate": rotate}
	if grace > 0 {
		body["grace_period"] = grace.String()
	}
	var out CreatedKey
	_, err := c.Do(ctx, "POST", "/v1/keys/"+url.PathEscape(id)+"/regenerate", nil, body, &out)
	return out, err
}

func (c *Client) keyAction(ctx context.Context, method, id, action, reason string) (KeyView, error) {
	path := "/v1/keys/" + url.PathEscape(id)
	if action != "" {
		path += "/" + action
	}
	var body any
	if reason != "" {
		body = map[string]string{"reason": reason}
	}
	var out KeyView
	_, err := c.Do(ctx, method, path, nil, body, &out)
	return out, err
}

// Revoke revokes a key at once, for good.
func (c *Client) Revoke(ctx context.Context, id, reason string) (KeyView, error) {
	return c.keyAction(ctx, "POST", id, "revoke", reason)
}

// Disable disables a key until Enable.
func (c *Client) Disable(ctx context.Context, id, reason string) (KeyView, error) {
	return c.keyAction(ctx, "POST", id, "disable", reason)
}

// Enable enables a disabled key.
func (c *Client) Enable(ctx context.Context, id string) (KeyView, error) {
	return c.keyAction(ctx, "POST", id, "enable", "")
}

// DeleteKey revokes (if needed) and deletes a key.
func (c *Client) DeleteKey(ctx context.Context, id, reason string) (KeyView, error) {
	return c.keyAction(ctx, "DELETE", id, "", reason)
}

// KeyEvents returns a key's history, oldest first.
func (c *Client) KeyEvents(ctx context.Context, id string) ([]EventView, error) {
	var out struct {
		Events []EventView `json:"events"`
	}
	_, err := c.Do(ctx, "GET", "/v1/keys/"+url.PathEscape(id)+"/events", nil, nil, &out)
	return out.Events, err
}

// CreatePrincipalRequest creates a principal and its first credential.
type CreatePrincipalRequest struct {
	Name                   string   `json:"name"`
	Roles                  []string `json:"roles"`
	MaxKeys                int      `json:"max_keys,omitempty"`
	CredentialLifetimeDays int      `json:"credential_lifetime_days,omitempty"`
}

// CreatePrincipal creates a principal (superadmin).
func (c *Client) CreatePrincipal(ctx context.Context, req CreatePrincipalRequest) (CreatedPrincipal, error) {
	var out CreatedPrincipal
	_, err := c.Do(ctx, "POST", "/v1/principals", nil, req, &out)
	return out, err
}

// Principals lists every principal (superadmin).
func (c *Client) Principals(ctx context.Context) ([]PrincipalView, error) {
	var out struct {
		Principals []PrincipalView `json:"principals"`
	}
	_, err := c.Do(ctx, "GET", "/v1/principals", nil, nil, &out)
	return out.Principals, err
}

// Principal returns one principal (superadmin).
func (c *Client) Principal(ctx context.Context, id string) (PrincipalView, error) {
	var out PrincipalView
	_, err := c.Do(ctx, "GET", "/v1/principals/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}

// PrincipalUpdate changes a principal; nil fields stay as they are.
type PrincipalUpdate struct {
	Name    *string   `json:"name,omitempty"`
	Roles   *[]string `json:"roles,omitempty"`
	MaxKeys *int      `json:"max_keys,omitempty"`
}

// UpdatePrincipal changes a principal (superadmin).
func (c *Client) UpdatePrincipal(ctx context.Context, id string, u PrincipalUpdate) (PrincipalView, error) {
	var out PrincipalView
	_, err := c.Do(ctx, "PATCH", "/v1/principals/"+url.PathEscape(id), nil, u, &out)
	return out, err
}

// DisablePrincipal disables a principal and with it all of its keys.
func (c *Client) DisablePrincipal(ctx context.Context, id, reason string) (PrincipalView, error) {
	var body any
	if reason != "" {
		body = map[string]string{"reason": reason}
	}
	var out PrincipalView
	_, err := c.Do(ctx, "POST", "/v1/principals/"+url.PathEscape(id)+"/disable", nil, body, &out)
	return out, err
}

// EnablePrincipal enables a disabled principal.
func (c *Client) EnablePrincipal(ctx context.Context, id string) (PrincipalView, error) {
	var out PrincipalView
	_, err := c.Do(ctx, "POST", "/v1/principals/"+url.PathEscape(id)+"/enable", nil, nil, &out)
	return out, err
}

// Roles lists every role, built in first.
func (c *Client) Roles(ctx context.Context) ([]RoleView, error) {
	var out struct {
		Roles []RoleView `json:"roles"`
	}
	_, err := c.Do(ctx, "GET", "/v1/roles", nil, nil, &out)
	return out.Roles, err
}

// CreateRole creates a custom role.
func (c *Client) CreateRole(ctx context.Context, name string, permissions []string, description string) (RoleView, error) {
	body := map[string]any{"name": name, "permissions": permissions}
	if description != "" {
		body["description"] = description
	}
	var out RoleView
	_, err := c.Do(ctx, "POST", "/v1/roles", nil, body, &out)
	return out, err
}

// UpdateRole replaces a custom role's permissions (and description, when
// not nil).
func (c *Client) UpdateRole(ctx context.Context, name string, permissions []string, description *string) (RoleView, error) {
	body := map[string]any{"permissions": permissions}
	if description != nil {
		body["description"] = *description
	}
	var out RoleView
	_, err := c.Do(ctx, "PUT", "/v1/roles/"+url.PathEscape(name), nil, body, &out)
	return out, err
}

// DeleteRole deletes a custom role.
func (c *Client) DeleteRole(ctx context.Context, name string) error {
	_, err := c.Do(ctx, "DELETE", "/v1/roles/"+url.PathEscape(name), nil, nil, nil)
	return err
}

// LogQuery selects audit-log events; see GET /v1/logs for each field.
type LogQuery struct {
	KeyIDs   []string
	Actions  []string
	Outcomes []string
	Actor    string
	Owner    string
	IP       string // an address or a CIDR prefix
	Text     string
	From, To time.Time
	Limit    int
}

func (q LogQuery) values() url.Values {
	v := url.Values{}
	if len(q.KeyIDs) > 0 {
		v.Set("key_id", strings.Join(q.KeyIDs, ","))
	}
	if len(q.Actions) > 0 {
		v.Set("action", strings.Join(q.Actions, ","))
	}
	if len(q.Outcomes) > 0 {
		v.Set("outcome", strings.Join(q.Outcomes, ","))
	}
	set(v, "actor", q.Actor)
	set(v, "owner", q.Owner)
	set(v, "ip", q.IP)
	set(v, "q", q.Text)
	if !q.From.IsZero() {
		v.Set("from", q.From.UTC().Format(time.RFC3339Nano))
	}
	if !q.To.IsZero() {
		v.Set("to", q.To.UTC().Format(time.RFC3339Nano))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return v
}

// LogPage returns one page of the audit log, newest first; pass the
// previous page's NextCursor to get the next.
func (c *Client) LogPage(ctx context.Context, q LogQuery, cursor string) (LogPage, error) {
	v := q.values()
	set(v, "cursor", cursor)
	var out LogPage
	_, err := c.Do(ctx, "GET", "/v1/logs", v, nil, &out)
	return out, err
}

// Logs iterates over every event the query selects, newest first, page
// by page. It stops at the first error, which it yields.
func (c *Client) Logs(ctx context.Context, q LogQuery) iter.Seq2[LogEntry, error] {
	return func(yield func(LogEntry, error) bool) {
		cursor := ""
		for {
			page, err := c.LogPage(ctx, q, cursor)
			if err != nil {
				yield(LogEntry{}, err)
				return
			}
			for _, e := range page.Events {
				if !yield(e, nil) {
					return
				}
			}
			if page.NextCursor == "" {
				return
			}
			cursor = page.NextCursor
		}
	}
}

// Alerts returns one page of alerts, newest first.
func (c *Client) Alerts(ctx context.Context, cursor string) (AlertPage, error) {
	v := url.Values{}
	set(v, "cursor", cursor)
	var out AlertPage
	_, err := c.Do(ctx, "GET", "/v1/alerts", v, nil, &out)
	return out, err
}

// AlertFilter narrows the alert stream.
type AlertFilter struct {
	Rules       []string
	MinSeverity string
}

// StreamAlerts calls fn with each new alert as the server raises it, until
// ctx ends (then it returns nil), fn returns an error (returned) or the
// stream breaks (an *Error with CodeUnreachable).
func (c *Client) StreamAlerts(ctx context.Context, f AlertFilter, fn func(AlertView) error) error {
	v := url.Values{}
	if len(f.Rules) > 0 {
		v.Set("rule", strings.Join(f.Rules, ","))
	}
	set(v, "min_severity", f.MinSeverity)
	req, err := c.newRequest(ctx, "GET", "/v1/alerts/stream", v, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream, application/problem+json")
	resp, err := c.httpClient().Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return &Error{Code: CodeUnreachable, Detail: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return ProblemError(resp.StatusCode, resp.Header.Get("Content-Type"), raw)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			if len(data) > 0 {
				var a AlertView
				if err := json.Unmarshal(data, &a); err != nil {
					return &Error{Status: resp.StatusCode, Code: CodeBadResponse, Detail: fmt.Sprintf("alert stream: %v", err)}
				}
				data = data[:0]
				if err := fn(a); err != nil {
					return err
				}
			}
		case bytes.HasPrefix(line, []byte("data:")):
			data = append(data, bytes.TrimSpace(line[len("data:"):])...)
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return &Error{Code: CodeUnreachable, Detail: fmt.Sprintf("alert stream: %v", err)}
	}
	return &Error{Code: CodeUnreachable, Detail: "alert stream: the server closed it"}
}

func set(v url.Values, k, val string) {
	if val != "" {
		v.Set(k, val)
	}
}
