package domain_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

var (
	t0      = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	keyID   = "0191e8a0-0000-7000-8000-000000000001"
	hashA   = strings.Repeat("a", 64)
	hashB   = strings.Repeat("b", 64)
	actor   = "principal-1"
	meta    = domain.Meta{Actor: actor}
	created = domain.CreateKey{Meta: meta, KeyID: keyID, Owner: "owner-1", Name: "ci", Permissions: []string{"orders.read", "orders.*"}, LifetimeDays: 30, AllowedIPs: []string{"10.0.0.0/8", "192.0.2.7"}, SecretHash: hashA}
)

// ids returns a deterministic id generator.
func ids() func() uuid.UUID {
	n := 0
	return func() uuid.UUID {
		n++
		var u uuid.UUID
		u[15] = byte(n)
		u[6] = 0x70
		return u
	}
}

// given folds the events produced by a sequence of commands, each decided
// one hour after the previous one, and fails the test if any is refused.
func given(t *testing.T, cmds ...domain.Command) domain.Key {
	t.Helper()
	var k domain.Key
	next := ids()
	var seq uint64
	for i, c := range cmds {
		envs, err := domain.Decide(k, c, t0.Add(time.Duration(i)*time.Hour), next)
		if err != nil {
			t.Fatalf("given %T: %v", c, err)
		}
		for _, e := range envs {
			seq++
			e.Seq = seq
			k = domain.Evolve(k, e)
		}
	}
	return k
}

func types(envs []domain.Envelope) []string {
	var out []string
	for _, e := range envs {
		out = append(out, e.Type)
	}
	return out
}

func strp(s string) *string { return &s }

