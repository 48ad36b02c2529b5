package domain_test

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyledger/keyledger/domain"
)

// envelopeData are data fields an envelope may carry: what encodeData
// writes, and raw JSON that encoding/json compacts or escapes on the way
// out (spaces, HTML characters, U+2028), or leaves alone.
var envelopeData = []string{
	`{"code":"VALID"}`, `{}`, `null`, `[]`, `"s"`, `12.5e3`, `true`,
	` { "a" : [ 1 , 2 ] , "b" : { } } `, "{\n\t\"x\": \"y\"\n}",
	`{"html":"<b>&</b>"}`, `{"<":">"}`, "{\"ls\":\"\u2028\u2029\"}",
	`{"esc":"\u003c\u0026\"\\\/"}`, `{"deep":[[[[{"a":[null,false,-0.0]}]]]]}`,
}

// checkEnvelopeEncoding checks that Marshal writes env exactly as
// encoding/json.Marshal does, or fails where it fails.
func checkEnvelopeEncoding(t *testing.T, env domain.Envelope) {
	t.Helper()
	want, werr := json.Marshal(env)
	got, gerr := env.Marshal()
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("envelope %+v: Marshal error %v, encoding/json error %v", env, gerr, werr)
	}
	if werr == nil && !bytes.Equal(got, want) {
		t.Fatalf("envelope %+v\n got %s\nwant %s", env, got, want)
	}
}

// TestEnvelopeEncodingMatchesMarshal compares Marshal with encoding/json on
// envelopes of every event type and on many varied envelopes.
func TestEnvelopeEncodingMatchesMarshal(t *testing.T) {
	now := time.UnixMilli(1700000000123)
	for _, ev := range everyEvent() {
		env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), "k_1", ev, now, "admin", &domain.RequestContext{RequestID: "r", SourceIP: "10.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		env.Seal("sha256:" + string(bytes.Repeat([]byte("ab"), 32)))
		checkEnvelopeEncoding(t, env)
	}
	r := rand.New(rand.NewPCG(3, 4))
	pick := func() string {
		if r.IntN(3) == 0 {
			return ""
		}
		return usageStrings[r.IntN(len(usageStrings))]
	}
	zones := []*time.Location{time.UTC, time.FixedZone("x", 5*3600+1800), time.FixedZone("y", -7*3600)}
	for range 3000 {
		env := domain.Envelope{
			ID: uuid.New(), Type: pick(), KeyID: pick(), Actor: pick(), SchemaVersion: r.IntN(3),
			Time:     time.Unix(r.Int64N(4e9)-1e9, r.Int64N(1e9)).In(zones[r.IntN(len(zones))]),
			PrevHash: pick(), Hash: pick(),
			// Fields that are not part of the encoding must not leak in.
			Stream: pick(), Seq: r.Uint64(), Index: r.IntN(9), Writer: pick(),
		}
		if r.IntN(5) > 0 {
			env.Data = json.RawMessage(envelopeData[r.IntN(len(envelopeData))])
		}
		if r.IntN(2) == 0 {
			env.Context = &domain.RequestContext{RequestID: pick(), SourceIP: pick(), UserAgent: pick()}
		}
		if r.IntN(50) == 0 {
			env.Time = time.Time{}
		}
		checkEnvelopeEncoding(t, env)
	}
}

// TestEnvelopeEncodingRefusesBadData: data that is not JSON is an error,
// as with encoding/json, not bytes that no reader can parse.
func TestEnvelopeEncodingRefusesBadData(t *testing.T) {
	for _, data := range []string{`{`, `{"a":}`, `nul`, `{} {}`, "\xff", `'x'`} {
		env := domain.Envelope{ID: uuid.New(), Type: domain.TypeKeyUsed, Data: json.RawMessage(data)}
		if b, err := env.Marshal(); err == nil {
			t.Errorf("data %q: Marshal gave %s, want an error", data, b)
		}
		checkEnvelopeEncoding(t, env)
	}
}

// FuzzEnvelopeEncoding compares Marshal with encoding/json on arbitrary
// strings, times and data.
func FuzzEnvelopeEncoding(f *testing.F) {
	for i, d := range envelopeData {
		f.Add(usageStrings[i%len(usageStrings)], usageStrings[(i+3)%len(usageStrings)], int64(i)*1e15, d)
	}
	f.Fuzz(func(t *testing.T, a, b string, nanos int64, data string) {
		env := domain.Envelope{
			ID: uuid.NewSHA1(uuid.Nil, []byte(a)), Type: a, KeyID: b, Actor: a + b, SchemaVersion: 1,
			Time: time.Unix(0, nanos).UTC(), Context: &domain.RequestContext{RequestID: b, UserAgent: a},
			Data: json.RawMessage(data), PrevHash: b, Hash: a,
		}
		checkEnvelopeEncoding(t, env)
	})
}

// everyEvent returns one event of every type, with its fields set.
func everyEvent() []domain.Event {
	name, perms, meta, n := "n <&>", []string{"a:read", "b:*"}, map[string]string{"z": "1", "a": "<2>"}, 3
	exp := time.Date(2027, 1, 2, 3, 4, 5, 600_000_000, time.UTC)
	return []domain.Event{
		domain.KeyCreated{Owner: "o", Name: name, Comments: "c\n", Role: "r", Permissions: perms, LifetimeDays: 30,
			ExpiresAt: exp, AllowedIPs: []string{"10.0.0.0/8"}, Metadata: meta, SecretHash: "sha256:ab"},
		domain.KeyRegenerated{ExpiresAt: exp, Rotated: true, SecretHash: "sha256:cd", PreviousValidUntil: exp.Add(time.Hour)},
		domain.KeyUpdated{Name: &name, Comments: &name, Permissions: &perms, AllowedIPs: &perms, Metadata: &meta},
		domain.KeyDisabled{Reason: "why"}, domain.KeyEnabled{}, domain.KeyRevoked{Reason: "leak"}, domain.KeyDeleted{},
		domain.KeyUsed{Code: "VALID", Owner: "o", Permission: "a:read", Service: "s", CallerKey: "k_2", CallerIP: "::1"},
		domain.KeyDenied{Code: "REVOKED", TokenHash: "sha256:ef"},
		domain.PrincipalCreated{Name: name, Roles: perms, Email: "a@b", MaxKeys: 5},
		domain.PrincipalUpdated{Name: &name, Roles: &perms, MaxKeys: &n},
		domain.PrincipalDisabled{Reason: "x"}, domain.PrincipalEnabled{},
		domain.PrincipalKeyIssued{KeyID: "k_3", ActiveKeys: 2, Limit: 5},
		domain.RoleCreated{Permissions: perms, Description: "d"}, domain.RoleUpdated{Permissions: nil, Description: &name},
		domain.RoleDeleted{},
		domain.AlertRaised{Rule: "spray", Severity: "high", Incident: "i", Summary: "s <b>", KeyIDs: perms,
			WindowStart: exp, WindowEnd: exp.Add(time.Minute), Count: 9, Evidence: perms, Query: "q=a&b", Escalation: true},
	}
}
