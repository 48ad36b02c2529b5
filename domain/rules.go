package domain

import (
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"
)

// Limits on what a key may carry. They bound memory per key and the size of
// every event.
const (
	DefaultLifetimeDays = 90
	MaxLifetimeDays     = 3650
	MaxNameLen          = 128
	MaxCommentsLen      = 2000
	MaxReasonLen        = 1000
	MaxPermissions      = 100
	MaxPermissionLen    = 128
	MaxAllowedIPs       = 100
	MaxMetadataEntries  = 32
	MaxMetadataKeyLen   = 64
	MaxMetadataValueLen = 512
)

// ValidPermission reports whether p is a well-formed permission string:
// dot-separated segments of lowercase letters, digits, '_', '-' and ':',
// optionally ending in ".*", or "*" alone.
func ValidPermission(p string) bool {
	if p == "*" {
		return true
	}
	if len(p) == 0 || len(p) > MaxPermissionLen {
		return false
	}
	segs := strings.Split(p, ".")
	for i, s := range segs {
		if s == "*" && i == len(segs)-1 && i > 0 {
			continue
		}
		if s == "" {
			return false
		}
		for _, r := range s {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == ':') {
				return false
			}
		}
	}
	return true
}

// Covers reports whether the granted permissions include p. "*" covers
// everything; "a.*" covers "a.b", "a.b.c" and "a.b.*"; otherwise the strings
// must be equal. A cross-owner power that no role may grant (see
// CrossOwnerPermissions) is covered by nothing, so neither a wildcard such
// as "api.key.*" nor a role stored before that rule reaches it.
func Covers(granted []string, p string) bool {
	if co, ok := CrossOwner(p); co && !ok {
		return false
	}
	for _, g := range granted {
		if g == p || g == "*" {
			return true
		}
		if strings.HasSuffix(g, ".*") && strings.HasPrefix(p, g[:len(g)-1]) && len(p) > len(g)-1 {
			return true
		}
	}
	return false
}

// NormalizeRolePermissions is NormalizePermissions for a role's
// permissions, which may not name a cross-owner power beyond
// CrossOwnerPermissions. Errors: EINVALID (cross_owner_permission, and
// NormalizePermissions').
func NormalizeRolePermissions(ps []string) ([]string, error) {
	out, err := NormalizePermissions(ps)
	if err != nil {
		return nil, err
	}
	for _, p := range out {
		if co, ok := CrossOwner(p); co && !ok {
			return nil, Errorf(EINVALID, "cross_owner_permission",
				"no role may hold %q: another principal's keys may only be viewed (api.key.view.any), revoked (api.key.revoke.any) or deleted (api.key.delete.any), and their logs viewed (api.log.view.any)", p)
		}
	}
	return out, nil
}

// NormalizePermissions validates, de-duplicates and sorts a permission list.
func NormalizePermissions(ps []string) ([]string, error) {
	if len(ps) > MaxPermissions {
		return nil, Errorf(EINVALID, "too_many_permissions", "at most %d permissions", MaxPermissions)
	}
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		if !ValidPermission(p) {
			return nil, Errorf(EINVALID, "invalid_permission", "invalid permission %q", p)
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ParsePrefix parses an address or a CIDR prefix ("10.0.0.1",
// "10.0.0.0/8", "2001:db8::/32") into its canonical prefix: the one rule for
// every IP keyledger is given, in a key's allowed IPs, a log search or the
// CLI. A bare address becomes a single-address prefix, an IPv4-mapped IPv6
// one becomes IPv4, and host bits of a prefix must be zero so that what is
// stored or searched is what was meant. Errors: EINVALID (invalid_cidr).
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		p, err = netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, Errorf(EINVALID, "invalid_cidr", "invalid CIDR %q", s)
		}
		if p.Masked() != p {
			return netip.Prefix{}, Errorf(EINVALID, "invalid_cidr", "CIDR %q has host bits set (did you mean %s?)", s, p.Masked())
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, Errorf(EINVALID, "invalid_cidr", "invalid IP address %q", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		if p.Bits() < 0 {
			return netip.Prefix{}, Errorf(EINVALID, "invalid_cidr", "invalid CIDR %q", s)
		}
	}
	return p, nil
}

// ParseAllowedIPs parses a key's allowed addresses and CIDR prefixes with
// ParsePrefix, sorted and without duplicates.
func ParseAllowedIPs(in []string) ([]netip.Prefix, error) {
	if len(in) > MaxAllowedIPs {
		return nil, Errorf(EINVALID, "too_many_ips", "at most %d allowed IPs", MaxAllowedIPs)
	}
	out := make([]netip.Prefix, 0, len(in))
	for _, s := range in {
		p, err := ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out), nil
}

// PrefixStrings renders prefixes as their canonical strings.
func PrefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// IPAllowed reports whether addr falls in one of the prefixes; an empty list
// allows every address.
func IPAllowed(ps []netip.Prefix, addr netip.Addr) bool {
	if len(ps) == 0 {
		return true
	}
	addr = addr.Unmap()
	for _, p := range ps {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

func validMetadata(m map[string]string) error {
	if len(m) > MaxMetadataEntries {
		return Errorf(EINVALID, "invalid_metadata", "at most %d metadata entries", MaxMetadataEntries)
	}
	for k, v := range m {
		if k == "" || len(k) > MaxMetadataKeyLen || !utf8.ValidString(k) {
			return Errorf(EINVALID, "invalid_metadata", "invalid metadata key %q", k)
		}
		if len(v) > MaxMetadataValueLen || !utf8.ValidString(v) {
			return Errorf(EINVALID, "invalid_metadata", "metadata value of %q is too long or not UTF-8", k)
		}
	}
	return nil
}