func TestDecideTable(t *testing.T) {
	revoke := domain.RevokeKey{Meta: meta, Reason: "leaked"}
	tests := []struct {
		name   string
		given  []domain.Command
		when   domain.Command
		then   []string // event types
		reason string   // or the error's stable reason
	}{
		{"create", nil, created, []string{domain.TypeKeyCreated}, ""},
		{"create twice", []domain.Command{created}, created, nil, "key_exists"},
		{"create without actor", nil, func() domain.Command { c := created; c.Actor = ""; return c }(), nil, "missing_actor"},
		{"create bad id", nil, func() domain.Command { c := created; c.KeyID = "nope"; return c }(), nil, "invalid_key_id"},
		{"create no owner", nil, func() domain.Command { c := created; c.Owner = ""; return c }(), nil, "invalid_owner"},
		{"create no name", nil, func() domain.Command { c := created; c.Name = " "; return c }(), nil, "invalid_name"},
		{"create long name", nil, func() domain.Command { c := created; c.Name = strings.Repeat("n", 129); return c }(), nil, "invalid_name"},
		{"create control chars", nil, func() domain.Command { c := created; c.Comments = "a\x00b"; return c }(), nil, "invalid_comments"},
		{"create lifetime too long", nil, func() domain.Command { c := created; c.LifetimeDays = domain.MaxLifetimeDays + 1; return c }(), nil, "lifetime_out_of_range"},
		{"create lifetime negative", nil, func() domain.Command { c := created; c.LifetimeDays = -1; return c }(), nil, "lifetime_out_of_range"},
		{"create bad cidr", nil, func() domain.Command { c := created; c.AllowedIPs = []string{"10.0.0.0/33"}; return c }(), nil, "invalid_cidr"},
		{"create cidr host bits", nil, func() domain.Command { c := created; c.AllowedIPs = []string{"10.0.0.1/8"}; return c }(), nil, "invalid_cidr"},
		{"create bad permission", nil, func() domain.Command { c := created; c.Permissions = []string{"Orders Read"}; return c }(), nil, "invalid_permission"},
		{"create bad hash", nil, func() domain.Command { c := created; c.SecretHash = "xyz"; return c }(), nil, "invalid_secret_hash"},
		{"create bad metadata", nil, func() domain.Command { c := created; c.Metadata = map[string]string{"": "x"}; return c }(), nil, "invalid_metadata"},

		{"regenerate missing", nil, domain.RegenerateKey{Meta: meta}, nil, "key_not_found"},
		{"regenerate", []domain.Command{created}, domain.RegenerateKey{Meta: meta}, []string{domain.TypeKeyRegenerated}, ""},
		{"regenerate rotate", []domain.Command{created}, domain.RegenerateKey{Meta: meta, Rotate: true, GracePeriod: time.Hour, SecretHash: hashB}, []string{domain.TypeKeyRegenerated}, ""},
		{"regenerate rotate without hash", []domain.Command{created}, domain.RegenerateKey{Meta: meta, Rotate: true}, nil, "invalid_secret_hash"},
		{"regenerate hash without rotate", []domain.Command{created}, domain.RegenerateKey{Meta: meta, SecretHash: hashB}, nil, "invalid_regenerate"},
		{"regenerate grace too long", []domain.Command{created}, domain.RegenerateKey{Meta: meta, Rotate: true, SecretHash: hashB, GracePeriod: domain.MaxGracePeriod + 1}, nil, "invalid_grace_period"},
		{"regenerate disabled", []domain.Command{created, domain.DisableKey{Meta: meta}}, domain.RegenerateKey{Meta: meta}, []string{domain.TypeKeyRegenerated}, ""},
		{"regenerate revoked", []domain.Command{created, revoke}, domain.RegenerateKey{Meta: meta}, nil, "key_revoked"},
		{"regenerate deleted", []domain.Command{created, domain.DeleteKey{Meta: meta}}, domain.RegenerateKey{Meta: meta}, nil, "key_deleted"},

		{"update name", []domain.Command{created}, domain.UpdateKey{Meta: meta, Name: strp("new")}, []string{domain.TypeKeyUpdated}, ""},
		{"update nothing", []domain.Command{created}, domain.UpdateKey{Meta: meta, Name: strp("ci")}, nil, "nothing_to_update"},
		{"update bad permission", []domain.Command{created}, domain.UpdateKey{Meta: meta, Permissions: &[]string{"*.x"}}, nil, "invalid_permission"},
		{"update revoked", []domain.Command{created, revoke}, domain.UpdateKey{Meta: meta, Name: strp("x")}, nil, "key_revoked"},
		{"update missing", nil, domain.UpdateKey{Meta: meta, Name: strp("x")}, nil, "key_not_found"},

		{"disable", []domain.Command{created}, domain.DisableKey{Meta: meta}, []string{domain.TypeKeyDisabled}, ""},
		{"disable twice", []domain.Command{created, domain.DisableKey{Meta: meta}}, domain.DisableKey{Meta: meta}, nil, "key_already_disabled"},
		{"disable revoked", []domain.Command{created, revoke}, domain.DisableKey{Meta: meta}, nil, "key_revoked"},
		{"enable", []domain.Command{created, domain.DisableKey{Meta: meta}}, domain.EnableKey{Meta: meta}, []string{domain.TypeKeyEnabled}, ""},
		{"enable active", []domain.Command{created}, domain.EnableKey{Meta: meta}, nil, "key_not_disabled"},
		{"enable revoked", []domain.Command{created, domain.DisableKey{Meta: meta}, revoke}, domain.EnableKey{Meta: meta}, nil, "key_revoked"},
		{"enable deleted", []domain.Command{created, domain.DisableKey{Meta: meta}, domain.DeleteKey{Meta: meta}}, domain.EnableKey{Meta: meta}, nil, "key_deleted"},

		{"revoke", []domain.Command{created}, revoke, []string{domain.TypeKeyRevoked}, ""},
		{"revoke disabled", []domain.Command{created, domain.DisableKey{Meta: meta}}, revoke, []string{domain.TypeKeyRevoked}, ""},
		{"revoke without reason", []domain.Command{created}, domain.RevokeKey{Meta: meta}, nil, "invalid_reason"},
		{"revoke twice", []domain.Command{created, revoke}, revoke, nil, "key_revoked"},
		{"revoke deleted", []domain.Command{created, domain.DeleteKey{Meta: meta}}, revoke, nil, "key_deleted"},

		{"delete active revokes first", []domain.Command{created}, domain.DeleteKey{Meta: meta}, []string{domain.TypeKeyRevoked, domain.TypeKeyDeleted}, ""},
		{"delete revoked", []domain.Command{created, revoke}, domain.DeleteKey{Meta: meta}, []string{domain.TypeKeyDeleted}, ""},
		{"delete twice", []domain.Command{created, domain.DeleteKey{Meta: meta}}, domain.DeleteKey{Meta: meta}, nil, "key_deleted"},
		{"delete missing", nil, domain.DeleteKey{Meta: meta}, nil, "key_not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := given(t, tt.given...)
			envs, err := domain.Decide(k, tt.when, t0.Add(100*time.Hour), ids())
			if tt.reason != "" {
				if got := domain.ErrorReason(err); got != tt.reason {
					t.Fatalf("reason = %q (%v), want %q", got, err, tt.reason)
				}
				if envs != nil {
					t.Fatalf("events on error: %v", types(envs))
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if got := types(envs); !slices.Equal(got, tt.then) {
				t.Fatalf("events = %v, want %v", got, tt.then)
			}
			prev := k.LastHash
			for _, e := range envs {
				if e.KeyID != keyID || e.Actor != actor || e.SchemaVersion != domain.SchemaVersion {
					t.Fatalf("bad envelope %+v", e)
				}
				if e.PrevHash != prev || e.Hash != e.ComputeHash() {
					t.Fatalf("hash chain broken: prev %q want %q", e.PrevHash, prev)
				}
				prev = e.Hash
			}
		})
	}
}

func TestStatusDerivation(t *testing.T) {
	k := given(t, created) // decided at t0, 30 days
	if got, want := k.Status(t0), domain.StatusActive; got != want {
		t.Fatalf("status = %s, want %s", got, want)
	}
	if got, want := k.Status(t0.Add(30*24*time.Hour)), domain.StatusExpired; got != want {
		t.Fatalf("status at expiry = %s, want %s", got, want)
	}
	if got, want := k.ExpiresAt, t0.Add(30*24*time.Hour); !got.Equal(want) {
		t.Fatalf("expires = %s, want %s", got, want)
	}
	if got := k.AllowedIPs; !slices.Equal(got, []string{"10.0.0.0/8", "192.0.2.7/32"}) {
		t.Fatalf("allowed ips = %v", got)
	}
	if got := k.Permissions; !slices.Equal(got, []string{"orders.*", "orders.read"}) {
		t.Fatalf("permissions = %v", got)
	}
	d := given(t, created, domain.DisableKey{Meta: meta})
	if got, want := d.Status(t0.Add(time.Hour)), domain.StatusDisabled; got != want {
		t.Fatalf("status = %s, want %s", got, want)
	}
	e := given(t, created, domain.DisableKey{Meta: meta}, domain.EnableKey{Meta: meta})
	if got, want := e.Status(t0.Add(2*time.Hour)), domain.StatusActive; got != want {
		t.Fatalf("status = %s, want %s", got, want)
	}
	r := given(t, created, domain.DisableKey{Meta: meta}, domain.RevokeKey{Meta: meta, Reason: "x"})
	if got, want := r.Status(t0.Add(2*time.Hour)), domain.StatusRevoked; got != want {
		t.Fatalf("status = %s, want %s", got, want)
	}
	del := given(t, created, domain.DeleteKey{Meta: meta})
	if got, want := del.Status(t0.Add(2*time.Hour)), domain.StatusDeleted; got != want {
		t.Fatalf("status = %s, want %s", got, want)
	}
	if del.RevokeReason != "deleted" || del.Events != 3 || del.Version != 3 {
		t.Fatalf("deleted key = reason %q events %d version %d", del.RevokeReason, del.Events, del.Version)
	}
}

func TestRegenerateExtendsByOriginalLifetime(t *testing.T) {
	// Regenerated one hour after creation: 30 more days on top of the
	// remaining lifetime, with the original permissions.
	k := given(t, created, domain.RegenerateKey{Meta: meta})
	if got, want := k.ExpiresAt, t0.Add(60*24*time.Hour); !got.Equal(want) {
		t.Fatalf("expires = %s, want %s", got, want)
	}
	if !slices.Equal(k.Permissions, []string{"orders.*", "orders.read"}) || k.SecretHash != hashA {
		t.Fatalf("regenerate changed privileges or secret: %+v", k)
	}
	// An expired key gets a full lifetime from now.
	envs, err := domain.Decide(k, domain.RegenerateKey{Meta: meta}, t0.Add(100*24*time.Hour), ids())
	if err != nil {
		t.Fatal(err)
	}
	k2 := domain.Evolve(k, envs[0])
	if got, want := k2.ExpiresAt, t0.Add(130*24*time.Hour); !got.Equal(want) {
		t.Fatalf("expires = %s, want %s", got, want)
	}
	// Rotation installs the new secret and keeps the old one for the grace period.
	r := given(t, created, domain.RegenerateKey{Meta: meta, Rotate: true, SecretHash: hashB, GracePeriod: 2 * time.Hour})
	if r.SecretHash != hashB || r.PrevSecretHash != hashA || !r.PrevValidUntil.Equal(t0.Add(3*time.Hour)) {
		t.Fatalf("rotation state = %+v", r)
	}
}

func TestDecideDoesNotAliasInput(t *testing.T) {
	c := created
	c.Permissions = []string{"b", "a"}
	c.Metadata = map[string]string{"team": "x"}
	envs, err := domain.Decide(domain.Key{}, c, t0, ids())
	if err != nil {
		t.Fatal(err)
	}
	c.Metadata["team"] = "changed"
	ev, err := envs[0].Decode()
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.(domain.KeyCreated).Metadata["team"]; got != "x" {
		t.Fatalf("metadata aliased: %q", got)
	}
}

// TestRegenerateNeverPassesMaxLifetime: a 3650-day key regenerated at once,
// and again, expires exactly MaxLifetimeDays from the regeneration, not a
// lifetime past its current expiry; the event records both expiries.
func TestRegenerateNeverPassesMaxLifetime(t *testing.T) {
	c := created
	c.LifetimeDays = domain.MaxLifetimeDays
	k := given(t, c)
	limit := func(at time.Time) time.Time { return at.Add(domain.MaxLifetimeDays * 24 * time.Hour) }
	for i, at := range []time.Time{t0.Add(time.Hour), t0.Add(2 * time.Hour), t0.Add(400 * 24 * time.Hour)} {
		envs, err := domain.Decide(k, domain.RegenerateKey{Meta: meta}, at, ids())
		if err != nil {
			t.Fatal(err)
		}
		ev, _ := envs[0].Decode()
		r := ev.(domain.KeyRegenerated)
		if !r.PreviousExpiresAt.Equal(k.ExpiresAt) || !r.ExpiresAt.Equal(limit(at)) {
			t.Fatalf("regeneration %d: %s -> %s, want %s -> %s", i, r.PreviousExpiresAt, r.ExpiresAt, k.ExpiresAt, limit(at))
		}
		k = domain.Evolve(k, envs[0])
	}
	// Under the cap the rule is unchanged: the lifetime is added to the
	// current expiry.
	short := given(t, created, domain.RegenerateKey{Meta: meta})
	if got, want := short.ExpiresAt, t0.Add(60*24*time.Hour); !got.Equal(want) {
		t.Fatalf("30-day key regenerated: %s, want %s", got, want)
	}
}

// TestRegeneratedBeforePreviousExpiry: a key.regenerated event stored
// before it recorded the previous expiry still decodes with its hash.
func TestRegeneratedBeforePreviousExpiry(t *testing.T) {
	env, err := domain.UnmarshalEnvelope([]byte(`{"id":"00000000-0000-7000-0000-000000000003","type":"key.regenerated","key_id":"0191e8a0-0000-7000-8000-000000000001","time":"2026-01-02T05:04:05Z","actor":"principal-1","schema_version":1,"data":{"expires_at":"2026-03-03T03:04:05Z","rotated":true,"secret_hash":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","previous_valid_until":"2026-01-02T06:04:05Z"},"prev_hash":"1be17dde06544601ae5eb3eb09623e5edeffa7979d417b2a90f720cf12d45a54","hash":"4cfea61208bd60fc58dec274c6aab8d512d9bb6db1e716048590fccf0e962c27"}`))
	if err != nil {
		t.Fatal(err)
	}
	if env.ComputeHash() != env.Hash {
		t.Fatal("hash of the earlier encoding changed")
	}
	ev, err := env.Decode()
	if err != nil {
		t.Fatal(err)
	}
	if r := ev.(domain.KeyRegenerated); !r.PreviousExpiresAt.IsZero() || r.ExpiresAt.IsZero() {
		t.Fatalf("decoded %+v", r)
	}
}
