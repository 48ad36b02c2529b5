package domain

import (
	"strings"
	"time"
)

// Event is the payload of an envelope. Event types are past tense.
type Event interface {
	EventType() string
}

// Event type names, as they appear in the envelope's "type" field. The part
// before the dot names the aggregate; the part after it ends the subject.
const (
	TypeKeyCreated     = "key.created"
	TypeKeyRegenerated = "key.regenerated"
	TypeKeyUpdated     = "key.updated"
	TypeKeyDisabled    = "key.disabled"
	TypeKeyEnabled     = "key.enabled"
	TypeKeyRevoked     = "key.revoked"
	TypeKeyDeleted     = "key.deleted"
	TypeKeyUsed        = "key.used"
	TypeKeyDenied      = "key.denied"

	TypePrincipalCreated  = "principal.created"
	TypePrincipalUpdated  = "principal.updated"
	TypePrincipalDisabled = "principal.disabled"
	TypePrincipalEnabled  = "principal.enabled"
	// TypePrincipalKeyIssued is stored with every key a principal is
	// issued, in the same atomic append as the key's creation: it moves the
	// principal's version, so two concurrent creations cannot both pass
	// its plan limit.
	TypePrincipalKeyIssued = "principal.key_issued"

	TypeRoleCreated = "role.created"
	TypeRoleUpdated = "role.updated"
	TypeRoleDeleted = "role.deleted"
)

// Kinds that are not lifecycle aggregates.
const (
	KindUsage = "usage"
	KindAlert = "alerts"
)

// KindOf returns the aggregate kind (the subject token) of an event type.
func KindOf(typ string) string {
	switch typ {
	case TypeKeyUsed, TypeKeyDenied:
		return KindUsage
	}
	head, _, _ := strings.Cut(typ, ".")
	switch head {
	case "key":
		return KindKey
	case "principal":
		return KindPrincipal
	case "role":
		return KindRole
	case "alert":
		return KindAlert
	case "checkpoint":
		return KindCheckpoint
	}
	return head
}

// UsageSuffix returns "used" or "denied" for a usage event type.
func UsageSuffix(typ string) string {
	_, tail, _ := strings.Cut(typ, ".")
	return tail
}

// Action returns the verb of an event type ("created", "revoked", ...).
func Action(typ string) string { return UsageSuffix(typ) }

