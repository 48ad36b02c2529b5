package api

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api/view"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
)

// KeyView is a key as the API shows it (package view holds the wire
// types the console and the services' client share).
type KeyView = view.KeyView

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (s *Server) view(k domain.Key, now time.Time) KeyView {
	v := KeyView{
		KeyID: k.ID, Name: k.Name, Owner: k.Owner, Comments: k.Comments, Role: k.Role,
		Permissions: nonNil(k.Permissions), AllowedIPs: nonNil(k.AllowedIPs), Metadata: k.Metadata,
		Status: k.Status(now), LifetimeDays: k.LifetimeDays, CreatedAt: k.CreatedAt, CreatedBy: k.CreatedBy,
		ExpiresAt: k.ExpiresAt, RemainingSeconds: int64(k.Remaining(now) / time.Second), UpdatedAt: k.UpdatedAt,
		RevokedAt: timePtr(k.RevokedAt), RevokeReason: k.RevokeReason, DeletedAt: timePtr(k.DeletedAt),
		Version: k.Version,
	}
	if k.PrevSecretHash != "" && now.Before(k.PrevValidUntil) {
		v.RotationGraceEnd = timePtr(k.PrevValidUntil)
	}
	if s.cfg.LastUsed != nil {
		if at, ip, ok := s.cfg.LastUsed.LastUsed(k.ID); ok {
			v.LastUsedAt, v.LastUsedIP = &at, ip
		}
	}
	return v
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// viewKey finds a key the caller may see (domain.Actor.Authorize for
// viewing: its own, or any with api.key.view.any).
func (s *Server) viewKey(c caller, id string) (domain.Key, error) {
	if _, err := uuid.Parse(id); err != nil {
		return domain.Key{}, domain.ErrKeyNotFound
	}
	k, _ := s.cfg.State.Key(id)
	if err := c.Authorize(k, domain.PermKeyView); err != nil {
		return domain.Key{}, err
	}
	return k, nil
}

type createKeyRequest struct {
	Name         string            `json:"name"`
	Comments     string            `json:"comments"`
	Permissions  []string          `json:"permissions"`
	Role         string            `json:"role"`
	LifetimeDays int               `json:"lifetime_days"`
	AllowedIPs   []string          `json:"allowed_ips"`
	Metadata     map[string]string `json:"metadata"`
}

// CreatedKey is the response to a key creation or rotation.
type CreatedKey = view.CreatedKey

func (s *Server) createKey(w http.ResponseWriter, r *http.Request, c caller) {
	var req createKeyRequest
	if err := decode(r, &req); err != nil {
		s.problem(w, r, err)
		return
	}
	key, tok, err := s.cfg.Commands.CreateKey(r.Context(), c, domain.CreateKey{
		Meta: domain.Meta{Actor: c.ID(), Context: s.requestContext(r)},
		Name: req.Name, Comments: req.Comments, Role: req.Role, Permissions: req.Permissions,
		LifetimeDays: req.LifetimeDays, AllowedIPs: req.AllowedIPs, Metadata: req.Metadata,
	})
	if err != nil {
		s.problem(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/keys/"+key.ID)
	writeJSON(w, http.StatusCreated, CreatedKey{KeyView: s.view(key, s.cfg.Now()), Token: tok})
}

// KeyPage is one page of the key grid.
type KeyPage struct {
	Keys       []KeyView `json:"keys"`
	NextCursor string    `json:"next_cursor,omitempty"`
}

const maxPageSize = 500

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request, c caller) {
	q := r.URL.Query()
	f := keystate.Filter{Status: q.Get("status"), Query: q.Get("q"), Limit: 100, Now: s.cfg.Now()}
	switch f.Status {
	case "", "all":
	default:
		if _, ok := domain.ParseStatus(f.Status); !ok {
			s.problem(w, r, domain.Errorf(domain.EINVALID, "invalid_status", "status must be active, expired, revoked, disabled, deleted or all"))
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			s.problem(w, r, domain.Errorf(domain.EINVALID, "invalid_limit", "limit must be between 1 and %d", maxPageSize))
			return
		}
		f.Limit = n
	}
	if v := q.Get("cursor"); v != "" {
		after, err := decodeCursor(v)
		if err != nil {
			s.problem(w, r, err)
			return
		}
		f.After = after
	}
	if !c.SeesAllKeys() {
		f.Owner = c.Principal.ID
	} else if o := q.Get("owner"); o != "" {
		f.Owner = o
	}
	keys, more := s.cfg.State.List(f)
	page := KeyPage{Keys: make([]KeyView, 0, len(keys))}
	for _, k := range keys {
		page.Keys = append(page.Keys, s.view(k, f.Now))
	}
	if more {
		page.NextCursor = encodeCursor(keys[len(keys)-1].ID)
	}
	writeJSON(w, http.StatusOK, page)
}

// Cursors are opaque to clients: the base64url of "k1:" and the last id.
func encodeCursor(id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("k1:" + id))
}

func decodeCursor(c string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	bad := domain.Errorf(domain.EINVALID, "invalid_cursor", "invalid cursor")
	if err != nil {
		return "", bad
	}
	id, ok := strings.CutPrefix(string(b), "k1:")
	if !ok {
		return "", bad
	}
	if _, err := uuid.Parse(id); err != nil {
		return "", bad
	}
	return id, nil
}

func (s *Server) getKey(w http.ResponseWriter, r *http.Request, c caller) {
	k, err := s.viewKey(c, r.PathValue("id"))
	if err != nil {
		s.problem(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.view(k, s.cfg.Now()))
}

type updateKeyRequest struct {
	Name        *string            `json:"name"`
	Comments    *string            `json:"comments"`
	Permissions *[]string          `json:"permissions"`
	AllowedIPs  *[]string          `json:"allowed_ips"`
	Metadata    *map[string]string `json:"metadata"`
}

func (s *Server) updateKey(w http.ResponseWriter, r *http.Request, c caller) {
	s.keyCommand(w, r, c, func(m domain.Meta) (domain.Command, error) {
		var req updateKeyRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return domain.UpdateKey{Meta: m, Name: req.Name, Comments: req.Comments, Permissions: req.Permissions,
			AllowedIPs: req.AllowedIPs, Metadata: req.Metadata}, nil
	})
}

type reasonRequest struct {
	Reason string `json:"reason"`
}

// decodeOptional decodes a body that may be absent.
func decodeOptional(r *http.Request, v any) error {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	// A chunked request has no length: peek for an empty body.
	br := bufio.NewReader(r.Body)
	if _, err := br.Peek(1); err == io.EOF {
		return nil
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{br, r.Body}
	return decode(r, v)
}

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request, c caller) {
	s.keyCommand(w, r, c, func(m domain.Meta) (domain.Command, error) {
		// The reason may come as ?reason= because some proxies drop the
		// body of a DELETE.
		req := reasonRequest{Reason: r.URL.Query().Get("reason")}
		if err := decodeOptional(r, &req); err != nil {
			return nil, err
		}
		return domain.DeleteKey{Meta: m, Reason: req.Reason}, nil
	})
}

func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request, c caller) {
	s.keyCommand(w, r, c, func(m domain.Meta) (domain.Command, error) {
		var req reasonRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return domain.RevokeKey{Meta: m, Reason: req.Reason}, nil
	})
}

func (s *Server) disableKey(w http.ResponseWriter, r *http.Request, c caller) {
	s.keyCommand(w, r, c, func(m domain.Meta) (domain.Command, error) {
		var req reasonRequest
		if err := decodeOptional(r, &req); err != nil {
			return nil, err
		}
		return domain.DisableKey{Meta: m, Reason: req.Reason}, nil
	})
}

func (s *Server) enableKey(w http.ResponseWriter, r *http.Request, c caller) {
	s.keyCommand(w, r, c, func(m domain.Meta) (domain.Command, error) {
		if err := decodeOptional(r, &struct{}{}); err != nil {
			return nil, err
		}
		return domain.EnableKey{Meta: m}, nil
	})
}

type regenerateRequest struct {
	Rotate      bool   `json:"rotate"`
	GracePeriod string `json:"grace_period"`
}

func (s *Server) regenerateKey(w http.ResponseWriter, r *http.Request, c caller) {
	s.keyCommand(w, r, c, func(m domain.Meta) (domain.Command, error) {
		var req regenerateRequest
		if err := decodeOptional(r, &req); err != nil {
			return nil, err
		}
		cmd := domain.RegenerateKey{Meta: m, Rotate: req.Rotate}
		if req.GracePeriod != "" {
			d, err := time.ParseDuration(req.GracePeriod)
			if err != nil {
				return nil, domain.Errorf(domain.EINVALID, "invalid_grace_period", "grace_period %q is not a duration like 1h or 30m", req.GracePeriod)
			}
			cmd.GracePeriod = d
		}
		return cmd, nil
	})
}

// keyCommand is the shape of every key command: build the command from
// the body and execute it; the command path authorizes it on the key
// (domain.Actor.Authorize with the command's permission). A rotation
// answers with the new token, shown only then.
func (s *Server) keyCommand(w http.ResponseWriter, r *http.Request, c caller, build func(domain.Meta) (domain.Command, error)) {
	id := r.PathValue("id")
	cmd, err := build(domain.Meta{Actor: c.ID(), Context: s.requestContext(r)})
	if err != nil {
		s.problem(w, r, err)
		return
	}
	k, token, err := s.cfg.Commands.ChangeKey(r.Context(), c, id, cmd)
	if err != nil {
		s.problem(w, r, err)
		return
	}
	if token != "" {
		writeJSON(w, http.StatusOK, CreatedKey{KeyView: s.view(k, s.cfg.Now()), Token: token})
		return
	}
	writeJSON(w, http.StatusOK, s.view(k, s.cfg.Now()))
}

// EventView is one stored event as the API shows it.
type EventView struct {
	domain.Envelope
	Stream string `json:"stream"`
	Seq    uint64 `json:"seq"`
}

func (s *Server) keyEvents(w http.ResponseWriter, r *http.Request, c caller) {
	k, err := s.viewKey(c, r.PathValue("id"))
	if err != nil {
		s.problem(w, r, err)
		return
	}
	envs, err := s.cfg.Store.Load(r.Context(), domain.KindKey, k.ID)
	if err != nil {
		s.problem(w, r, fmt.Errorf("load events of %s: %w", k.ID, err))
		return
	}
	out := make([]EventView, 0, len(envs))
	for _, e := range envs {
		out = append(out, EventView{Envelope: e, Stream: e.Stream, Seq: e.Seq})
	}
	writeJSON(w, http.StatusOK, map[string]any{"key_id": k.ID, "events": out})
}
