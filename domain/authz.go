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

// Authorize decides whether the actor may apply perm to key k, the one rule
// of who may touch which key:
//   - its own keys, with perm;
//   - another principal's key is invisible (ENOTFOUND key_not_found)
//     without api.key.view.any, may be viewed with it, and changed only
//     with perm's ".any" form (the super administrator holds it for revoke
//     and delete only, so it never creates or regenerates a key);
//   - a deleted key can still be viewed (its history is part of the
//     audit trail) but no longer changed (ECONFLICT key_deleted).
//
// Errors: ENOTFOUND (key_not_found), EFORBIDDEN (insufficient_permissions),
// ECONFLICT (key_deleted).
func (a Actor) Authorize(k Key, perm string) error {
	if !k.Exists() {
		return ErrKeyNotFound
	}
	if k.Owner == a.Principal.ID {
		if !a.Can(perm) {
			return Errorf(EFORBIDDEN, "insufficient_permissions", "this call needs %s", perm)
		}
	} else {
		if !a.Can(PermKeyViewAny) {
			return ErrKeyNotFound
		}
		if perm != PermKeyView && !a.Can(perm+".any") {
			return Errorf(EFORBIDDEN, "insufficient_permissions", "this call needs %s.any on another principal's key", perm)
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
