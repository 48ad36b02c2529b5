package alerts_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/alerts"
)

const (
	valid   = domain.OutcomeValid
	badSec  = domain.OutcomeInvalidSecret
	revoked = domain.OutcomeRevoked
)

var base = time.Now().UTC().Truncate(time.Millisecond).Add(-2 * time.Hour)

func at(d time.Duration) time.Time { return base.Add(d) }

func TestBruteForce(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, false)
	p.start(alerts.Config{})
	k := key()
	// Ten denials from one address within five minutes: one alert, and the
	// eleventh and twelfth are the same incident.
	for i := range 12 {
		p.use(k, badSec, "203.0.113.1", at(time.Duration(i)*20*time.Second))
	}
	// Near misses: nine from another address; ten from a third spread
	// over more than five minutes.
	for i := range 9 {
		p.use(k, badSec, "203.0.113.2", at(time.Duration(i)*20*time.Second))
	}
	for i := range 10 {
		p.use(k, badSec, "203.0.113.3", at(time.Duration(i)*40*time.Second))
	}
	got := p.alerts()
	expect(t, got, "brute_force/high", "failure_burst/medium")
	for _, a := range got {
		if a.Rule == alerts.RuleBruteForce && (a.SourceIPs[0] != "203.0.113.1" || a.Count != 10 || len(a.Evidence) != 10) {
			t.Fatalf("brute force alert = %+v", a)
		}
	}
}

func TestKeySpraying(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, false)
	p.start(alerts.Config{})
	// Five distinct keys from one address in ten minutes; four from another.
	for i := range 5 {
		p.use(key(), valid, "198.51.100.1", at(time.Duration(i)*time.Minute))
	}
	for i := range 4 {
		p.use(key(), badSec, "198.51.100.2", at(time.Duration(i)*time.Minute))
	}
	// Five keys, but spread over more than ten minutes.
	for i := range 5 {
		p.use(key(), valid, "198.51.100.3", at(time.Duration(i)*3*time.Minute))
	}
	got := p.alerts()
	expect(t, got, "key_spraying/high")
	if a := got[0]; a.SourceIPs[0] != "198.51.100.1" || len(a.KeyIDs) != 5 {
		t.Fatalf("spraying alert = %+v", a)
	}
}

func TestFailureBurstEscalatesOnSuccess(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, false)
	p.start(alerts.Config{})
	k, near := key(), key()
	// Fifteen failures on one key, each from its own address (so no
	// brute force), then a success: medium, then critical.
	for i := range 15 {
		p.use(k, badSec, fmt.Sprintf("10.0.%d.1", i), at(time.Duration(i)*30*time.Second))
	}
	p.use(k, valid, "10.0.99.1", at(8*time.Minute))
	// Fourteen failures and a success on another key: nothing.
	for i := range 14 {
		p.use(near, badSec, fmt.Sprintf("10.1.%d.1", i), at(time.Duration(i)*30*time.Second))
	}
	p.use(near, valid, "10.1.99.1", at(8*time.Minute))
	got := p.alerts()
	expect(t, got, "failure_burst/medium", "failure_burst/critical+esc")
	for _, a := range got {
		if a.KeyIDs[0] != k || a.Incident != alerts.RuleFailureBurst+":"+k {
			t.Fatalf("alert on the wrong key: %+v", a)
		}
	}
}

func TestDeadKeyPresented(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, false)
	p.start(alerts.Config{})
	k, near := key(), key()
	// The first attempt alerts; the same address again does not; a second
	// and third address within the hour escalate.
	p.use(k, revoked, "192.0.2.1", at(0))
	p.use(k, revoked, "192.0.2.1", at(time.Minute))
	p.use(k, revoked, "192.0.2.2", at(2*time.Minute))
	p.use(k, revoked, "192.0.2.3", at(3*time.Minute))
	// Near miss for the escalation: two addresses only.
	p.use(near, domain.OutcomeExpired, "192.0.2.10", at(0))
	p.use(near, domain.OutcomeExpired, "192.0.2.11", at(time.Minute))
	got := p.alerts()
	expect(t, got, "dead_key_presented/medium", "dead_key_presented/medium", "dead_key_presented/high+esc")
}

func TestNewSourceFromClickHouseHistory(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, true)
	k, quiet, fresh := key(), key(), key()
	// History the engine never saw: the key's habits over the past days.
	p.use(k, valid, "198.51.100.7", at(-72*time.Hour))
	p.use(k, valid, "198.51.100.8", at(-30*time.Hour))
	p.use(quiet, valid, "198.51.100.9", at(-48*time.Hour))
	p.settle()
	p.start(alerts.Config{})
	p.use(k, valid, "192.0.2.9", at(0))            // a new /24: alert
	p.use(k, valid, "192.0.2.10", at(time.Minute)) // same new /24: same incident
	p.use(quiet, valid, "198.51.100.200", at(0))   // near miss: a known /24
	// A key with no history finding its first networks is not an anomaly.
	p.use(fresh, valid, "203.0.113.5", at(0))
	p.use(fresh, valid, "203.0.114.5", at(time.Minute))
	got := p.alerts()
	expect(t, got, "new_source/medium")
	if a := got[0]; a.KeyIDs[0] != k || a.SourceIPs[0] != "192.0.2.9" {
		t.Fatalf("new source alert = %+v", a)
	}
}

