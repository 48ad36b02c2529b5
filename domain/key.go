package domain

import (
	"maps"
	"net/netip"
	"slices"
	"time"
)

// Status is derived from a key's events and the current time; it is never stored.
type Status string

const (
	StatusActive   Status = "active"
	StatusDisabled Status = "disabled"
	StatusExpired  Status = "expired"
	StatusRevoked  Status = "revoked"
	StatusDeleted  Status = "deleted"
)

// ParseStatus accepts a status name; "all" is accepted by list filters, not here.
func ParseStatus(s string) (Status, bool) {
	switch st := Status(s); st {
	case StatusActive, StatusDisabled, StatusExpired, StatusRevoked, StatusDeleted:
		return st, true
	}
	return "", false
}

// Key is the state of one key, folded from its events by Evolve.
type Key struct {
	ID           string
	Owner        string
	Name         string
	Comments     string
	Role         string
	Permissions  []string
	LifetimeDays int
	AllowedIPs   []string
	// AllowedPrefixes is AllowedIPs parsed once, for the verification path.
	AllowedPrefixes []netip.Prefix
	Metadata        map[string]string
	CreatedAt       time.Time
	CreatedBy       string
	ExpiresAt       time.Time
	UpdatedAt       time.Time

	SecretHash string
	// SecretSetAt is when the current secret was issued (creation or the
	// last rotation): the age rotation reminders measure.
	SecretSetAt time.Time
	// PrevSecretHash stays valid until PrevValidUntil after a rotation.
	PrevSecretHash string
	PrevValidUntil time.Time

	Disabled     bool
	RevokedAt    time.Time
	RevokeReason string
	DeletedAt    time.Time

	// Version is the stream sequence of the key's last event (0: no events);
	// LastHash is that event's hash, the next event's prev_hash.
	Version  uint64
	LastHash string
	// Events counts the key's events.
	Events int
}

// Exists reports whether the key has been created.
func (k Key) Exists() bool { return k.Events > 0 && !k.CreatedAt.IsZero() }

// Status derives the key's status at now. Precedence: deleted, revoked,
// disabled, expired, active.
func (k Key) Status(now time.Time) Status {
	switch {
	case !k.DeletedAt.IsZero():
		return StatusDeleted
	case !k.RevokedAt.IsZero():
		return StatusRevoked
	case k.Disabled:
		return StatusDisabled
	case !now.Before(k.ExpiresAt):
		return StatusExpired
	}
	return StatusActive
}

// Remaining returns the lifetime left at now, zero once expired.
func (k Key) Remaining(now time.Time) time.Duration {
	if d := k.ExpiresAt.Sub(now); d > 0 {
		return d
	}
	return 0
}

// Evolve folds one event into a key's state. Events that do not concern
// keys leave the state unchanged apart from its version. Evolve never fails:
// an event was valid when it was decided, and history is never rejected.
func Evolve(k Key, env Envelope) Key {
	ev, err := env.Decode()
	if err != nil {
		return k
	}
	switch e := ev.(type) {
	case KeyCreated:
		k = Key{
			ID:           env.KeyID,
			Owner:        e.Owner,
			Name:         e.Name,
			Comments:     e.Comments,
			Role:         e.Role,
			Permissions:  slices.Clone(e.Permissions),
			LifetimeDays: e.LifetimeDays,
			AllowedIPs:   slices.Clone(e.AllowedIPs),
			Metadata:     e.Metadata,
			CreatedAt:    env.Time,
			CreatedBy:    env.Actor,
			ExpiresAt:    e.ExpiresAt,
			SecretHash:   e.SecretHash,
			SecretSetAt:  env.Time,
		}
		// Stored prefixes were validated when decided; one that no longer
		// parses is dropped rather than widening access, so the key then
		// admits no address at all.
		k.AllowedPrefixes, _ = ParseAllowedIPs(e.AllowedIPs)
		if len(e.AllowedIPs) > 0 && len(k.AllowedPrefixes) == 0 {
			k.AllowedPrefixes = []netip.Prefix{netip.PrefixFrom(netip.IPv6Unspecified(), 128)}
		}
	case KeyRegenerated:
		k.ExpiresAt = e.ExpiresAt
		if e.Rotated {
			k.PrevSecretHash = k.SecretHash
			k.PrevValidUntil = e.PreviousValidUntil
			k.SecretHash = e.SecretHash
			k.SecretSetAt = env.Time
		}
	case KeyUpdated:
		if e.Name != nil {
			k.Name = *e.Name
		}
		if e.Comments != nil {
			k.Comments = *e.Comments
		}
		if e.Permissions != nil {
			k.Permissions = slices.Clone(*e.Permissions)
		}
		if e.AllowedIPs != nil {
			k.AllowedIPs, k.AllowedPrefixes = nil, nil
			if len(*e.AllowedIPs) > 0 {
				k.AllowedIPs = slices.Clone(*e.AllowedIPs)
				k.AllowedPrefixes, _ = ParseAllowedIPs(k.AllowedIPs)
				// As at creation: a stored list that no longer parses
				// admits no address rather than every address.
				if len(k.AllowedPrefixes) == 0 {
					k.AllowedPrefixes = []netip.Prefix{netip.PrefixFrom(netip.IPv6Unspecified(), 128)}
				}
			}
		}
		if e.Metadata != nil {
			k.Metadata = nil
			if len(*e.Metadata) > 0 {
				k.Metadata = maps.Clone(*e.Metadata)
			}
		}
	case KeyDisabled:
		k.Disabled = true
	case KeyEnabled:
		k.Disabled = false
	case KeyRevoked:
		k.RevokedAt = env.Time
		k.RevokeReason = e.Reason
	case KeyDeleted:
		k.DeletedAt = env.Time
	default:
		return k
	}
	k.UpdatedAt = env.Time
	k.LastHash = env.Hash
	if env.Seq != 0 {
		k.Version = env.Seq
	}
	k.Events++
	return k
}

// Fold evolves a fresh key through its events.
func Fold(envs []Envelope) Key {
	var k Key
	for _, e := range envs {
		k = Evolve(k, e)
	}
	return k
}
