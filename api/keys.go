package api

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
)

// KeyView is a key as the API shows it. It never carries a secret or a hash.
type KeyView struct {
	KeyID            string            `json:"key_id"`
	Name             string            `json:"name"`
	Owner            string            `json:"owner"`
	Comments         string            `json:"comments"`
	Role             string            `json:"role,omitempty"`
	Permissions      []string          `json:"permissions"`
	AllowedIPs       []string          `json:"allowed_ips"`
	Metadata         map[string]string `json:"metadata,omitempty"`
	Status           domain.Status     `json:"status"`
	LifetimeDays     int               `json:"lifetime_days"`
	CreatedAt        time.Time         `json:"created_at"`
	CreatedBy        string            `json:"created_by"`
	ExpiresAt        time.Time         `json:"expires_at"`
	RemainingSeconds int64             `json:"remaining_seconds"`
	UpdatedAt        time.Time         `json:"updated_at"`
	RevokedAt        *time.Time        `json:"revoked_at,omitempty"`
	RevokeReason     string            `json:"revoke_reason,omitempty"`
	DeletedAt        *time.Time        `json:"deleted_at,omitempty"`
	RotationGraceEnd *time.Time        `json:"previous_secret_valid_until,omitempty"`
	LastUsedAt       *time.Time        `json:"last_used_at"`
	LastUsedIP       string            `json:"last_used_ip,omitempty"`
	Version          uint64            `json:"version"`
}

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

// newSecret draws a secret from the operating system's CSPRNG.
func newSecret() domain.Secret {
	var s domain.Secret
	_, _ = rand.Read(s[:]) // crypto/rand.Read never fails.
	return s
}

// execKey decides a command against the key's current state, appends the
// events with the state's version as the concurrency check and waits until
// the local projection has applied them, so the caller reads its own write
// and a revocation is effective at this node when the call returns.
func (s *Server) execKey(ctx context.Context, id string, cmd domain.Command) (domain.Key, error) {
	k, _ := s.cfg.State.Key(id)
	envs, err := domain.Decide(k, cmd, s.cfg.Now(), s.cfg.NewID)
	if err != nil {
		return domain.Key{}, err
	}
	return s.commit(ctx, id, k.Version, envs)
}

func (s *Server) commit(ctx context.Context, id string, expected uint64, envs []domain.Envelope) (domain.Key, error) {
	if err := s.appendAndWait(ctx, expected, envs); err != nil {
		return domain.Key{}, err
	}
	k, _ := s.cfg.State.Key(id)
	return k, nil
}

// appendAndWait appends an aggregate's events with the concurrency check
// and returns once the local projection has applied them.
func (s *Server) appendAndWait(ctx context.Context, expected uint64, envs []domain.Envelope) error {
	seq, err := s.cfg.Store.Append(ctx, expected, envs)
	if err != nil {
		return err
	}
	return s.cfg.State.WaitFor(ctx, seq)
}