// KeyCreated records a new key. Only the hash of its secret is ever recorded.
type KeyCreated struct {
	Owner        string            `json:"owner"`
	Name         string            `json:"name"`
	Comments     string            `json:"comments,omitempty"`
	Role         string            `json:"role,omitempty"`
	Permissions  []string          `json:"permissions"`
	LifetimeDays int               `json:"lifetime_days"`
	ExpiresAt    time.Time         `json:"expires_at"`
	AllowedIPs   []string          `json:"allowed_ips,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	SecretHash   string            `json:"secret_hash"`
}

// KeyRegenerated records a lifetime extension and, when Rotated, a new
// secret; the previous secret stays valid until PreviousValidUntil.
type KeyRegenerated struct {
	// PreviousExpiresAt is the expiry before this event; events stored
	// before it was recorded have none.
	PreviousExpiresAt  time.Time `json:"previous_expires_at,omitzero"`
	ExpiresAt          time.Time `json:"expires_at"`
	Rotated            bool      `json:"rotated"`
	SecretHash         string    `json:"secret_hash,omitempty"`
	PreviousValidUntil time.Time `json:"previous_valid_until,omitzero"`
}

// KeyUpdated records changed descriptive fields, permissions, address
// restrictions or metadata; nil fields are unchanged. An empty AllowedIPs
// lifts the restriction; an empty Metadata clears it.
type KeyUpdated struct {
	Name        *string            `json:"name,omitempty"`
	Comments    *string            `json:"comments,omitempty"`
	Permissions *[]string          `json:"permissions,omitempty"`
	AllowedIPs  *[]string          `json:"allowed_ips,omitempty"`
	Metadata    *map[string]string `json:"metadata,omitempty"`
}

// KeyDisabled records a temporary, reversible suspension.
type KeyDisabled struct {
	Reason string `json:"reason,omitempty"`
}

// KeyEnabled records the end of a suspension.
type KeyEnabled struct{}

// KeyRevoked records a permanent revocation.
type KeyRevoked struct {
	Reason string `json:"reason"`
}

// KeyDeleted records a tombstone. A deleted key is always revoked first.
type KeyDeleted struct{}

// KeyUsed records a successful verification.
type KeyUsed struct {
	Code       string `json:"code"`
	Owner      string `json:"owner,omitempty"`
	Permission string `json:"permission,omitempty"`
	Service    string `json:"service,omitempty"`
	// CallerKey and CallerIP name the key a verifying service
	// authenticated with, and where it called from: a verification is one
	// event, which also records its caller's use of its own key.
	CallerKey string `json:"caller_key,omitempty"`
	CallerIP  string `json:"caller_ip,omitempty"`
	ServiceUsage
}

// KeyDenied records a failed verification. TokenHash is a SHA-256 of the
// presented token so repeated attempts with one token can be correlated
// without storing it.
type KeyDenied struct {
	Code       string `json:"code"`
	Owner      string `json:"owner,omitempty"`
	Permission string `json:"permission,omitempty"`
	Service    string `json:"service,omitempty"`
	TokenHash  string `json:"token_hash,omitempty"`
	CallerKey  string `json:"caller_key,omitempty"`
	CallerIP   string `json:"caller_ip,omitempty"`
	// A THROTTLED summary stands for Count failed authentications from
	// its source address since Since, with a bounded sample of the key
	// ids they presented (KeyIDs); other events leave them empty.
	Count  int        `json:"count,omitempty"`
	Since  *time.Time `json:"since,omitempty"`
	KeyIDs []string   `json:"key_ids,omitempty"`
	ServiceUsage
}

// ServiceUsage are the fields a service adds to the usage it publishes
// (POST /v1/usage): what was called, how it ended and what it cost, and
// the service's own id of the record, which makes a retry idempotent.
// Verifications keyledger records itself leave them empty.
type ServiceUsage struct {
	RecordID   string `json:"record_id,omitempty"`
	Endpoint   string `json:"endpoint,omitempty"`
	HTTPStatus int    `json:"http_status,omitempty"`
	Units      int64  `json:"units,omitempty"`
}

// PrincipalCreated records a new principal (a person or a service that owns keys).
type PrincipalCreated struct {
	Name  string   `json:"name"`
	Roles []string `json:"roles"`
	// Email is optional; the console shows it as a key's owner.
	Email string `json:"email,omitempty"`
	// MaxKeys caps the principal's active keys; 0 means the server's default.
	MaxKeys int `json:"max_keys,omitempty"`
}

// PrincipalUpdated records changed roles or limits; nil fields are unchanged.
type PrincipalUpdated struct {
	Name    *string   `json:"name,omitempty"`
	Email   *string   `json:"email,omitempty"`
	Roles   *[]string `json:"roles,omitempty"`
	MaxKeys *int      `json:"max_keys,omitempty"`
}

// PrincipalDisabled records that a principal may no longer act.
type PrincipalDisabled struct {
	Reason string `json:"reason,omitempty"`
}

// PrincipalEnabled records that a principal may act again.
type PrincipalEnabled struct{}

// PrincipalKeyIssued records that a key was issued to the principal.
// ActiveKeys counts the principal's keys that are neither revoked nor
// deleted, this one included; Limit is the plan limit it was checked
// against.
type PrincipalKeyIssued struct {
	KeyID      string `json:"key_id"`
	ActiveKeys int    `json:"active_keys"`
	Limit      int    `json:"limit"`
	// Credential is set when an administrator issued the key to the
	// principal as a credential (the event's actor), rather than the
	// principal creating it.
	Credential bool `json:"credential,omitempty"`
}

// RoleCreated records a custom role: a named set of permission strings.
type RoleCreated struct {
	Permissions []string `json:"permissions"`
	Description string   `json:"description,omitempty"`
}

// RoleUpdated records a role's new permission set.
type RoleUpdated struct {
	Permissions []string `json:"permissions"`
	Description *string  `json:"description,omitempty"`
}

// RoleDeleted records that a custom role no longer exists.
type RoleDeleted struct{}

func (KeyCreated) EventType() string         { return TypeKeyCreated }
func (KeyRegenerated) EventType() string     { return TypeKeyRegenerated }
func (KeyUpdated) EventType() string         { return TypeKeyUpdated }
func (KeyDisabled) EventType() string        { return TypeKeyDisabled }
func (KeyEnabled) EventType() string         { return TypeKeyEnabled }
func (KeyRevoked) EventType() string         { return TypeKeyRevoked }
func (KeyDeleted) EventType() string         { return TypeKeyDeleted }
func (KeyUsed) EventType() string            { return TypeKeyUsed }
func (KeyDenied) EventType() string          { return TypeKeyDenied }
func (PrincipalCreated) EventType() string   { return TypePrincipalCreated }
func (PrincipalUpdated) EventType() string   { return TypePrincipalUpdated }
func (PrincipalDisabled) EventType() string  { return TypePrincipalDisabled }
func (PrincipalEnabled) EventType() string   { return TypePrincipalEnabled }
func (PrincipalKeyIssued) EventType() string { return TypePrincipalKeyIssued }
func (RoleCreated) EventType() string        { return TypeRoleCreated }
func (RoleUpdated) EventType() string        { return TypeRoleUpdated }
func (RoleDeleted) EventType() string        { return TypeRoleDeleted }

var eventFactories = map[string]func() any{
	TypeKeyCreated:         func() any { return new(KeyCreated) },
	TypeKeyRegenerated:     func() any { return new(KeyRegenerated) },
	TypeKeyUpdated:         func() any { return new(KeyUpdated) },
	TypeKeyDisabled:        func() any { return new(KeyDisabled) },
	TypeKeyEnabled:         func() any { return new(KeyEnabled) },
	TypeKeyRevoked:         func() any { return new(KeyRevoked) },
	TypeKeyDeleted:         func() any { return new(KeyDeleted) },
	TypeKeyUsed:            func() any { return new(KeyUsed) },
	TypeKeyDenied:          func() any { return new(KeyDenied) },
	TypePrincipalCreated:   func() any { return new(PrincipalCreated) },
	TypePrincipalUpdated:   func() any { return new(PrincipalUpdated) },
	TypePrincipalDisabled:  func() any { return new(PrincipalDisabled) },
	TypePrincipalEnabled:   func() any { return new(PrincipalEnabled) },
	TypePrincipalKeyIssued: func() any { return new(PrincipalKeyIssued) },
	TypeRoleCreated:        func() any { return new(RoleCreated) },
	TypeRoleUpdated:        func() any { return new(RoleUpdated) },
	TypeRoleDeleted:        func() any { return new(RoleDeleted) },
}

// KnownEventType reports whether typ is an event type this code can decode.
func KnownEventType(typ string) bool {
	_, ok := eventFactories[typ]
	return ok
}

func derefEvent(v any) Event {
	switch e := v.(type) {
	case *KeyCreated:
		return *e
	case *KeyRegenerated:
		return *e
	case *KeyUpdated:
		return *e
	case *KeyDisabled:
		return *e
	case *KeyEnabled:
		return *e
	case *KeyRevoked:
		return *e
	case *KeyDeleted:
		return *e
	case *KeyUsed:
		return *e
	case *KeyDenied:
		return *e
	case *PrincipalCreated:
		return *e
	case *PrincipalUpdated:
		return *e
	case *PrincipalDisabled:
		return *e
	case *PrincipalEnabled:
		return *e
	case *PrincipalKeyIssued:
		return *e
	case *RoleCreated:
		return *e
	case *RoleUpdated:
		return *e
	case *RoleDeleted:
		return *e
	case *AlertRaised:
		return *e
	case *CheckpointPublished:
		return *e
	case *WriterTrusted:
		return *e
	case *WriterRetired:
		return *e
	}
	return nil
}
