package client

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"github.com/keyledger/keyledger/domain"
)

// Middleware admits requests that present a verified key.
type Middleware struct {
	Verifier Verifier
	// Header names the header the token is read from, as its whole value;
	// empty reads "Authorization: Bearer <token>".
	Header string
	// ClientIP returns the address a request came from, which keys with
	// allowed_ips need; the default takes it from r.RemoteAddr. Behind a
	// proxy, take it from the header the proxy sets.
	ClientIP func(r *http.Request) string
	// Logger hears of verifications that could not be made; slog.Default()
	// when nil.
	Logger *slog.Logger
}

type verifiedKey struct{}

// FromContext returns the verification of the key a request presented,
// once RequireKey admitted it.
func FromContext(ctx context.Context) (Verification, bool) {
	v, ok := ctx.Value(verifiedKey{}).(Verification)
	return v, ok
}

// RequireKey returns middleware that verifies the request's token for
// permission (empty: any valid key) with v, and calls next with the
// verification in the request's context (FromContext). Otherwise it answers
// with a problem document whose code is the outcome (ProblemCode): 401 for a missing,
// malformed, unknown, wrong, revoked, disabled or expired key or a source
// address the key does not allow; 403 for a valid key without permission;
// 503 when the verification could not be made (fail closed).
func RequireKey(v Verifier, permission string) func(http.Handler) http.Handler {
	return (&Middleware{Verifier: v}).RequireKey(permission)
}

// RequireKey is the package's RequireKey with m's settings.
func (m *Middleware) RequireKey(permission string) func(http.Handler) http.Handler {
	log := m.Logger
	if log == nil {
		log = slog.Default()
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tok, ok := m.token(r)
			if !ok {
				writeProblem(w, r, http.StatusUnauthorized, "missing_token", "a key is required")
				return
			}
			ip := m.clientIP(r)
			res, err := m.Verifier.Verify(r.Context(), VerifyRequest{Token: tok, Permission: permission, IP: ip})
			if err != nil {
				log.WarnContext(r.Context(), "keyledger verification failed", "err", err)
				writeProblem(w, r, http.StatusServiceUnavailable, "unavailable", "the key could not be verified; retry later")
				return
			}
			if !res.Valid {
				writeProblem(w, r, StatusFor(res.Code), ProblemCode(res.Code), "key rejected: "+rejectedAs(res.Code))
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), verifiedKey{}, res)))
		})
	}
}

// StatusFor is the HTTP status the middleware answers an outcome with.
func StatusFor(code string) int {
	switch code {
	case domain.OutcomeValid:
		return http.StatusOK
	case domain.OutcomeInsufficientPermissions:
		return http.StatusForbidden
	default:
		return http.StatusUnauthorized
	}
}

// ProblemCode is the problem code the middleware answers an outcome with:
// token_<outcome> in lower case, as the server's own 401s
// (token_revoked, token_insufficient_permissions, ...), except that an
// unknown key and a wrong secret both answer token_invalid: a caller
// without a working token must not learn which key ids exist.
func ProblemCode(outcome string) string {
	if outcome == domain.OutcomeNotFound || outcome == domain.OutcomeInvalidSecret {
		return "token_invalid"
	}
	return "token_" + strings.ToLower(outcome)
}

// rejectedAs is the outcome as the problem's detail names it: no more
// than its code says.
func rejectedAs(outcome string) string {
	if outcome == domain.OutcomeNotFound || outcome == domain.OutcomeInvalidSecret {
		return "unknown key or wrong secret"
	}
	return outcome
}

func (m *Middleware) token(r *http.Request) (string, bool) {
	if m.Header != "" {
		t := strings.TrimSpace(r.Header.Get(m.Header))
		return t, t != ""
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

func (m *Middleware) clientIP(r *http.Request) string {
	if m.ClientIP != nil {
		return m.ClientIP(r)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func writeProblem(w http.ResponseWriter, r *http.Request, status int, code, detail string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="keyledger"`)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type":     "https://keyledger.dev/problems/" + code,
		"title":    http.StatusText(status),
		"status":   status,
		"detail":   detail,
		"code":     code,
		"instance": r.URL.Path,
	})
}

// VerifierFunc adapts a function to Verifier, for a cache in front of
// another Verifier, say.
type VerifierFunc func(ctx context.Context, req VerifyRequest) (Verification, error)

// Verify calls f.
func (f VerifierFunc) Verify(ctx context.Context, req VerifyRequest) (Verification, error) {
	return f(ctx, req)
}
