package api

import (
	"net/http"
	"slices"
	"strings"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
)

// caller is an authenticated principal acting through one of its keys.
type caller struct {
	Key       domain.Key
	Principal domain.Principal
	// perms are the principal's current permissions; a call needs a
	// permission on both the key and the principal, so removing a role
	// takes effect on existing keys at once.
	perms []string
}

func (c caller) can(p string) bool {
	return domain.Covers(c.Key.Permissions, p) && domain.Covers(c.perms, p)
}

// reach decides whether the caller may apply perm to key k. Another
// principal's key is invisible (ENOTFOUND) without api.key.view.any, and
// forbidden without perm's ".any" form.
func (c caller) reach(k domain.Key, perm string) error {
	if k.Owner == c.Principal.ID {
		if c.can(perm) {
			return nil
		}
		return domain.Errorf(domain.EFORBIDDEN, "insufficient_permissions", "this call needs %s", perm)
	}
	if !c.can(domain.PermKeyViewAny) {
		return errKeyNotFound
	}
	if perm == domain.PermKeyView || c.can(perm+".any") {
		return nil
	}
	return domain.Errorf(domain.EFORBIDDEN, "insufficient_permissions", "this call needs %s.any on another principal's key", perm)
}

var errKeyNotFound = domain.Errorf(domain.ENOTFOUND, "key_not_found", "key not found")

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
	c := caller{Key: res.Key, Principal: pr, perms: s.cfg.State.PrincipalPermissions(pr.ID)}
	if perm != "" && !c.can(perm) {
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

// keyPermissions resolves what a new key may do: the requested permissions,
// a role's, or by default the owner's own; always a subset of the owner's.
func (s *Server) keyPermissions(owner []string, role string, requested []string) ([]string, error) {
	var perms []string
	switch {
	case role != "" && requested != nil:
		return nil, domain.Errorf(domain.EINVALID, "invalid_permissions", "give permissions or role, not both")
	case role != "":
		r, ok := s.cfg.State.Role(role)
		if !ok || r.Deleted {
			return nil, domain.Errorf(domain.EINVALID, "unknown_role", "unknown role %q", role)
		}
		perms = r.Permissions
	case requested != nil:
		perms = requested
	default:
		perms = owner
	}
	norm, err := domain.NormalizePermissions(perms)
	if err != nil {
		return nil, err
	}
	for _, p := range norm {
		if !domain.Covers(owner, p) {
			return nil, domain.Errorf(domain.EFORBIDDEN, "permission_not_held", "a key cannot carry %q: its owner does not hold it", p)
		}
	}
	return slices.Clip(norm), nil
}
