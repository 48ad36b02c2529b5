package domain

import "slices"

// Actor is an authenticated principal acting through one of its keys.
type Actor struct {
	Principal Principal
	Key       Key
	// Permissions are the principal's current permissions. A call needs a
	// permission on both the key and the principal, so removing a role
	// from a principal takes effect on its existing keys at once.
	Permissions []string
}

// ID is who the actor is, as events record it.
func (a Actor) ID() string { return a.Principal.ID }

// Can reports whether the actor holds perm through its key and its
// principal.
func (a Actor) Can(perm string) bool {
	return Covers(a.Key.Permissions, perm) && Covers(a.Permissions, perm)
}

// CrossOwnerPermissions are the only powers over another principal's keys
// any role can grant: view, revoke, delete, and view their logs. No role,
// built in or custom, can grant creating, regenerating, rotating, updating,
// disabling or enabling another principal's key: those are its owner's.
var CrossOwnerPermissions = []string{PermKeyViewAny, PermKeyRevokeAny, PermKeyDeleteAny, PermLogViewAny}

// CrossOwner reports whether p names a cross-owner management power (an
// "api." permission ending in ".any"), and whether a role may grant it.
func CrossOwner(p string) (crossOwner, grantable bool) {
	if len(p) < 8 || p[:4] != "api." || p[len(p)-4:] != ".any" {
		return false, false
	}
	return true, slices.Contains(CrossOwnerPermissions, p)
}

// HoldsSuperadmin reports whether the actor's principal holds the super
// administrator's role.
func (a Actor) HoldsSuperadmin() bool { return slices.Contains(a.Principal.Roles, RoleSuperadmin) }

// AuthorizeCreate decides whether the actor may create a key of its own.
// A principal that holds superadmin never creates a key, whatever other
// roles it holds: the super administrator's powers over keys are to view,
// revoke and delete them.
//
// Errors: EFORBIDDEN (insufficient_permissions, superadmin_cannot_issue_keys).
func (a Actor) AuthorizeCreate() error {
	if a.HoldsSuperadmin() {
		return errSuperadminIssues
	}
	if !a.Can(PermKeyCreate) {
		return Errorf(EFORBIDDEN, "insufficient_permissions", "this call needs %s", PermKeyCreate)
	}
	return nil
}

var errSuperadminIssues = Errorf(EFORBIDDEN, "superadmin_cannot_issue_keys",
	"a principal holding superadmin never creates or regenerates a key; it may issue a credential to another principal")

// Authorize decides whether the actor may apply perm to key k, the one rule
// of who may touch which key:
//   - its own keys, with perm; a principal holding superadmin never
//     regenerates (or rotates) one (EFORBIDDEN superadmin_cannot_issue_keys);
//   - another principal's key is invisible (ENOTFOUND key_not_found)
//     without api.key.view.any, may be viewed with it, revoked or deleted
//     with api.key.revoke.any or api.key.delete.any, and never changed in
//     any other way (EFORBIDDEN cross_owner_forbidden), whatever roles the
//     actor holds;
//   - a deleted key can still be viewed (its history is part of the
//     audit trail) but no longer changed (ECONFLICT key_deleted).
//
// Errors: ENOTFOUND (key_not_found), EFORBIDDEN (insufficient_permissions,
// cross_owner_forbidden, superadmin_cannot_issue_keys), ECONFLICT
// (key_deleted).
func (a Actor) Authorize(k Key, perm string) error {
	if !k.Exists() {
		return ErrKeyNotFound
	}
	if k.Owner == a.Principal.ID {
		if (perm == PermKeyCreate || perm == PermKeyRegenerate) && a.HoldsSuperadmin() {
			return errSuperadminIssues
		}
		if !a.Can(perm) {
			return Errorf(EFORBIDDEN, "insufficient_permissions", "this call needs %s", perm)
		}
	} else {
		if !a.Can(PermKeyViewAny) {
			return ErrKeyNotFound
		}
		switch perm {
		case PermKeyView:
		case PermKeyRevoke, PermKeyDelete:
			if !a.Can(perm + ".any") {
				return Errorf(EFORBIDDEN, "insufficient_permissions", "this call needs %s.any on another principal's key", perm)
			}
		default:
			return Errorf(EFORBIDDEN, "cross_owner_forbidden",
				"%s reaches only the caller's own keys: another principal's key may only be viewed, revoked or deleted", perm)
		}
	}
	if !k.DeletedAt.IsZero() && perm != PermKeyView {
		return Errorf(ECONFLICT, "key_deleted", "key %s is deleted", k.ID)
	}
	return nil
}

// SeesAllKeys reports whether the actor's key lists and searches span every
// principal's keys, not only its own.
func (a Actor) SeesAllKeys() bool { return a.Can(PermKeyViewAny) }

// ErrKeyNotFound is what a caller learns of a key it may not see: the same
// as of a key that does not exist.
var ErrKeyNotFound = Errorf(ENOTFOUND, "key_not_found", "key not found")

// KeyPermissions resolves what a new or updated key may do: the requested
// permissions, a role's (rolePerms, with role its name; found false for an
// unknown or deleted role), or by default all of the owner's. The result is
// always a subset of the owner's permissions.
//
// Errors: EINVALID (invalid_permissions, unknown_role, invalid_permission,
// too_many_permissions), EFORBIDDEN (permission_not_held).
func KeyPermissions(owner []string, role string, rolePerms []string, roleFound bool, requested []string) ([]string, error) {
	var perms []string
	switch {
	case role != "" && requested != nil:
		return nil, Errorf(EINVALID, "invalid_permissions", "give permissions or role, not both")
	case role != "":
		if !roleFound {
			return nil, Errorf(EINVALID, "unknown_role", "unknown role %q", role)
		}
		perms = rolePerms
	case requested != nil:
		perms = requested
	default:
		perms = owner
	}
	norm, err := NormalizePermissions(perms)
	if err != nil {
		return nil, err
	}
	for _, p := range norm {
		if !Covers(owner, p) {
			return nil, Errorf(EFORBIDDEN, "permission_not_held", "a key cannot carry %q: its owner does not hold it", p)
		}
	}
	return slices.Clip(norm), nil
}

// PermissionFor returns the management permission a key command needs on
// its key; "" for a command that is not a key command.
func PermissionFor(cmd Command) string {
	switch cmd.(type) {
	case CreateKey:
		return PermKeyCreate
	case RegenerateKey:
		return PermKeyRegenerate
	case UpdateKey:
		return PermKeyUpdate
	case DisableKey:
		return PermKeyDisable
	case EnableKey:
		return PermKeyEnable
	case RevokeKey:
		return PermKeyRevoke
	case DeleteKey:
		return PermKeyDelete
	}
	return ""
}
