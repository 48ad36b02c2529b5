package api

import (
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
	fastjson "github.com/segmentio/encoding/json"
)

type verifyRequest struct {
	Token      string `json:"token"`
	Permission string `json:"permission"`
	IP         string `json:"ip"`
}

// VerifyResponse answers POST /v1/verify.
type VerifyResponse struct {
	Valid       bool       `json:"valid"`
	Code        string     `json:"code"`
	KeyID       string     `json:"key_id,omitempty"`
	Owner       string     `json:"owner,omitempty"`
	Permissions []string   `json:"permissions,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	EventID     string     `json:"event_id"`
}

// verify checks a token for a verifying service. One event records both:
// the verification, and its caller's use of its own key (caller_key,
// caller_ip). The answer is sent only once it is stored. When no
// verification happens (a bad request), the caller's authentication is
// recorded on its own instead.
func (s *Server) verify(w http.ResponseWriter, r *http.Request, c caller, pending authEvent) {
	start := time.Now()
	var req verifyRequest
	if err := decode(r, &req); err != nil {
		s.publishOrFail(w, r, pending, err)
		return
	}
	if req.Permission != "" && !domain.ValidPermission(req.Permission) {
		s.publishOrFail(w, r, pending, domain.Errorf(domain.EINVALID, "invalid_permission", "invalid permission %q", req.Permission))
		return
	}
	var addr netip.Addr
	if req.IP != "" {
		a, err := netip.ParseAddr(strings.TrimSpace(req.IP))
		if err != nil || a.Zone() != "" {
			s.publishOrFail(w, r, pending, domain.Errorf(domain.EINVALID, "invalid_ip", "ip %q is not an IP address", req.IP))
			return
		}
		addr = a.Unmap()
	}
	// The caller's authentication is not stored on its own: the
	// verification's event names the caller's key and address.
	rc := pending.req.Context
	res, env, err := s.verifier.Decide(keystate.Request{
		Token: req.Token, Permission: req.Permission, IP: addr, Actor: c.Principal.ID,
		CallerKey: c.Key.ID, CallerIP: rc.SourceIP,
		Context: &domain.RequestContext{RequestID: rc.RequestID},
	})
	if err != nil {
		s.problem(w, r, err)
		return
	}
	if err := s.cfg.Usage.Publish(r.Context(), env); err != nil {
		s.log.ErrorContext(r.Context(), "record verification", "err", err)
		s.problem(w, r, errUnavailable)
		return
	}
	s.metrics.verifications.WithLabelValues(res.Code).Inc()
	s.metrics.verifyLatency.WithLabelValues(res.Code).Observe(time.Since(start).Seconds())
	out := VerifyResponse{Valid: res.Valid(), Code: res.Code, EventID: res.EventID.String()}
	// Who owns a key is told only to a caller that proved its secret.
	if res.Found && res.Code != domain.OutcomeInvalidSecret {
		out.KeyID, out.Owner = res.Key.ID, res.Key.Owner
		if res.Valid() {
			out.Permissions = nonNil(res.Permissions())
			out.ExpiresAt = timePtr(res.Key.ExpiresAt)
		}
	}
	writeVerify(w, &out)
}

// answers holds the buffers verification answers are encoded into.
var answers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// writeVerify writes a verification's answer: the bytes writeJSON writes
// (compact, HTML not escaped, a final newline), appended by segmentio's
// encoder into a pooled buffer instead of through encoding/json's
// reflection. ?pretty still goes through writeJSON.
func writeVerify(w http.ResponseWriter, out *VerifyResponse) {
	if sw, ok := w.(*statusWriter); ok && sw.pretty {
		writeJSON(w, http.StatusOK, out)
		return
	}
	bp := answers.Get().(*[]byte)
	defer answers.Put(bp)
	b, err := fastjson.Append((*bp)[:0], out, 0)
	if err != nil {
		writeJSON(w, http.StatusOK, out)
		return
	}
	b = append(b, '\n')
	*bp = b[:0]
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// publishOrFail stores a pending authentication event and writes err.
func (s *Server) publishOrFail(w http.ResponseWriter, r *http.Request, pending authEvent, err error) {
	if perr := s.recordAuth(r, pending); perr != nil {
		s.problem(w, r, perr)
		return
	}
	s.problem(w, r, err)
}
