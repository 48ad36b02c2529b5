package domain

import (
	"encoding/hex"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// MaxGracePeriod bounds how long a rotated-out secret keeps working.
const MaxGracePeriod = 30 * 24 * time.Hour

// Command is a request to change a key. Every command carries who asked and
// from where.
type Command interface {
	meta() Meta
}

// Meta is the part every command shares.
type Meta struct {
	Actor   string
	Context *RequestContext
}

func (m Meta) meta() Meta { return m }

// CreateKey creates a key. The caller generates the key id and the secret
// (randomness is I/O) and passes only the secret's hash.
type CreateKey struct {
	Meta
	KeyID        string
	Owner        string
	Name         string
	Comments     string
	Role         string
	Permissions  []string
	LifetimeDays int
	AllowedIPs   []string
	Metadata     map[string]string
	SecretHash   string
}

// RegenerateKey extends a key's lifetime by its original lifetime, never past
// now plus the maximum lifetime (see RegeneratedExpiry), with its original
// privileges. With Rotate, it also installs a new secret; the old
// one keeps working for GracePeriod.
type RegenerateKey struct {
	Meta
	Rotate      bool
	GracePeriod time.Duration
	SecretHash  string
}

// UpdateKey changes descriptive fields, permissions, allowed IPs or
// metadata; nil fields are kept. An empty AllowedIPs lifts the address
// restriction, an empty Metadata clears it.
type UpdateKey struct {
	Meta
	Name        *string
	Comments    *string
	Permissions *[]string
	AllowedIPs  *[]string
	Metadata    *map[string]string
}

// DisableKey suspends a key until it is enabled again.
type DisableKey struct {
	Meta
	Reason string
}

// EnableKey ends a suspension.
type EnableKey struct{ Meta }

// RevokeKey disables a key permanently.
type RevokeKey struct {
	Meta
	Reason string
}

// DeleteKey revokes a key if it is still usable, then tombstones it.
type DeleteKey struct {
	Meta
	Reason string
}

// Decide returns the events a command produces on a key's state, or a
// domain error. It is pure: now and newID are supplied by the caller. The
// returned envelopes are sealed into the key's hash chain.
//
// Errors: EINVALID for bad input, ENOTFOUND (key_not_found) for a key that
// does not exist, ECONFLICT with a stable reason for an illegal transition
// (key_exists, key_revoked, key_deleted, key_already_disabled,
// key_not_disabled).
func Decide(k Key, cmd Command, now time.Time, newID func() uuid.UUID) ([]Envelope, error) {
	events, keyID, err := decide(k, cmd, now)
	if err != nil {
		return nil, err
	}
	return seal(keyID, k.LastHash, events, cmd.meta(), now, newID)
}

func decide(k Key, cmd Command, now time.Time) ([]Event, string, error) {
	if cmd.meta().Actor == "" {
		return nil, "", Errorf(EINVALID, "missing_actor", "a command needs an actor")
	}
	if c, ok := cmd.(CreateKey); ok {
		if k.Exists() {
			return nil, "", Errorf(ECONFLICT, "key_exists", "key %s already exists", c.KeyID)
		}
		ev, err := decideCreate(c, now)
		return []Event{ev}, c.KeyID, err
	}
	if !k.Exists() {
		return nil, "", Errorf(ENOTFOUND, "key_not_found", "key not found")
	}
	if !k.DeletedAt.IsZero() {
		return nil, "", Errorf(ECONFLICT, "key_deleted", "key %s is deleted", k.ID)
	}
	revoked := !k.RevokedAt.IsZero()
	errRevoked := Errorf(ECONFLICT, "key_revoked", "key %s is revoked", k.ID)
	switch c := cmd.(type) {
	case RegenerateKey:
		if revoked {
			return nil, "", errRevoked
		}
		ev, err := decideRegenerate(k, c, now)
		return []Event{ev}, k.ID, err
	case UpdateKey:
		if revoked {
			return nil, "", errRevoked
		}
		ev, err := decideUpdate(k, c)
		return []Event{ev}, k.ID, err
	case DisableKey:
		if revoked {
			return nil, "", errRevoked
		}
		if k.Disabled {
			return nil, "", Errorf(ECONFLICT, "key_already_disabled", "key %s is already disabled", k.ID)
		}
		reason, err := CleanText("reason", c.Reason, MaxReasonLen, false, true)
		if err != nil {
			return nil, "", err
		}
		return []Event{KeyDisabled{Reason: reason}}, k.ID, nil
	case EnableKey:
		if revoked {
			return nil, "", errRevoked
		}
		if !k.Disabled {
			return nil, "", Errorf(ECONFLICT, "key_not_disabled", "key %s is not disabled", k.ID)
		}
		return []Event{KeyEnabled{}}, k.ID, nil
	case RevokeKey:
		if revoked {
			return nil, "", errRevoked
		}
		reason, err := CleanText("reason", c.Reason, MaxReasonLen, true, true)
		if err != nil {
			return nil, "", err
		}
		return []Event{KeyRevoked{Reason: reason}}, k.ID, nil
	case DeleteKey:
		reason, err := CleanText("reason", c.Reason, MaxReasonLen, false, true)
		if err != nil {
			return nil, "", err
		}
		if revoked {
			return []Event{KeyDeleted{}}, k.ID, nil
		}
		if strings.TrimSpace(reason) == "" {
			reason = "deleted"
		}
		return []Event{KeyRevoked{Reason: reason}, KeyDeleted{}}, k.ID, nil
	}
	return nil, "", Errorf(EINVALID, "unknown_command", "unknown command %T", cmd)
}

func decideCreate(c CreateKey, now time.Time) (Event, error) {
	if _, err := uuid.Parse(c.KeyID); err != nil || len(c.KeyID) != 36 {
		return nil, Errorf(EINVALID, "invalid_key_id", "invalid key id %q", c.KeyID)
	}
	if c.Owner == "" {
		return nil, Errorf(EINVALID, "invalid_owner", "a key needs an owner")
	}
	name, err := CleanName(c.Name)
	if err != nil {
		return nil, err
	}
	comments, err := CleanComments(c.Comments)
	if err != nil {
		return nil, err
	}
	if c.Role != "" && !ValidPermission(c.Role) {
		return nil, Errorf(EINVALID, "invalid_role", "invalid role name %q", c.Role)
	}
	perms, err := NormalizePermissions(c.Permissions)
	if err != nil {
		return nil, err
	}
	days := c.LifetimeDays
	if days == 0 {
		days = DefaultLifetimeDays
	}
	if days < 1 || days > MaxLifetimeDays {
		return nil, Errorf(EINVALID, "lifetime_out_of_range", "lifetime_days must be between 1 and %d", MaxLifetimeDays)
	}
	prefixes, err := ParseAllowedIPs(c.AllowedIPs)
	if err != nil {
		return nil, err
	}
	if err := validMetadata(c.Metadata); err != nil {
		return nil, err
	}
	if !validHash(c.SecretHash) {
		return nil, Errorf(EINVALID, "invalid_secret_hash", "secret hash must be 64 hex characters")
	}
	var allowed []string
	if len(prefixes) > 0 {
		allowed = PrefixStrings(prefixes)
	}
	var md map[string]string
	if len(c.Metadata) > 0 {
		md = maps.Clone(c.Metadata)
	}
	return KeyCreated{
		Owner:        c.Owner,
		Name:         name,
		Comments:     comments,
		Role:         c.Role,
		Permissions:  perms,
		LifetimeDays: days,
		ExpiresAt:    now.UTC().Truncate(time.Millisecond).Add(time.Duration(days) * 24 * time.Hour),
		AllowedIPs:   allowed,
		Metadata:     md,
		SecretHash:   c.SecretHash,
	}, nil
}

// RegeneratedExpiry is when a key regenerated at now expires:
//
//	min(max(now, current expiry) + its lifetime, now + MaxLifetimeDays)
//
// The lifetime is added to the later of now and the current expiry, so
// regenerating early never loses time already granted and regenerating an
// expired key starts a full lifetime from now; but no key is ever valid for
// more than the maximum lifetime from now, however often it is
// regenerated. When that caps it, regenerating sets the expiry to exactly
// now + MaxLifetimeDays (which is earlier than the current expiry only for a
// key regenerated past the cap before this rule).
func RegeneratedExpiry(k Key, now time.Time) time.Time {
	now = now.UTC().Truncate(time.Millisecond)
	base := k.ExpiresAt
	if base.Before(now) {
		base = now
	}
	exp := base.Add(time.Duration(k.LifetimeDays) * 24 * time.Hour)
	if limit := now.Add(MaxLifetimeDays * 24 * time.Hour); exp.After(limit) {
		exp = limit
	}
	return exp
}

func decideRegenerate(k Key, c RegenerateKey, now time.Time) (Event, error) {
	if c.GracePeriod < 0 || c.GracePeriod > MaxGracePeriod {
		return nil, Errorf(EINVALID, "invalid_grace_period", "grace_period must be between 0 and %s", MaxGracePeriod)
	}
	if !c.Rotate && (c.SecretHash != "" || c.GracePeriod != 0) {
		return nil, Errorf(EINVALID, "invalid_regenerate", "a new secret and a grace period need rotate")
	}
	if c.Rotate && !validHash(c.SecretHash) {
		return nil, Errorf(EINVALID, "invalid_secret_hash", "secret hash must be 64 hex characters")
	}
	ev := KeyRegenerated{PreviousExpiresAt: k.ExpiresAt, ExpiresAt: RegeneratedExpiry(k, now)}
	now = now.UTC().Truncate(time.Millisecond)
	if c.Rotate {
		ev.Rotated = true
		ev.SecretHash = c.SecretHash
		ev.PreviousValidUntil = now.Add(c.GracePeriod)
	}
	return ev, nil
}

func decideUpdate(k Key, c UpdateKey) (Event, error) {
	var ev KeyUpdated
	if c.Name != nil {
		name, err := CleanName(*c.Name)
		if err != nil {
			return nil, err
		}
		if name != k.Name {
			ev.Name = &name
		}
	}
	if c.Comments != nil {
		comments, err := CleanComments(*c.Comments)
		if err != nil {
			return nil, err
		}
		if comments != k.Comments {
			ev.Comments = &comments
		}
	}
	if c.Permissions != nil {
		perms, err := NormalizePermissions(*c.Permissions)
		if err != nil {
			return nil, err
		}
		if !slices.Equal(perms, k.Permissions) {
			ev.Permissions = &perms
		}
	}
	if c.AllowedIPs != nil {
		prefixes, err := ParseAllowedIPs(*c.AllowedIPs)
		if err != nil {
			return nil, err
		}
		allowed := []string{}
		if len(prefixes) > 0 {
			allowed = PrefixStrings(prefixes)
		}
		if !slices.Equal(allowed, k.AllowedIPs) {
			ev.AllowedIPs = &allowed
		}
	}
	if c.Metadata != nil {
		if err := validMetadata(*c.Metadata); err != nil {
			return nil, err
		}
		md := maps.Clone(*c.Metadata)
		if md == nil {
			md = map[string]string{}
		}
		if !maps.Equal(md, k.Metadata) {
			ev.Metadata = &md
		}
	}
	if ev.Name == nil && ev.Comments == nil && ev.Permissions == nil && ev.AllowedIPs == nil && ev.Metadata == nil {
		return nil, Errorf(EINVALID, "nothing_to_update", "the update changes nothing")
	}
	return ev, nil
}

func validHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}
