package domain

import (
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Management permissions. A permission ending in ".any" reaches every
// principal's keys; without it a permission reaches only the caller's own.
const (
	PermKeyCreate        = "api.key.create"
	PermKeyRegenerate    = "api.key.regenerate"
	PermKeyUpdate        = "api.key.update"
	PermKeyDisable       = "api.key.disable"
	PermKeyEnable        = "api.key.enable"
	PermKeyRevoke        = "api.key.revoke"
	PermKeyDelete        = "api.key.delete"
	PermKeyView          = "api.key.view"
	PermKeyViewAny       = "api.key.view.any"
	PermKeyRevokeAny     = "api.key.revoke.any"
	PermKeyDeleteAny     = "api.key.delete.any"
	PermPrincipalManage  = "api.principal.manage"
	PermRoleManage       = "api.role.manage"
	PermLogView          = "api.log.view"
	PermLogViewAny       = "api.log.view.any"
	PermAlertView        = "api.alert.view"
	PermAuditView        = "api.audit.view"
	PermVerify           = "api.verify"
	PermUsagePublish     = "api.usage.publish"
	RoleSuperadmin       = "superadmin"
	RoleKeyAdmin         = "key-admin"
	RoleAuditor          = "auditor"
	RoleVerifier         = "verifier"
	DefaultMaxActiveKeys = 100
	MaxRoles             = 32
)

// BuiltinRoles are the roles every keyledger has. The super administrator
// sees and may revoke or delete every key but may not create or regenerate
// keys, as the panels keyledger grows from rule.
var BuiltinRoles = map[string][]string{
	RoleSuperadmin: {PermKeyView, PermKeyViewAny, PermKeyRevoke, PermKeyRevokeAny, PermKeyDelete, PermKeyDeleteAny,
		PermPrincipalManage, PermRoleManage, PermLogView, PermLogViewAny, PermAlertView, PermAuditView},
	RoleKeyAdmin: {PermKeyCreate, PermKeyRegenerate, PermKeyUpdate, PermKeyDisable, PermKeyEnable, PermKeyRevoke,
		PermKeyDelete, PermKeyView, PermLogView},
	RoleAuditor:  {PermKeyView, PermKeyViewAny, PermLogView, PermLogViewAny, PermAlertView, PermAuditView},
	RoleVerifier: {PermVerify, PermUsagePublish},
}

// Principal is a person or service that owns keys.
type Principal struct {
	ID        string
	Name      string
	Email     string
	Roles     []string
	MaxKeys   int
	Disabled  bool
	CreatedAt time.Time
	CreatedBy string
	UpdatedAt time.Time
	Version   uint64
	LastHash  string
	Events    int
}

// Exists reports whether the principal has been created.
func (p Principal) Exists() bool { return p.Events > 0 }

// Role is a named set of permissions. Built-in roles are not event-sourced.
type Role struct {
	Name        string
	Permissions []string
	Description string
	BuiltIn     bool
	Deleted     bool
	Version     uint64
	LastHash    string
	Events      int
}

// CreatePrincipal creates a principal with roles.
type CreatePrincipal struct {
	Meta
	PrincipalID string
	Name        string
	// Email is optional.
	Email   string
	Roles   []string
	MaxKeys int
}

// UpdatePrincipal changes a principal's name, roles or key limit.
type UpdatePrincipal struct {
	Meta
	Name    *string
	Email   *string
	Roles   *[]string
	MaxKeys *int
}

// DisablePrincipal stops a principal from acting; its keys stop verifying
// for management calls.
type DisablePrincipal struct {
	Meta
	Reason string
}

// EnablePrincipal lets a disabled principal act again.
type EnablePrincipal struct{ Meta }

// IssueKey records a new key of the principal against its plan limit.
// ActiveKeys is how many of its keys are neither revoked nor deleted now;
// Limit is the principal's own limit, or the server's default when the
// principal has none.
type IssueKey struct {
	Meta
	KeyID      string
	ActiveKeys int
	Limit      int
	// Credential marks a key an administrator issued to the principal.
	Credential bool
}

// KeyLimit returns the plan limit that applies to p: its own, or def.
func (p Principal) KeyLimit(def int) int {
	if p.MaxKeys > 0 {
		return p.MaxKeys
	}
	return def
}

// CreateRole defines a custom role.
type CreateRole struct {
	Meta
	Name        string
	Permissions []string
	Description string
}

// UpdateRole replaces a custom role's permissions.
type UpdateRole struct {
	Meta
	Permissions []string
	Description *string
}

// DeleteRole removes a custom role.
type DeleteRole struct{ Meta }

// DecidePrincipal is Decide for principals. knownRole reports whether a role
// name exists. Errors: EINVALID, ENOTFOUND (principal_not_found), ECONFLICT
// (principal_exists, principal_already_disabled, principal_not_disabled),
// ELIMIT (plan_limit_reached).
func DecidePrincipal(p Principal, cmd Command, knownRole func(string) bool, now time.Time, newID func() uuid.UUID) ([]Envelope, error) {
	m := cmd.meta()
	if m.Actor == "" {
		return nil, Errorf(EINVALID, "missing_actor", "a command needs an actor")
	}
	checkRoles := func(roles []string) ([]string, error) {
		if len(roles) == 0 || len(roles) > MaxRoles {
			return nil, Errorf(EINVALID, "invalid_roles", "a principal needs between 1 and %d roles", MaxRoles)
		}
		out := slices.Clone(roles)
		slices.Sort(out)
		out = slices.Compact(out)
		for _, r := range out {
			if !knownRole(r) {
				return nil, Errorf(EINVALID, "unknown_role", "unknown role %q", r)
			}
		}
		return out, nil
	}
	var ev Event
	id := p.ID
	switch c := cmd.(type) {
	case CreatePrincipal:
		if p.Exists() {
			return nil, Errorf(ECONFLICT, "principal_exists", "principal %s already exists", c.PrincipalID)
		}
		if _, err := uuid.Parse(c.PrincipalID); err != nil {
			return nil, Errorf(EINVALID, "invalid_principal_id", "invalid principal id %q", c.PrincipalID)
		}
		name, err := CleanName(c.Name)
		if err != nil {
			return nil, err
		}
		roles, err := checkRoles(c.Roles)
		if err != nil {
			return nil, err
		}
		if c.MaxKeys < 0 {
			return nil, Errorf(EINVALID, "invalid_max_keys", "max_keys must not be negative")
		}
		if err := validEmail(c.Email); err != nil {
			return nil, err
		}
		ev, id = PrincipalCreated{Name: name, Email: c.Email, Roles: roles, MaxKeys: c.MaxKeys}, c.PrincipalID
	default:
		if !p.Exists() {
			return nil, Errorf(ENOTFOUND, "principal_not_found", "principal not found")
		}
		switch c := cmd.(type) {
		case UpdatePrincipal:
			var u PrincipalUpdated
			if c.Name != nil {
				name, err := CleanName(*c.Name)
				if err != nil {
					return nil, err
				}
				if name != p.Name {
					u.Name = &name
				}
			}
			if c.Email != nil && *c.Email != p.Email {
				if err := validEmail(*c.Email); err != nil {
					return nil, err
				}
				u.Email = c.Email
			}
			if c.Roles != nil {
				roles, err := checkRoles(*c.Roles)
				if err != nil {
					return nil, err
				}
				if !slices.Equal(roles, p.Roles) {
					u.Roles = &roles
				}
			}
			if c.MaxKeys != nil && *c.MaxKeys != p.MaxKeys {
				if *c.MaxKeys < 0 {
					return nil, Errorf(EINVALID, "invalid_max_keys", "max_keys must not be negative")
				}
				u.MaxKeys = c.MaxKeys
			}
			if u.Name == nil && u.Email == nil && u.Roles == nil && u.MaxKeys == nil {
				return nil, Errorf(EINVALID, "nothing_to_update", "the update changes nothing")
			}
			ev = u
		case DisablePrincipal:
			if p.Disabled {
				return nil, Errorf(ECONFLICT, "principal_already_disabled", "principal is already disabled")
			}
			ev = PrincipalDisabled{Reason: c.Reason}
		case EnablePrincipal:
			if !p.Disabled {
				return nil, Errorf(ECONFLICT, "principal_not_disabled", "principal is not disabled")
			}
			ev = PrincipalEnabled{}
		case IssueKey:
			if c.ActiveKeys >= c.Limit {
				return nil, Errorf(ELIMIT, "plan_limit_reached", "principal has %d active keys, the limit is %d", c.ActiveKeys, c.Limit)
			}
			ev = PrincipalKeyIssued{KeyID: c.KeyID, ActiveKeys: c.ActiveKeys + 1, Limit: c.Limit, Credential: c.Credential}
		default:
			return nil, Errorf(EINVALID, "unknown_command", "unknown command %T", cmd)
		}
	}
	return seal(id, p.LastHash, []Event{ev}, m, now, newID)
}

// DecideRole is Decide for custom roles. Errors: EINVALID (among them
// cross_owner_permission for a role that would reach another principal's
// keys beyond viewing, revoking and deleting them), ENOTFOUND
// (role_not_found), ECONFLICT (role_exists, role_builtin).
func DecideRole(r Role, name string, cmd Command, now time.Time, newID func() uuid.UUID) ([]Envelope, error) {
	m := cmd.meta()
	if m.Actor == "" {
		return nil, Errorf(EINVALID, "missing_actor", "a command needs an actor")
	}
	if _, ok := BuiltinRoles[name]; ok {
		return nil, Errorf(ECONFLICT, "role_builtin", "role %q is built in", name)
	}
	if !validRoleName(name) {
		return nil, Errorf(EINVALID, "invalid_role", "invalid role name %q: use 1 to 64 lowercase letters, digits, '_', '-' or ':'", name)
	}
	exists := r.Events > 0 && !r.Deleted
	var ev Event
	switch c := cmd.(type) {
	case CreateRole:
		if exists {
			return nil, Errorf(ECONFLICT, "role_exists", "role %q already exists", name)
		}
		perms, err := NormalizeRolePermissions(c.Permissions)
		if err != nil {
			return nil, err
		}
		desc, err := CleanText("description", c.Description, MaxCommentsLen, false, true)
		if err != nil {
			return nil, err
		}
		ev = RoleCreated{Permissions: perms, Description: desc}
	case UpdateRole:
		if !exists {
			return nil, Errorf(ENOTFOUND, "role_not_found", "role %q not found", name)
		}
		if c.Description != nil {
			desc, err := CleanText("description", *c.Description, MaxCommentsLen, false, true)
			if err != nil {
				return nil, err
			}
			c.Description = &desc
		}
		perms, err := NormalizeRolePermissions(c.Permissions)
		if err != nil {
			return nil, err
		}
		ev = RoleUpdated{Permissions: perms, Description: c.Description}
	case DeleteRole:
		if !exists {
			return nil, Errorf(ENOTFOUND, "role_not_found", "role %q not found", name)
		}
		ev = RoleDeleted{}
	default:
		return nil, Errorf(EINVALID, "unknown_command", "unknown command %T", cmd)
	}
	return seal(name, r.LastHash, []Event{ev}, m, now, newID)
}

func seal(id, prev string, events []Event, m Meta, now time.Time, newID func() uuid.UUID) ([]Envelope, error) {
	out := make([]Envelope, 0, len(events))
	for _, ev := range events {
		env, err := NewEnvelope(newID(), id, ev, now, m.Actor, m.Context)
		if err != nil {
			return nil, err
		}
		env.Seal(prev)
		prev = env.Hash
		out = append(out, env)
	}
	return out, nil
}

// EvolvePrincipal folds one event into a principal's state.
func EvolvePrincipal(p Principal, env Envelope) Principal {
	ev, err := env.Decode()
	if err != nil {
		return p
	}
	switch e := ev.(type) {
	case PrincipalCreated:
		p = Principal{ID: env.KeyID, Name: e.Name, Email: e.Email, Roles: slices.Clone(e.Roles), MaxKeys: e.MaxKeys, CreatedAt: env.Time, CreatedBy: env.Actor}
	case PrincipalUpdated:
		if e.Name != nil {
			p.Name = *e.Name
		}
		if e.Email != nil {
			p.Email = *e.Email
		}
		if e.Roles != nil {
			p.Roles = slices.Clone(*e.Roles)
		}
		if e.MaxKeys != nil {
			p.MaxKeys = *e.MaxKeys
		}
	case PrincipalDisabled:
		p.Disabled = true
	case PrincipalEnabled:
		p.Disabled = false
	case PrincipalKeyIssued:
		// The key itself is folded from its own events; this one only
		// moves the principal's version and chain.
	default:
		return p
	}
	if env.Type != TypePrincipalKeyIssued {
		p.UpdatedAt = env.Time
	}
	p.LastHash = env.Hash
	if env.Seq != 0 {
		p.Version = env.Seq
	}
	p.Events++
	return p
}

// EvolveRole folds one event into a custom role's state.
func EvolveRole(r Role, env Envelope) Role {
	ev, err := env.Decode()
	if err != nil {
		return r
	}
	switch e := ev.(type) {
	case RoleCreated:
		r = Role{Name: env.KeyID, Permissions: slices.Clone(e.Permissions), Description: e.Description, Events: r.Events}
	case RoleUpdated:
		r.Permissions = slices.Clone(e.Permissions)
		if e.Description != nil {
			r.Description = *e.Description
		}
	case RoleDeleted:
		r.Deleted = true
	default:
		return r
	}
	r.LastHash = env.Hash
	if env.Seq != 0 {
		r.Version = env.Seq
	}
	r.Events++
	return r
}

// validRoleName reports whether name can name a role: it is also a subject
// token of the role's events, so it has no dots or wildcards.
func validRoleName(name string) bool {
	if len(name) == 0 || len(name) > 64 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == ':') {
			return false
		}
	}
	return true
}

// MaxEmailLen bounds a principal's e-mail address (RFC 5321's path limit).
const MaxEmailLen = 254

// validEmail accepts an empty address (none) or one that looks like
// local@domain: it is shown, never sent to, so the check stays loose.
func validEmail(s string) error {
	if s == "" {
		return nil
	}
	local, host, ok := strings.Cut(s, "@")
	if !ok || local == "" || host == "" || strings.Contains(host, "@") || len(s) > MaxEmailLen ||
		strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '<' || r == '>' }) {
		return Errorf(EINVALID, "invalid_email", "email %q is not an address like name@example.com", s)
	}
	return nil
}
