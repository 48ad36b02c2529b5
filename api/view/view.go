// Package view holds the JSON shapes of keyledger's API that more than one
// package reads: the server writes them, the web console and the services'
// client decode them. It depends only on the domain, so any of them can
// import it.
package view

import (
	"time"

	"github.com/keyledger/keyledger/domain"
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

// CreatedKey is the response to a key creation or rotation: the only time
// the token is shown.
type CreatedKey struct {
	KeyView
	Token string `json:"token"`
}

// PrincipalView is a principal as the API shows it.
type PrincipalView struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Email       string    `json:"email,omitempty"`
	Roles       []string  `json:"roles"`
	Permissions []string  `json:"permissions"`
	MaxKeys     int       `json:"max_keys"`
	ActiveKeys  int       `json:"active_keys"`
	Disabled    bool      `json:"disabled"`
	CreatedAt   time.Time `json:"created_at"`
	CreatedBy   string    `json:"created_by"`
	Version     uint64    `json:"version"`
}
