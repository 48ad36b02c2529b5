package domain_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// TestEnvelopeGolden pins the stored wire encoding and the hash input of one
// event of every lifecycle type: changing either would orphan stored history.
func TestEnvelopeGolden(t *testing.T) {
	k := given(t, created)
	next := ids()
	var all []domain.Envelope
	add := func(c domain.Command, at time.Duration) {
		t.Helper()
		envs, err := domain.Decide(k, c, t0.Add(at), next)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range envs {
			k = domain.Evolve(k, e)
		}
		all = append(all, envs...)
	}
	first, err := domain.Decide(domain.Key{}, created, t0, next)
	if err != nil {
		t.Fatal(err)
	}
	all = append(all, first...)
	rc := &domain.RequestContext{RequestID: "req-1", SourceIP: "192.0.2.1", UserAgent: "curl/8"}
	add(domain.UpdateKey{Meta: domain.Meta{Actor: actor, Context: rc}, Name: strp("renamed")}, time.Hour)
	add(domain.RegenerateKey{Meta: meta, Rotate: true, SecretHash: hashB, GracePeriod: time.Hour}, 2*time.Hour)
	add(domain.DisableKey{Meta: meta, Reason: "holiday"}, 3*time.Hour)
	add(domain.EnableKey{Meta: meta}, 4*time.Hour)
	add(domain.DeleteKey{Meta: meta}, 5*time.Hour)
	used, err := domain.NewEnvelope(next(), keyID, domain.KeyUsed{Code: domain.OutcomeValid, Owner: "owner-1", Permission: "orders.read"}, t0, "verifier-1", rc)
	if err != nil {
		t.Fatal(err)
	}
	used.Seal("")
	all = append(all, used)
	issued, err := domain.DecidePrincipal(domain.Principal{ID: "owner-1", Events: 1, LastHash: used.Hash},
		domain.IssueKey{Meta: meta, KeyID: keyID, ActiveKeys: 2, Limit: 5}, func(string) bool { return true }, t0, next)
	if err != nil {
		t.Fatal(err)
	}
	all = append(all, issued...)

	var buf bytes.Buffer
	for _, e := range all {
		b, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
		back, err := domain.UnmarshalEnvelope(b)
		if err != nil {
			t.Fatalf("decode own encoding: %v", err)
		}
		if back.ComputeHash() != e.Hash || back.Hash != e.Hash {
			t.Fatalf("hash changed across a round trip for %s", e.Type)
		}
		if _, err := back.Decode(); err != nil {
			t.Fatal(err)
		}
	}
	golden(t, "events.golden", buf.Bytes())
}

func TestHashCoversEveryField(t *testing.T) {
	envs, err := domain.Decide(domain.Key{}, created, t0, ids())
	if err != nil {
		t.Fatal(err)
	}
	base := envs[0]
	mutations := map[string]func(e *domain.Envelope){
		"id":       func(e *domain.Envelope) { e.ID = uuid.New() },
		"type":     func(e *domain.Envelope) { e.Type = domain.TypeKeyUpdated },
		"key_id":   func(e *domain.Envelope) { e.KeyID = "other" },
		"time":     func(e *domain.Envelope) { e.Time = e.Time.Add(time.Millisecond) },
		"actor":    func(e *domain.Envelope) { e.Actor = "someone" },
		"ctx":      func(e *domain.Envelope) { e.Context = &domain.RequestContext{SourceIP: "1.2.3.4"} },
		"data":     func(e *domain.Envelope) { e.Data = json.RawMessage(`{"owner":"x"}`) },
		"prevhash": func(e *domain.Envelope) { e.PrevHash = "00" },
	}
	for name, mutate := range mutations {
		e := base
		mutate(&e)
		if e.ComputeHash() == base.Hash {
			t.Errorf("changing %s does not change the hash", name)
		}
	}
}

func TestUnmarshalEnvelopeRejects(t *testing.T) {
	envs, _ := domain.Decide(domain.Key{}, created, t0, ids())
	good, _ := envs[0].Marshal()
	bad := map[string]string{
		"not json":       "{",
		"unknown field":  string(bytes.Replace(good, []byte(`"id"`), []byte(`"extra":1,"id"`), 1)),
		"future version": string(bytes.Replace(good, []byte(`"schema_version":1`), []byte(`"schema_version":9`), 1)),
		"unknown type":   string(bytes.Replace(good, []byte(`"key.created"`), []byte(`"key.exploded"`), 1)),
		"trailing":       string(good) + "{}",
	}
	for name, in := range bad {
		if _, err := domain.UnmarshalEnvelope([]byte(in)); domain.ErrorCode(err) != domain.EINVALID {
			t.Errorf("%s: err = %v, want EINVALID", name, err)
		}
	}
}

func FuzzUnmarshalEnvelope(f *testing.F) {
	envs, _ := domain.Decide(domain.Key{}, created, t0, ids())
	good, _ := envs[0].Marshal()
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := domain.UnmarshalEnvelope(b)
		if err != nil {
			return
		}
		// Whatever decodes must fold without panicking and re-encode.
		_ = domain.Evolve(domain.Key{}, e)
		if _, err := e.Marshal(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestParseAllowedIPs(t *testing.T) {
	ps, err := domain.ParseAllowedIPs([]string{"192.0.2.7", "10.0.0.0/8", "2001:db8::/32", "::ffff:10.1.2.3", " 10.0.0.0/8 "})
	if err != nil {
		t.Fatal(err)
	}
	got := domain.PrefixStrings(ps)
	want := []string{"10.0.0.0/8", "10.1.2.3/32", "192.0.2.7/32", "2001:db8::/32"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if !domain.IPAllowed(ps, netip.MustParseAddr("::ffff:10.9.9.9")) {
		t.Fatal("mapped v4 address not matched")
	}
	if domain.IPAllowed(ps, netip.MustParseAddr("11.0.0.1")) {
		t.Fatal("outside address allowed")
	}
	for _, bad := range []string{"", "10.0.0.0/33", "300.1.1.1", "fe80::1%eth0", "10.0.0.1/8", "abc"} {
		if _, err := domain.ParseAllowedIPs([]string{bad}); domain.ErrorReason(err) != "invalid_cidr" {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
}

func FuzzParseAllowedIPs(f *testing.F) {
	f.Add("10.0.0.0/8")
	f.Add("::1")
	f.Add("::ffff:1.2.3.4/120")
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := domain.ParseAllowedIPs([]string{s})
		if err != nil {
			return
		}
		// Canonical output must parse back to itself.
		again, err := domain.ParseAllowedIPs(domain.PrefixStrings(ps))
		if err != nil || len(again) != len(ps) || again[0] != ps[0] {
			t.Fatalf("%q: canonical form %v does not round trip: %v", s, ps, err)
		}
	})
}

func TestCovers(t *testing.T) {
	granted := []string{"orders.*", "users.read"}
	for p, want := range map[string]bool{
		"orders.read": true, "orders.a.b": true, "orders.*": true, "orders": false,
		"users.read": true, "users.write": false, "users.*": false, "ordersx.read": false,
	} {
		if got := domain.Covers(granted, p); got != want {
			t.Errorf("Covers(%v, %q) = %v, want %v", granted, p, got, want)
		}
	}
	if !domain.Covers([]string{"*"}, "anything.at.all") {
		t.Error("* does not cover")
	}
}
