package api

import (
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

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

// authEvent is a caller's checked authentication whose usage event is not
// built yet. /v1/verify stores it only when no verification follows (the
// verification's own event names its caller); the zero value is none.
type authEvent struct {
	req keystate.Request
	res keystate.Result
	now time.Time
}

// authenticate verifies the request's bearer token by the same path as any
// key, records the verification and checks perm. With record false a
// successful authentication is returned unrecorded, for the caller to
// store together with its own events or to drop when its own event names
// the caller (see recordAuth); a failed one is always recorded.
func (s *Server) authenticate(r *http.Request, perm string, record bool) (caller, authEvent, error) {
	tok, ok := bearer(r)
	if !ok {
		return caller{}, authEvent{}, domain.Errorf(domain.EUNAUTHORIZED, "missing_token", "an Authorization: Bearer token is required")
	}
	addr := s.clientAddr(r)
	req := keystate.Request{
		Token:      tok,
		Permission: perm,
		IP:         addr,
		Actor:      s.cfg.ServiceName,
		Context:    s.requestContextFrom(r, addr),
	}
	now := s.verifier.Now()
	res := s.verifier.Check(req, now)
	pending := authEvent{req: req, res: res, now: now}
	if !res.Valid() {
		if err := s.throttleFailure(tok, addr, now); err != nil {
			s.metrics.verifications.WithLabelValues(domain.OutcomeThrottled).Inc()
			return caller{}, authEvent{}, err
		}
	}
	if record || !res.Valid() {
		if err := s.recordAuth(r, pending); err != nil {
			return caller{}, authEvent{}, err
		}
		pending = authEvent{}
	}
	s.metrics.verifications.WithLabelValues(res.Code).Inc()
	switch res.Code {
	case domain.OutcomeValid:
	case domain.OutcomeInsufficientPermissions:
		return caller{}, authEvent{}, domain.Errorf(domain.EFORBIDDEN, "insufficient_permissions", "this call needs %s", perm)
	case domain.OutcomeNotFound, domain.OutcomeInvalidSecret:
		// One answer for both: a caller without a working token must
		// not learn which key ids exist. /v1/verify reports the precise
		// outcome of the token a service presents.
		return caller{}, authEvent{}, domain.Errorf(domain.EUNAUTHORIZED, "token_invalid", "token rejected: unknown key or wrong secret")
	default:
		return caller{}, authEvent{}, domain.Errorf(domain.EUNAUTHORIZED, "token_"+strings.ToLower(res.Code), "token rejected: %s", res.Code)
	}
	pr, ok := s.cfg.State.Principal(res.Key.Owner)
	if !ok || pr.Disabled {
		return caller{}, authEvent{}, domain.Errorf(domain.EFORBIDDEN, "principal_disabled", "the token's principal is disabled or unknown")
	}
	c := caller{Key: res.Key, Principal: pr, Permissions: s.cfg.State.PrincipalPermissions(pr.ID)}
	if perm != "" && !c.Can(perm) {
		return caller{}, authEvent{}, domain.Errorf(domain.EFORBIDDEN, "insufficient_permissions", "this call needs %s", perm)
	}
	return c, pending, nil
}

// authEvents builds the usage event of a pending authentication, if any.
func (s *Server) authEvents(a authEvent) ([]domain.Envelope, error) {
	if a.res.Code == "" {
		return nil, nil
	}
	_, env, err := s.verifier.Event(a.req, a.res, a.now)
	if err != nil {
		return nil, err
	}
	return []domain.Envelope{env}, nil
}

// recordAuth builds and stores the usage event of a pending
// authentication, if any.
func (s *Server) recordAuth(r *http.Request, a authEvent) error {
	envs, err := s.authEvents(a)
	if err != nil || len(envs) == 0 {
		return err
	}
	if err := s.cfg.Usage.Publish(r.Context(), envs...); err != nil {
		s.log.ErrorContext(r.Context(), "record authentication", "err", err)
		return errUnavailable
	}
	return nil
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

// throttleFailure counts a failed authentication from addr. Within the
// address's budget it returns nil and the failure is recorded as its own
// event; past it the failure is counted into the address's summary and the
// caller is answered 429 too_many_failures.
func (s *Server) throttleFailure(tok string, addr netip.Addr, now time.Time) error {
	keyID := ""
	if t, err := domain.ParseToken(tok); err == nil {
		keyID = t.KeyID.String()
	}
	record, retry := s.throttle.fail(addr, keyID, now)
	if record {
		return nil
	}
	return tooManyFailures{retry: retry}
}

// tooManyFailures answers 429 with Retry-After: the address's failed
// authentications are past their budget until its window ends.
type tooManyFailures struct{ retry time.Duration }

func (e tooManyFailures) Error() string {
	return "too many failed authentications from this address; retry later"
}

// Unwrap gives the problem its stable code.
func (e tooManyFailures) Unwrap() error {
	return domain.Errorf(domain.ELIMIT, "too_many_failures", "too many failed authentications from this address; retry after %s", e.retrySeconds())
}

func (e tooManyFailures) retrySeconds() string {
	return strconv.Itoa(int(max(1, math.Ceil(e.retry.Seconds()))))
}