// loadKey finds a key the caller may apply perm to. A deleted key can still
// be viewed (its tombstone and history are part of the audit trail) but no
// longer changed.
func (s *Server) loadKey(c caller, id, perm string) (domain.Key, error) {
	if _, err := uuid.Parse(id); err != nil {
		return domain.Key{}, errKeyNotFound
	}
	k, ok := s.cfg.State.Key(id)
	if !ok || !k.Exists() {
		return domain.Key{}, errKeyNotFound
	}
	if err := c.reach(k, perm); err != nil {
		return domain.Key{}, err
	}
	if !k.DeletedAt.IsZero() && perm != domain.PermKeyView {
		return domain.Key{}, domain.Errorf(domain.ECONFLICT, "key_deleted", "key %s is deleted", k.ID)
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

// CreatedKey is the response to a key creation or rotation: the only time
// the token is shown.
type CreatedKey struct {
	KeyView
	Token string `json:"token"`
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request) {
	c, ok := s.auth(w, r, domain.PermKeyCreate)
	if !ok {
		return
	}
	var req createKeyRequest
	if err := decode(r, &req); err != nil {
		s.problem(w, r, err)
		return
	}
	key, tok, err := s.issueKey(r.Context(), c.Principal, c.perms, req, domain.Meta{Actor: c.Principal.ID, Context: s.requestContext(r)})
	if err != nil {
		s.problem(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/keys/"+key.ID)
	writeJSON(w, http.StatusCreated, CreatedKey{KeyView: s.view(key, s.cfg.Now()), Token: tok})
}

// issueKey creates a key owned by pr and returns it with its token.
func (s *Server) issueKey(ctx context.Context, pr domain.Principal, ownerPerms []string, req createKeyRequest, m domain.Meta) (domain.Key, string, error) {
	if req.LifetimeDays != 0 && (req.LifetimeDays < 1 || req.LifetimeDays > domain.MaxLifetimeDays) {
		return domain.Key{}, "", domain.Errorf(domain.EINVALID, "lifetime_out_of_range", "lifetime_days must be between 1 and %d", domain.MaxLifetimeDays)
	}
	perms, err := s.keyPermissions(ownerPerms, req.Role, req.Permissions)
	if err != nil {
		return domain.Key{}, "", err
	}
	limit := pr.MaxKeys
	if limit == 0 {
		limit = s.cfg.MaxActiveKeys
	}
	if n := s.cfg.State.ActiveKeys(pr.ID); n >= limit {
		return domain.Key{}, "", domain.Errorf(domain.ELIMIT, "key_limit_reached", "principal has %d active keys, the limit is %d", n, limit)
	}
	id := uuid.Must(uuid.NewV7())
	secret := newSecret()
	k, err := s.execKey(ctx, id.String(), domain.CreateKey{
		Meta: m, KeyID: id.String(), Owner: pr.ID, Name: req.Name, Comments: req.Comments, Role: req.Role,
		Permissions: perms, LifetimeDays: req.LifetimeDays, AllowedIPs: req.AllowedIPs, Metadata: req.Metadata,
		SecretHash: domain.HashSecret(secret),
	})
	if err != nil {
		return domain.Key{}, "", err
	}
	return k, domain.FormatToken(id, secret), nil
}

// KeyPage is one page of the key grid.
type KeyPage struct {
	Keys       []KeyView `json:"keys"`
	NextCursor string    `json:"next_cursor,omitempty"`
}

const maxPageSize = 500

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) {
	c, ok := s.auth(w, r, domain.PermKeyView)
	if !ok {
		return
	}
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
	if !c.can(domain.PermKeyViewAny) {
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

func (s *Server) getKey(w http.ResponseWriter, r *http.Request) {
	c, ok := s.auth(w, r, domain.PermKeyView)
	if !ok {
		return
	}
	k, err := s.loadKey(c, r.PathValue("id"), domain.PermKeyView)
	if err != nil {
		s.problem(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.view(k, s.cfg.Now()))
}

type updateKeyRequest struct {
	Name        *string   `json:"name"`
	Comments    *string   `json:"comments"`
	Permissions *[]string `json:"permissions"`
}

func (s *Server) updateKey(w http.ResponseWriter, r *http.Request) {
	s.keyCommand(w, r, domain.PermKeyUpdate, func(c caller, k domain.Key, m domain.Meta) (domain.Command, error) {
		var req updateKeyRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		if req.Permissions != nil {
			ownerPerms := s.cfg.State.PrincipalPermissions(k.Owner)
			perms, err := s.keyPermissions(ownerPerms, "", *req.Permissions)
			if err != nil {
				return nil, err
			}
			req.Permissions = &perms
		}
		return domain.UpdateKey{Meta: m, Name: req.Name, Comments: req.Comments, Permissions: req.Permissions}, nil
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

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request) {
	s.keyCommand(w, r, domain.PermKeyDelete, func(c caller, k domain.Key, m domain.Meta) (domain.Command, error) {
		// The reason may come as ?reason= because some proxies drop the
		// body of a DELETE.
		req := reasonRequest{Reason: r.URL.Query().Get("reason")}
		if err := decodeOptional(r, &req); err != nil {
			return nil, err
		}
		return domain.DeleteKey{Meta: m, Reason: req.Reason}, nil
	})
}

func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request) {
	s.keyCommand(w, r, domain.PermKeyRevoke, func(c caller, k domain.Key, m domain.Meta) (domain.Command, error) {
		var req reasonRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return domain.RevokeKey{Meta: m, Reason: req.Reason}, nil
	})
}

func (s *Server) disableKey(w http.ResponseWriter, r *http.Request) {
	s.keyCommand(w, r, domain.PermKeyDisable, func(c caller, k domain.Key, m domain.Meta) (domain.Command, error) {
		var req reasonRequest
		if err := decodeOptional(r, &req); err != nil {
			return nil, err
		}
		return domain.DisableKey{Meta: m, Reason: req.Reason}, nil
	})
}

func (s *Server) enableKey(w http.ResponseWriter, r *http.Request) {
	s.keyCommand(w, r, domain.PermKeyEnable, func(c caller, k domain.Key, m domain.Meta) (domain.Command, error) {
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

func (s *Server) regenerateKey(w http.ResponseWriter, r *http.Request) {
	var token string
	s.keyCommandWith(w, r, domain.PermKeyRegenerate, func(c caller, k domain.Key, m domain.Meta) (domain.Command, error) {
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
		if req.Rotate {
			secret := newSecret()
			cmd.SecretHash = domain.HashSecret(secret)
			token = domain.FormatToken(uuid.MustParse(k.ID), secret)
		}
		return cmd, nil
	}, func(k domain.Key) any {
		if token == "" {
			return s.view(k, s.cfg.Now())
		}
		return CreatedKey{KeyView: s.view(k, s.cfg.Now()), Token: token}
	})
}

func (s *Server) keyCommand(w http.ResponseWriter, r *http.Request, perm string, build func(caller, domain.Key, domain.Meta) (domain.Command, error)) {
	s.keyCommandWith(w, r, perm, build, func(k domain.Key) any { return s.view(k, s.cfg.Now()) })
}

// keyCommandWith is the shape of every key command: authenticate, find the
// key the caller may reach, build the command from the body, execute it.
func (s *Server) keyCommandWith(w http.ResponseWriter, r *http.Request, perm string, build func(caller, domain.Key, domain.Meta) (domain.Command, error), respond func(domain.Key) any) {
	c, ok := s.auth(w, r, perm)
	if !ok {
		return
	}
	k, err := s.loadKey(c, r.PathValue("id"), perm)
	if err != nil {
		s.problem(w, r, err)
		return
	}
	cmd, err := build(c, k, domain.Meta{Actor: c.Principal.ID, Context: s.requestContext(r)})
	if err != nil {
		s.problem(w, r, err)
		return
	}
	envs, err := domain.Decide(k, cmd, s.cfg.Now(), s.cfg.NewID)
	if err != nil {
		s.problem(w, r, err)
		return
	}
	k, err = s.commit(r.Context(), k.ID, k.Version, envs)
	if err != nil {
		s.problem(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, respond(k))
}

// EventView is one stored event as the API shows it.
type EventView struct {
	domain.Envelope
	Stream string `json:"stream"`
	Seq    uint64 `json:"seq"`
}

func (s *Server) keyEvents(w http.ResponseWriter, r *http.Request) {
	c, ok := s.auth(w, r, domain.PermKeyView)
	if !ok {
		return
	}
	k, err := s.loadKey(c, r.PathValue("id"), domain.PermKeyView)
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
