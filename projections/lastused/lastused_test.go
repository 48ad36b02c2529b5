package lastused_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/lastused"
)

func usage(t *testing.T, keyID string, ev domain.Event, at time.Time, ip string) domain.Envelope {
	t.Helper()
	env, err := domain.NewEnvelope(uuid.New(), keyID, ev, at, "svc", &domain.RequestContext{SourceIP: ip})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestLastUsed(t *testing.T) {
	p := lastused.New()
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	if _, _, ok := p.LastUsed("k"); ok {
		t.Fatal("unused key has a last use")
	}
	p.Apply(usage(t, "k", domain.KeyUsed{Code: domain.OutcomeValid}, t0, "10.0.0.1"))
	p.Apply(usage(t, "k", domain.KeyDenied{Code: domain.OutcomeRevoked}, t0.Add(time.Hour), "10.0.0.9"))
	p.Apply(usage(t, "k", domain.KeyUsed{Code: domain.OutcomeValid}, t0.Add(-time.Hour), "10.0.0.2"))
	at, ip, ok := p.LastUsed("k")
	if !ok || !at.Equal(t0) || ip != "10.0.0.1" {
		t.Fatalf("last used = %v %q %v, want %v 10.0.0.1", at, ip, ok, t0)
	}
	p.Apply(usage(t, "k", domain.KeyUsed{Code: domain.OutcomeValid}, t0.Add(2*time.Hour), "2001:db8::1"))
	if at, ip, _ := p.LastUsed("k"); !at.Equal(t0.Add(2*time.Hour)) || ip != "2001:db8::1" {
		t.Fatalf("last used = %v %q", at, ip)
	}
}

// TestCallerLastUsed: a verification is one event, and it moves its
// caller's last use too, whatever the verified token's outcome.
func TestCallerLastUsed(t *testing.T) {
	p := lastused.New()
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	p.Apply(usage(t, "k", domain.KeyDenied{Code: domain.OutcomeRevoked, CallerKey: "svc-key", CallerIP: "192.0.2.7"}, t0, "10.0.0.1"))
	if _, _, ok := p.LastUsed("k"); ok {
		t.Fatal("a denied key has a last use")
	}
	if at, ip, ok := p.LastUsed("svc-key"); !ok || !at.Equal(t0) || ip != "192.0.2.7" {
		t.Fatalf("caller last used = %v %q %v", at, ip, ok)
	}
	p.Apply(usage(t, "k", domain.KeyUsed{Code: domain.OutcomeValid, CallerKey: "svc-key", CallerIP: "192.0.2.8"}, t0.Add(time.Minute), "10.0.0.1"))
	if at, ip, _ := p.LastUsed("svc-key"); !at.Equal(t0.Add(time.Minute)) || ip != "192.0.2.8" {
		t.Fatalf("caller last used = %v %q", at, ip)
	}
	if at, _, ok := p.LastUsed("k"); !ok || !at.Equal(t0.Add(time.Minute)) {
		t.Fatalf("verified key last used = %v %v", at, ok)
	}
}

// TestSnapshotRestore: a snapshot covers the sequence before the highest
// applied (its pack may be half applied); a restored projection answers
// the same, takes the replayed tail without going back in time, and saves
// nothing new until something new is applied.
func TestSnapshotRestore(t *testing.T) {
	p := lastused.New()
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	if _, _, changed, err := p.Snapshot(); err != nil || changed {
		t.Fatalf("an empty projection has a snapshot to save (%v)", err)
	}
	for i, k := range []string{"a", "b", "a"} {
		env := usage(t, k, domain.KeyUsed{Code: domain.OutcomeValid}, t0.Add(time.Duration(i)*time.Minute), "10.0.0.1")
		env.Seq = uint64(10 + i)
		p.Apply(env)
	}
	seq, data, changed, err := p.Snapshot()
	if err != nil || !changed || seq != 11 {
		t.Fatalf("snapshot at %d (changed %v, %v), want 11", seq, changed, err)
	}
	p.Saved(seq)
	if _, _, changed, _ := p.Snapshot(); changed {
		t.Fatal("nothing applied since the saved snapshot, yet it changed")
	}
	q := lastused.New()
	if err := q.Restore(seq, data); err != nil {
		t.Fatal(err)
	}
	// The replay from seq+1 brings message 12 again, and an older use.
	env := usage(t, "a", domain.KeyUsed{Code: domain.OutcomeValid}, t0.Add(2*time.Minute), "10.0.0.1")
	env.Seq = 12
	q.Apply(env)
	old := usage(t, "b", domain.KeyUsed{Code: domain.OutcomeValid}, t0.Add(-time.Hour), "10.9.9.9")
	old.Seq = 12
	q.Apply(old)
	for _, k := range []string{"a", "b"} {
		at1, ip1, ok1 := p.LastUsed(k)
		at2, ip2, ok2 := q.LastUsed(k)
		if !ok1 || !ok2 || !at1.Equal(at2) || ip1 != ip2 {
			t.Errorf("%s: restored %v %q %v, want %v %q", k, at2, ip2, ok2, at1, ip1)
		}
	}
	if err := q.Restore(1, []byte("not json")); err == nil {
		t.Error("a damaged snapshot restored")
	}
}
