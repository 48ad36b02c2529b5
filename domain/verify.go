package domain

import (
	"net/netip"
	"slices"
	"time"
)

// Verification outcome codes.
const (
	OutcomeValid                   = "VALID"
	OutcomeMalformed               = "MALFORMED"
	OutcomeNotFound                = "NOT_FOUND"
	OutcomeInvalidSecret           = "INVALID_SECRET"
	OutcomeRevoked                 = "REVOKED"
	OutcomeDisabled                = "DISABLED"
	OutcomeExpired                 = "EXPIRED"
	OutcomeIPNotAllowed            = "IP_NOT_ALLOWED"
	OutcomeInsufficientPermissions = "INSUFFICIENT_PERMISSIONS"
	// OutcomeThrottled is no verification's outcome but the code of a
	// summary: the failed authentications one address made past its
	// budget in one window, counted in one key.denied event instead of
	// one event each. It is not in Outcomes.
	OutcomeThrottled = "THROTTLED"
)

// Outcomes lists every outcome code.
var Outcomes = []string{
	OutcomeValid, OutcomeMalformed, OutcomeNotFound, OutcomeInvalidSecret, OutcomeRevoked,
	OutcomeDisabled, OutcomeExpired, OutcomeIPNotAllowed, OutcomeInsufficientPermissions,
}

// Check decides a verification for a key that was found by the token's id.
// The order is fixed: secret, status, source address, permission, so that
// nothing about a key's state is revealed to a caller without its secret.
// An empty permission asks only that the key is valid; an invalid addr skips
// the address check only for keys without an IP restriction. owner is the
// key's owner's current permissions: a key's effective permissions are
// those of its own that its owner still holds (see Effective), so a role
// taken from a principal stops working on its existing keys at once.
func Check(k Key, secret Secret, now time.Time, addr netip.Addr, permission string, owner []string) string {
	if !k.Exists() || !k.DeletedAt.IsZero() {
		// A deleted key is a tombstone: it answers as if it never existed
		// only after its secret is proved, so check the secret first.
		if k.Exists() && secretOK(k, secret, now) {
			return OutcomeRevoked
		}
		return OutcomeNotFound
	}
	if !secretOK(k, secret, now) {
		return OutcomeInvalidSecret
	}
	switch k.Status(now) {
	case StatusRevoked:
		return OutcomeRevoked
	case StatusDisabled:
		return OutcomeDisabled
	case StatusExpired:
		return OutcomeExpired
	}
	if len(k.AllowedPrefixes) > 0 && (!addr.IsValid() || !IPAllowed(k.AllowedPrefixes, addr)) {
		return OutcomeIPNotAllowed
	}
	if permission != "" && !Effective(k.Permissions, owner, permission) {
		return OutcomeInsufficientPermissions
	}
	return OutcomeValid
}

func secretOK(k Key, s Secret, now time.Time) bool {
	if SecretMatches(s, k.SecretHash) {
		return true
	}
	return k.PrevSecretHash != "" && now.Before(k.PrevValidUntil) && SecretMatches(s, k.PrevSecretHash)
}

// EffectivePermissions is what a key carrying keyPerms may do while its
// owner holds ownerPerms: each of the key's permissions the owner holds,
// and where the owner holds only part of a wildcard of the key's, that
// part. When the owner holds all of the key's permissions (the usual case)
// it returns keyPerms itself without allocating.
func EffectivePermissions(keyPerms, ownerPerms []string) []string {
	all := true
	for _, p := range keyPerms {
		if !Covers(ownerPerms, p) {
			all = false
			break
		}
	}
	if all {
		return keyPerms
	}
	out := []string{}
	for _, p := range keyPerms {
		if Covers(ownerPerms, p) {
			out = append(out, p)
			continue
		}
		for _, o := range ownerPerms {
			if Covers([]string{p}, o) {
				out = append(out, o)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Effective reports whether a key carrying keyPerms, whose owner holds
// ownerPerms now, may use permission p: both must cover it.
func Effective(keyPerms, ownerPerms []string, p string) bool {
	return Covers(keyPerms, p) && Covers(ownerPerms, p)
}