func TestManyNetworks(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, false)
	p.start(alerts.Config{})
	k, near := key(), key()
	for i := range 5 {
		p.use(k, valid, fmt.Sprintf("100.%d.0.1", 64+i), at(time.Duration(i)*10*time.Minute))
		p.use(near, valid, fmt.Sprintf("100.%d.1.1", 80+i%4), at(time.Duration(i)*10*time.Minute))
	}
	// Five networks, but not within one hour.
	slow := key()
	for i := range 5 {
		p.use(slow, valid, fmt.Sprintf("100.%d.2.1", 90+i), at(time.Duration(i)*20*time.Minute))
	}
	got := p.alerts()
	expect(t, got, "many_networks/high")
	if a := got[0]; a.KeyIDs[0] != k || len(a.SourceIPs) != 5 {
		t.Fatalf("many networks alert = %+v", a)
	}
}

func TestDormantKeyFromClickHouseHistory(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, true)
	k, near := key(), key()
	p.use(k, valid, "198.51.100.1", at(-60*24*time.Hour))
	p.use(near, valid, "198.51.100.2", at(-44*24*time.Hour))
	p.settle()
	p.start(alerts.Config{})
	p.use(k, valid, "198.51.100.1", at(0))
	p.use(near, valid, "198.51.100.2", at(0))
	got := p.alerts()
	expect(t, got, "dormant_key_used/medium")
	if a := got[0]; a.KeyIDs[0] != k {
		t.Fatalf("dormant alert = %+v", a)
	}
}

// keyAt builds a key's state as created at created with a lifetime.
func keyAt(t *testing.T, created time.Time, days int) domain.Key {
	t.Helper()
	id := key()
	envs, err := domain.Decide(domain.Key{}, domain.CreateKey{Meta: domain.Meta{Actor: "t"}, KeyID: id, Owner: "o", Name: "k",
		LifetimeDays: days, SecretHash: domain.HashSecret(domain.Secret{1})}, created, uuid.New)
	if err != nil {
		t.Fatal(err)
	}
	return domain.Evolve(domain.Key{}, envs[0])
}

func TestRemindersAndStuckSink(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, false)
	p.start(alerts.Config{})
	now := time.Now().UTC()
	old := keyAt(t, now.Add(-100*24*time.Hour), 365)    // rotation due
	expiring := keyAt(t, now.Add(-85*24*time.Hour), 90) // expires in 5 days
	nearOld := keyAt(t, now.Add(-89*24*time.Hour), 365) // near miss: 89 days
	nearExp := keyAt(t, now.Add(-80*24*time.Hour), 90)  // near miss: 10 days left
	keys := []domain.Key{old, expiring, nearOld, nearExp}
	ctx := context.Background()
	// A lagging sink alerts only once it has lagged for five minutes.
	if err := p.engine.Tick(ctx, now, keys, 20000); err != nil {
		t.Fatal(err)
	}
	if err := p.engine.Tick(ctx, now.Add(4*time.Minute), keys, 20000); err != nil {
		t.Fatal(err)
	}
	if err := p.engine.Tick(ctx, now.Add(5*time.Minute), keys, 20000); err != nil {
		t.Fatal(err)
	}
	// Catching up resets it: a new lag needs five minutes again.
	if err := p.engine.Tick(ctx, now.Add(6*time.Minute), keys, 0); err != nil {
		t.Fatal(err)
	}
	if err := p.engine.Tick(ctx, now.Add(10*time.Minute), keys, 20000); err != nil {
		t.Fatal(err)
	}
	if err := p.engine.Tick(ctx, now.Add(14*time.Minute), keys, 20000); err != nil {
		t.Fatal(err)
	}
	got := p.alerts()
	expect(t, got, "rotation_due/low", "expiring_soon/low", "audit_sink_stuck/critical")
	for _, a := range got {
		switch a.Rule {
		case alerts.RuleRotationDue:
			if a.KeyIDs[0] != old.ID {
				t.Fatalf("rotation reminder for %v", a.KeyIDs)
			}
		case alerts.RuleExpiringSoon:
			if a.KeyIDs[0] != expiring.ID {
				t.Fatalf("expiry reminder for %v", a.KeyIDs)
			}
		}
	}
}

func TestSequenceGap(t *testing.T) {
	t.Parallel()
	p := newPipeline(t, false)
	p.start(alerts.Config{})
	ctx := context.Background()
	observe := func(stream string, seqs ...uint64) {
		for _, seq := range seqs {
			env, _ := domain.NewEnvelope(uuid.New(), key(), domain.KeyUsed{Code: valid}, at(0), "svc", nil)
			env.Stream, env.Seq = stream, seq
			p.published = append(p.published, env.ID.String())
			if err := p.engine.Observe(ctx, env); err != nil {
				t.Fatal(err)
			}
		}
	}
	observe("GAPPY", 1, 2, 4, 5)
	observe("WHOLE", 1, 2, 3, 4)
	got := p.alerts()
	expect(t, got, "audit_sequence_gap/critical")
	if got[0].Incident != "audit_sequence_gap:GAPPY:3-3" {
		t.Fatalf("gap incident = %s", got[0].Incident)
	}
}
