package domain

import (
	"strings"
	"time"
)

// IsCredential reports whether k is, at now, a credential: a key that can
// authenticate its owner to keyledger's own API, that is an active key
// carrying an "api." permission (or "*"). A key that only services verify,
// such as one carrying orders.write, is not one.
func IsCredential(k Key, now time.Time) bool {
	if k.Status(now) != StatusActive {
		return false
	}
	for _, p := range k.Permissions {
		if p == "*" || strings.HasPrefix(p, "api.") {
			return true
		}
	}
	return false
}

// GuardLastCredential refuses a command by which a principal would lock
// itself out: revoking, disabling or deleting its own last credential.
// otherCredentials counts the owner's credentials other than k at now.
// Another principal's key (which only the super administrator, or a role
// with revoke.any or delete.any, reaches) is not guarded: the super
// administrator can issue that principal a new credential.
//
// Errors: ECONFLICT (last_credential).
func GuardLastCredential(a Actor, k Key, cmd Command, otherCredentials int, now time.Time) error {
	switch cmd.(type) {
	case RevokeKey, DisableKey, DeleteKey:
	default:
		return nil
	}
	if k.Owner != a.Principal.ID || !IsCredential(k, now) || otherCredentials > 0 {
		return nil
	}
	return Errorf(ECONFLICT, "last_credential",
		"key %s is your last active credential: revoking, disabling or deleting it would lock you out; create another first, or ask the super administrator", k.ID)
}

// SameName reports whether two principal names are the same name:
// principal names are unique regardless of case, after CleanName.
func SameName(a, b string) bool {
	ca, err := CleanName(a)
	if err != nil {
		ca = a
	}
	cb, err := CleanName(b)
	if err != nil {
		cb = b
	}
	return strings.EqualFold(ca, cb)
}

// ErrPrincipalNameTaken is what creating or renaming a principal to
// another's name answers.
func ErrPrincipalNameTaken(name string) error {
	return Errorf(ECONFLICT, "principal_name_taken", "a principal named %q already exists (names are compared regardless of case)", name)
}
