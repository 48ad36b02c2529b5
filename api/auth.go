package api

import (
	"net/http"
	"strings"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
)

// caller is an authenticated principal acting through one of its keys;
// what it may do is decided by the pure rules on domain.Actor.
type caller = domain.Actor

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// authenticate verifies the request's bearer token by the same path as any
// key, records the verification and checks perm. With record false the
// usage event is returned instead of stored, so the caller can store it
// together with its own (one group commit for /v1/verify).
func (s *Server) authenticate(r *http.Request, perm string, record bool) (caller, []domain.Envelope, error) {
	tok, ok := bearer(r)
	if !ok {
		return caller{}, nil, domain.Errorf(domain.EUNAUTHORIZED, "missing_token", "an Authorization: Bearer token is required")
	}
	res, env, err := s.verifier.Decide(keystate.Request{
		Token:      tok,
		Permission: perm,
		IP:         s.clientAddr(r),
		Actor:      s.cfg.ServiceName,
		Context:    s.requestContext(r),
	})
	if err != nil {
		return caller{}, nil, err
	}
	pending := []domain.Envelope{env}
	if record || !res.Valid() {
		if err := s.cfg.Usage.Publish(r.Context(), env); err != nil {
			s.log.ErrorContext(r.Context(), "record authentication", "err", err)
			return caller{}, nil, errUnavailable
		}
		pending = nil
	}
	s.metrics.verifications.WithLabelValues(res.Code).Inc()
	switch res.Code {
	case domain.OutcomeValid:
	case domain.OutcomeInsufficientPermissions:
		return caller{}, nil, domain.Errorf(domain.EFORBIDDEN, "insufficient_permissions", "this call needs %s", perm)
	default:
		return caller{}, nil, domain.Errorf(domain.EUNAUTHORIZED, "token_"+strings.ToLower(res.Code), "token rejected: %s", res.Code)
	}
	pr, ok := s.cfg.State.Principal(res.Key.Owner)
	if !ok || pr.Disabled {
		return caller{}, nil, domain.Errorf(domain.EFORBIDDEN, "principal_disabled", "the token's principal is disabled or unknown")
	}
	c := caller{Key: res.Key, Principal: pr, Permissions: s.cfg.State.PrincipalPermissions(pr.ID)}
	if perm != "" && !c.Can(perm) {
		return caller{}, nil, domain.Errorf(domain.EFORBIDDEN, "insufficient_permissions", "this call needs %s", perm)
	}
	return c, pending, nil
}

// auth is authenticate for ordinary management routes: it writes the
// problem itself and reports whether the handler should go on.
func (s *Server) auth(w http.ResponseWriter, r *http.Request, perm string) (caller, bool) {
	c, _, err := s.authenticate(r, perm, true)
	if err != nil {
		s.problem(w, r, err)
		return caller{}, false
	}
	return c, true
}
