package domain_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

func TestCheckOutcomes(t *testing.T) {
	var s, other domain.Secret
	s[0], other[0] = 1, 2
	c := created
	c.SecretHash = domain.HashSecret(s)
	in := netip.MustParseAddr("10.1.2.3")
	out := netip.MustParseAddr("203.0.113.9")
	at := t0.Add(10 * time.Hour)
	rot := domain.RegenerateKey{Meta: meta, Rotate: true, SecretHash: domain.HashSecret(other), GracePeriod: 2 * time.Hour}

	tests := []struct {
		name   string
		key    domain.Key
		secret domain.Secret
		now    time.Time
		addr   netip.Addr
		perm   string
		want   string
	}{
		{"valid", given(t, c), s, at, in, "orders.read", domain.OutcomeValid},
		{"valid wildcard", given(t, c), s, at, in, "orders.write", domain.OutcomeValid},
		{"valid no permission asked", given(t, c), s, at, in, "", domain.OutcomeValid},
		{"unknown key", domain.Key{}, s, at, in, "", domain.OutcomeNotFound},
		{"wrong secret", given(t, c), other, at, in, "", domain.OutcomeInvalidSecret},
		{"revoked", given(t, c, domain.RevokeKey{Meta: meta, Reason: "x"}), s, at, in, "", domain.OutcomeRevoked},
		{"revoked wrong secret", given(t, c, domain.RevokeKey{Meta: meta, Reason: "x"}), other, at, in, "", domain.OutcomeInvalidSecret},
		{"deleted", given(t, c, domain.DeleteKey{Meta: meta}), s, at, in, "", domain.OutcomeRevoked},
		{"deleted wrong secret", given(t, c, domain.DeleteKey{Meta: meta}), other, at, in, "", domain.OutcomeNotFound},
		{"disabled", given(t, c, domain.DisableKey{Meta: meta}), s, at, in, "", domain.OutcomeDisabled},
		{"expired", given(t, c), s, t0.Add(31 * 24 * time.Hour), in, "", domain.OutcomeExpired},
		{"ip not allowed", given(t, c), s, at, out, "", domain.OutcomeIPNotAllowed},
		{"ip unknown", given(t, c), s, at, netip.Addr{}, "", domain.OutcomeIPNotAllowed},
		{"permission", given(t, c), s, at, in, "users.read", domain.OutcomeInsufficientPermissions},
		{"rotated new secret", given(t, c, rot), other, t0.Add(2 * time.Hour), in, "", domain.OutcomeValid},
		{"rotated old secret in grace", given(t, c, rot), s, t0.Add(2 * time.Hour), in, "", domain.OutcomeValid},
		{"rotated old secret after grace", given(t, c, rot), s, t0.Add(3 * time.Hour), in, "", domain.OutcomeInvalidSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := domain.Check(tt.key, tt.secret, tt.now, tt.addr, tt.perm, everything); got != tt.want {
				t.Fatalf("Check = %s, want %s", got, tt.want)
			}
		})
	}
	open := given(t, func() domain.CreateKey { c2 := c; c2.AllowedIPs = nil; return c2 }())
	if got := domain.Check(open, s, at, netip.Addr{}, "", everything); got != domain.OutcomeValid {
		t.Fatalf("key without IP restriction = %s", got)
	}
	// A key's effective permissions are those its owner still holds.
	for _, o := range []struct {
		owner []string
		perm  string
		want  string
	}{
		{[]string{"orders.read"}, "orders.read", domain.OutcomeValid},
		{[]string{"orders.*"}, "orders.write", domain.OutcomeValid},
		{[]string{"orders.read"}, "orders.write", domain.OutcomeInsufficientPermissions},
		{nil, "orders.read", domain.OutcomeInsufficientPermissions},
		{nil, "", domain.OutcomeValid},
	} {
		if got := domain.Check(given(t, c), s, at, in, o.perm, o.owner); got != o.want {
			t.Errorf("owner %v, %q: %s, want %s", o.owner, o.perm, got, o.want)
		}
	}
}

// everything is an owner's permissions that cover any key's.
var everything = []string{"*"}

func BenchmarkCheck(b *testing.B) {
	var s domain.Secret
	s[0] = 1
	c := created
	c.SecretHash = domain.HashSecret(s)
	envs, _ := domain.Decide(domain.Key{}, c, t0, uuid.New)
	k := domain.Evolve(domain.Key{}, envs[0])
	tok := domain.FormatToken(uuid.MustParse(keyID), s)
	addr := netip.MustParseAddr("10.1.2.3")
	b.ReportAllocs()
	for b.Loop() {
		p, err := domain.ParseToken(tok)
		if err != nil {
			b.Fatal(err)
		}
		if domain.Check(k, p.Secret, t0, addr, "orders.read", everything) != domain.OutcomeValid {
			b.Fatal("not valid")
		}
	}
}

func TestEffectivePermissions(t *testing.T) {
	for _, c := range []struct {
		key, owner, want []string
	}{
		{[]string{"orders.read", "orders.write"}, []string{"orders.*"}, []string{"orders.read", "orders.write"}},
		{[]string{"orders.read", "orders.write"}, []string{"orders.read"}, []string{"orders.read"}},
		{[]string{"orders.*"}, []string{"orders.read", "billing.read"}, []string{"orders.read"}},
		{[]string{"orders.write"}, nil, []string{}},
		{[]string{"*"}, []string{"a.b", "c.*"}, []string{"a.b", "c.*"}},
	} {
		got := domain.EffectivePermissions(c.key, c.owner)
		if !slices.Equal(got, c.want) {
			t.Errorf("key %v, owner %v: %v, want %v", c.key, c.owner, got, c.want)
		}
	}
}
