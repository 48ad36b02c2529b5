package alerts_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/alerts"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// Every test here replays a synthetic traffic pattern through the real
// pipeline (see rig) and asserts the exact alerts that reach ALERTS; each
// has a near miss just under the rule's threshold that must raise none.
// "None" is proved, not waited for: settle publishes a sentinel whose alert
// comes after any alert of the pattern.

func TestBruteForce(t *testing.T) {
	t.Parallel()
	t.Run("ten denials from one address within five minutes", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		ip, k := "203.0.113.10", newKey()
		var ids []string
		// Twelve wrong secrets, one every 30s: the tenth alerts, the two
		// after it are the same incident.
		for i := range 12 {
			ids = append(ids, r.use(k, badSecret, ip, at(time.Duration(i)*30*time.Second)))
		}
		expect(t, r.settle(), want{
			rule: alerts.RuleBruteForce, severity: domain.SeverityHigh, incident: "brute_force:" + ip,
			ips: []string{ip}, evidence: ids[:10], count: 10,
			at: at(270 * time.Second), from: at(0), to: at(270 * time.Second),
		})
	})
	t.Run("near miss", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		// Nine denials within four minutes.
		k := newKey()
		for i := range 9 {
			r.use(k, badSecret, "203.0.113.20", at(time.Duration(i)*30*time.Second))
		}
		// Ten denials, the last 5m1s after the first.
		k = newKey()
		for i := range 9 {
			r.use(k, badSecret, "203.0.113.21", at(time.Duration(i)*30*time.Second))
		}
		r.use(k, badSecret, "203.0.113.21", at(5*time.Minute+time.Second))
		expect(t, r.settle())
	})
}

func TestKeySpraying(t *testing.T) {
	t.Parallel()
	t.Run("five distinct keys from one address within ten minutes", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		ip := "198.51.100.30"
		// One key in steady use (30 times in two minutes), then unknown
		// keys and keys that work alike: an address trying many keys is
		// spraying whether or not some of them work. The alert cites each
		// key's latest presentation.
		busy := newKey()
		var last string
		for i := range 30 {
			last = r.use(busy, valid, ip, at(time.Duration(i)*4*time.Second))
		}
		keys, ids := []string{busy}, []string{last}
		for i, code := range []string{notFound, valid, notFound, notFound} {
			k := newKey()
			keys = append(keys, k)
			ids = append(ids, r.use(k, code, ip, at(time.Duration(i+1)*2*time.Minute)))
		}
		// A sixth key within the suppression window: the same incident.
		r.use(newKey(), notFound, ip, at(9*time.Minute))
		expect(t, r.settle(), want{
			rule: alerts.RuleKeySpraying, severity: domain.SeverityHigh, incident: "key_spraying:" + ip,
			keys: keys, ips: []string{ip}, evidence: ids, count: 5,
			at: at(8 * time.Minute), from: at(116 * time.Second), to: at(8 * time.Minute),
		})
	})
	t.Run("near miss", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		// Four keys, each presented twice, within nine minutes.
		keys := []string{newKey(), newKey(), newKey(), newKey()}
		for i := range 8 {
			r.use(keys[i%4], valid, "198.51.100.31", at(time.Duration(i)*time.Minute))
		}
		// Five keys, the fifth 10m1s after the first.
		for i := range 4 {
			r.use(newKey(), notFound, "198.51.100.32", at(time.Duration(i)*time.Minute))
		}
		r.use(newKey(), notFound, "198.51.100.32", at(10*time.Minute+time.Second))
		expect(t, r.settle())
	})
}

func TestFailureBurst(t *testing.T) {
	t.Parallel()
	codes := []string{badSecret, notAllowed, noPerm}
	// burst publishes n failures on k, one every gap, each from its own
	// address (so that no address is a brute force), and returns their
	// ids and addresses.
	burst := func(r *rig, k string, n int, gap time.Duration, net int) (ids, ips []string) {
		for i := range n {
			ip := fmt.Sprintf("10.%d.%d.1", net, i)
			ips = append(ips, ip)
			ids = append(ids, r.use(k, codes[i%3], ip, at(time.Duration(i)*gap)))
		}
		return ids, ips
	}
	t.Run("fifteen failures within ten minutes, escalated by a success", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		k := newKey()
		ids, ips := burst(r, k, 15, 40*time.Second, 1) // the last at 9m20s
		// The guess worked: a success from the last failing address.
		ok := r.use(k, valid, ips[14], at(15*time.Minute))
		expect(t, r.settle(), want{
			rule: alerts.RuleFailureBurst, severity: domain.SeverityMedium, incident: "failure_burst:" + k,
			keys: []string{k}, ips: ips, evidence: ids, count: 15,
			at: at(560 * time.Second), from: at(0), to: at(560 * time.Second),
		}, want{
			rule: alerts.RuleFailureBurst, severity: domain.SeverityCritical, incident: "failure_burst:" + k,
			keys: []string{k}, ips: ips, evidence: append(slices.Clone(ids), ok), count: 16, escalation: true,
			at: at(15 * time.Minute), from: at(0), to: at(15 * time.Minute),
		})
	})
	t.Run("a success more than ten minutes after the burst is no escalation", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		k := newKey()
		ids, ips := burst(r, k, 15, 40*time.Second, 2)
		r.use(k, valid, "10.2.99.1", at(560*time.Second+10*time.Minute+time.Second))
		expect(t, r.settle(), want{
			rule: alerts.RuleFailureBurst, severity: domain.SeverityMedium, incident: "failure_burst:" + k,
			keys: []string{k}, ips: ips, evidence: ids, count: 15,
			at: at(560 * time.Second), from: at(0), to: at(560 * time.Second),
		})
	})
	t.Run("near miss", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		// Fourteen failures, then a success.
		k := newKey()
		burst(r, k, 14, 40*time.Second, 3)
		r.use(k, valid, "10.3.99.1", at(10*time.Minute))
		// Fifteen failures over 10m2s, then a success.
		k = newKey()
		burst(r, k, 15, 43*time.Second, 4)
		r.use(k, valid, "10.4.99.1", at(11*time.Minute))
		expect(t, r.settle())
	})
}

func TestDeadKeyPresented(t *testing.T) {
	t.Parallel()
	t.Run("first attempt, then escalation from three addresses within an hour", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		k := newKey()
		e1 := r.use(k, revoked, "192.0.2.1", at(0))             // first attempt: medium
		e2 := r.use(k, revoked, "192.0.2.1", at(time.Minute))   // same address: same incident
		e3 := r.use(k, revoked, "192.0.2.2", at(2*time.Minute)) // two addresses: still medium
		e4 := r.use(k, revoked, "192.0.2.3", at(3*time.Minute)) // three: high, an escalation
		r.use(k, revoked, "192.0.2.4", at(4*time.Minute))       // already high
		// A disabled and an expired key alert on their first attempt too
		// (a deleted key answers REVOKED).
		d, x := newKey(), newKey()
		ed := r.use(d, disabled, "192.0.2.5", at(5*time.Minute))
		ex := r.use(x, expired, "192.0.2.6", at(6*time.Minute))
		expect(t, r.settle(), want{
			rule: alerts.RuleDeadKey, severity: domain.SeverityMedium, incident: "dead_key_presented:" + k,
			keys: []string{k}, ips: []string{"192.0.2.1"}, evidence: []string{e1}, count: 1,
			at: at(0), from: at(0), to: at(0),
		}, want{
			rule: alerts.RuleDeadKey, severity: domain.SeverityHigh, incident: "dead_key_presented:" + k,
			keys: []string{k}, ips: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"}, evidence: []string{e1, e2, e3, e4},
			count: 4, escalation: true, at: at(3 * time.Minute), from: at(0), to: at(3 * time.Minute),
		}, want{
			rule: alerts.RuleDeadKey, severity: domain.SeverityMedium, incident: "dead_key_presented:" + d,
			keys: []string{d}, ips: []string{"192.0.2.5"}, evidence: []string{ed}, count: 1,
			at: at(5 * time.Minute), from: at(5 * time.Minute), to: at(5 * time.Minute),
		}, want{
			rule: alerts.RuleDeadKey, severity: domain.SeverityMedium, incident: "dead_key_presented:" + x,
			keys: []string{x}, ips: []string{"192.0.2.6"}, evidence: []string{ex}, count: 1,
			at: at(6 * time.Minute), from: at(6 * time.Minute), to: at(6 * time.Minute),
		})
	})
	t.Run("near miss: live and unknown keys", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		// Wrong secrets for a live key and an unknown key, from three
		// addresses each: failures, not a dead key.
		live, unknown := newKey(), newKey()
		for i := range 3 {
			r.use(live, badSecret, fmt.Sprintf("192.0.2.%d", 10+i), at(time.Duration(i)*time.Minute))
			r.use(unknown, notFound, fmt.Sprintf("192.0.2.%d", 20+i), at(time.Duration(i)*time.Minute))
		}
		expect(t, r.settle())
	})
	t.Run("near miss: the third address comes after the hour", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		k := newKey()
		e1 := r.use(k, expired, "192.0.2.30", at(0))
		r.use(k, expired, "192.0.2.31", at(30*time.Minute))
		r.use(k, expired, "192.0.2.32", at(time.Hour+time.Second))
		// Only the first attempt's alert: no escalation.
		expect(t, r.settle(), want{
			rule: alerts.RuleDeadKey, severity: domain.SeverityMedium, incident: "dead_key_presented:" + k,
			keys: []string{k}, ips: []string{"192.0.2.30"}, evidence: []string{e1}, count: 1,
			at: at(0), from: at(0), to: at(0),
		})
	})
}

func TestNewSource(t *testing.T) {
	t.Parallel()
	addr := chlogtest.MustConnect(t)
	t.Run("a network unused for fourteen days, known only to the log", func(t *testing.T) {
		t.Parallel()
		r := newHistoryRig(t, addr)
		k := newKey()
		// History the engine never sees: the key's habits over the past
		// weeks. 203.0.113.0/24 was last used fifteen days ago.
		r.use(k, valid, "203.0.113.7", at(-15*day))
		r.use(k, valid, "198.51.100.7", at(-30*time.Hour))
		r.waitHistory()
		r.start(alerts.Config{})
		trigger := r.use(k, valid, "203.0.113.8", at(0))
		r.use(k, valid, "203.0.113.9", at(time.Minute))    // the same new network
		r.use(k, valid, "198.51.100.8", at(2*time.Minute)) // a known network
		got := r.settle()
		expect(t, got, want{
			rule: alerts.RuleNewSource, severity: domain.SeverityMedium, incident: "new_source:" + k + "|203.0.113.0/24",
			keys: []string{k}, ips: []string{"203.0.113.8"}, evidence: []string{trigger},
			at: at(0), from: at(-14 * day), to: at(0),
		})
		r.checkQuery(got[0].alert)
		r.checkLogged(got[0])
	})
	t.Run("near miss", func(t *testing.T) {
		t.Parallel()
		r := newHistoryRig(t, addr)
		// A network last used 13d23h ago is still known.
		known := newKey()
		r.use(known, valid, "203.0.113.17", at(-14*day+time.Hour))
		r.use(known, valid, "198.51.100.17", at(-30*time.Hour))
		// A key first used 23h ago has no habits yet.
		young := newKey()
		r.use(young, valid, "198.51.100.18", at(-23*time.Hour))
		r.waitHistory()
		r.start(alerts.Config{})
		r.use(known, valid, "203.0.113.18", at(0))
		r.use(young, valid, "203.0.113.19", at(0))
		// Nor has a key the log has never seen.
		r.use(newKey(), valid, "203.0.113.20", at(0))
		expect(t, r.settle())
	})
}

func TestManyNetworks(t *testing.T) {
	t.Parallel()
	t.Run("five networks within an hour", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		k := newKey()
		// The key's home network, in steady use from two addresses (30
		// uses in five minutes), then four more networks. The alert cites
		// each network's latest use, and its address.
		var id, ip string
		for i := range 30 {
			ip = fmt.Sprintf("100.64.0.%d", 10+i%2)
			id = r.use(k, valid, ip, at(time.Duration(i)*10*time.Second))
		}
		ids, ips := []string{id}, []string{ip}
		for i := 1; i < 5; i++ {
			ip := fmt.Sprintf("100.64.%d.10", i)
			ips, ids = append(ips, ip), append(ids, r.use(k, valid, ip, at(time.Duration(i)*14*time.Minute)))
		}
		r.use(k, valid, "100.64.5.10", at(58*time.Minute)) // a sixth: the same incident
		expect(t, r.settle(), want{
			rule: alerts.RuleManyNetworks, severity: domain.SeverityHigh, incident: "many_networks:" + k,
			keys: []string{k}, ips: ips, evidence: ids, count: 5,
			at: at(56 * time.Minute), from: at(290 * time.Second), to: at(56 * time.Minute),
		})
	})
	t.Run("near miss", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		// Four networks, two addresses each, within an hour.
		k := newKey()
		for i := range 8 {
			r.use(k, valid, fmt.Sprintf("100.65.%d.%d", i%4, 10+i), at(time.Duration(i)*7*time.Minute))
		}
		// Five networks, the fifth an hour and a second after the first.
		k = newKey()
		for i := range 4 {
			r.use(k, valid, fmt.Sprintf("100.66.%d.10", i), at(time.Duration(i)*14*time.Minute))
		}
		r.use(k, valid, "100.66.4.10", at(time.Hour+time.Second))
		expect(t, r.settle())
	})
}

func TestDormantKeyUsed(t *testing.T) {
	t.Parallel()
	addr := chlogtest.MustConnect(t)
	t.Run("used again after forty-five days, known only to the log", func(t *testing.T) {
		t.Parallel()
		r := newHistoryRig(t, addr)
		k := newKey()
		r.use(k, valid, "198.51.100.40", at(-45*day))
		r.waitHistory()
		r.start(alerts.Config{})
		trigger := r.use(k, valid, "198.51.100.40", at(0))
		r.use(k, valid, "198.51.100.40", at(time.Minute)) // no longer dormant
		got := r.settle()
		expect(t, got, want{
			rule: alerts.RuleDormantKey, severity: domain.SeverityMedium, incident: "dormant_key_used:" + k,
			keys: []string{k}, ips: []string{"198.51.100.40"}, evidence: []string{trigger},
			at: at(0), from: at(-45 * day), to: at(0),
		})
		r.checkQuery(got[0].alert)
	})
	t.Run("near miss", func(t *testing.T) {
		t.Parallel()
		r := newHistoryRig(t, addr)
		k := newKey()
		r.use(k, valid, "198.51.100.41", at(-45*day+time.Minute))
		r.waitHistory()
		r.start(alerts.Config{})
		r.use(k, valid, "198.51.100.41", at(0))
		r.use(newKey(), valid, "198.51.100.42", at(0)) // no history at all: new, not dormant
		expect(t, r.settle())
	})
}

// tick runs the engine's periodic rules.
func tick(t *testing.T, r *rig, now time.Time, keys []domain.Key, lag uint64) {
	t.Helper()
	if err := r.engine.Tick(context.Background(), now, keys, lag); err != nil {
		t.Fatal(err)
	}
}

func TestRotationDue(t *testing.T) {
	t.Parallel()
	now := t0
	t.Run("the same secret for ninety days", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		created := keyCreated(t, now.Add(-90*day), 365)
		// Rotated 91 days ago: the age counts from the rotation.
		rotated := keyCreated(t, now.Add(-200*day), 365)
		rotated = apply(t, rotated, domain.RegenerateKey{Meta: domain.Meta{Actor: "alice"}, Rotate: true,
			SecretHash: domain.HashSecret(domain.Secret{2})}, now.Add(-91*day))
		// Regenerated without a new secret: a longer life, the same secret.
		extended := keyCreated(t, now.Add(-95*day), 90)
		extended = apply(t, extended, domain.RegenerateKey{Meta: domain.Meta{Actor: "alice"}}, now.Add(-85*day))
		keys := []domain.Key{created, rotated, extended}
		tick(t, r, now, keys, 0)
		tick(t, r, now.Add(day), keys, 0) // within a week: no repeat
		var wants []want
		for _, k := range keys {
			wants = append(wants, want{
				rule: alerts.RuleRotationDue, severity: domain.SeverityLow, incident: "rotation_due:" + k.ID,
				keys: []string{k.ID}, at: now, from: k.SecretSetAt, to: now,
			})
		}
		expect(t, r.settle(), wants...)
	})
	t.Run("near miss", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		young := keyCreated(t, now.Add(-90*day+time.Minute), 365)
		rotated := keyCreated(t, now.Add(-200*day), 365)
		rotated = apply(t, rotated, domain.RegenerateKey{Meta: domain.Meta{Actor: "alice"}, Rotate: true,
			SecretHash: domain.HashSecret(domain.Secret{2})}, now.Add(-89*day))
		// Old secrets on keys that no longer work need no reminder.
		gone := keyCreated(t, now.Add(-100*day), 365)
		gone = apply(t, gone, domain.RevokeKey{Meta: domain.Meta{Actor: "alice"}, Reason: "leaked"}, now.Add(-day))
		off := keyCreated(t, now.Add(-100*day), 365)
		off = apply(t, off, domain.DisableKey{Meta: domain.Meta{Actor: "alice"}}, now.Add(-day))
		lapsed := keyCreated(t, now.Add(-100*day), 30)
		tick(t, r, now, []domain.Key{young, rotated, gone, off, lapsed}, 0)
		expect(t, r.settle())
	})
}

func TestExpiringSoon(t *testing.T) {
	t.Parallel()
	now := t0
	t.Run("expires within seven days", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		k := keyCreated(t, now.Add(-83*day), 90) // expires in exactly seven days
		tick(t, r, now, []domain.Key{k}, 0)
		tick(t, r, now.Add(time.Hour), []domain.Key{k}, 0) // the same expiry: no repeat
		// Regenerated: a new expiry, far away.
		k2 := apply(t, k, domain.RegenerateKey{Meta: domain.Meta{Actor: "alice"}}, now.Add(2*time.Hour))
		tick(t, r, now.Add(3*time.Hour), []domain.Key{k2}, 0)
		expect(t, r.settle(), want{
			rule: alerts.RuleExpiringSoon, severity: domain.SeverityLow,
			incident: "expiring_soon:" + k.ID + ":" + k.ExpiresAt.Format(time.RFC3339),
			keys:     []string{k.ID}, at: now, from: now, to: now.Add(7 * day),
		})
	})
	t.Run("near miss", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		later := keyCreated(t, now.Add(-83*day+time.Minute), 90) // seven days and a minute
		gone := keyCreated(t, now.Add(-87*day), 90)
		gone = apply(t, gone, domain.RevokeKey{Meta: domain.Meta{Actor: "alice"}, Reason: "done"}, now.Add(-day))
		lapsed := keyCreated(t, now.Add(-91*day), 90)
		tick(t, r, now, []domain.Key{later, gone, lapsed}, 0)
		expect(t, r.settle())
	})
}

func TestAuditSinkStuck(t *testing.T) {
	t.Parallel()
	now := t0
	t.Run("more than 10000 events behind for five minutes", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		tick(t, r, now, nil, 10001)
		tick(t, r, now.Add(4*time.Minute), nil, 12000)
		tick(t, r, now.Add(5*time.Minute), nil, 15000)  // alerts
		tick(t, r, now.Add(10*time.Minute), nil, 50000) // suppressed for an hour
		expect(t, r.settle(), want{
			rule: alerts.RuleSinkStuck, severity: domain.SeverityCritical, incident: "audit_sink_stuck",
			count: 15000, at: now.Add(5 * time.Minute), from: now, to: now.Add(5 * time.Minute),
		})
	})
	t.Run("near miss", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		// Exactly at the limit for ten minutes.
		for m := range 11 {
			tick(t, r, now.Add(time.Duration(m)*time.Minute), nil, 10000)
		}
		// Over it for 4m59s, caught up, and over it again for 4m59s.
		tick(t, r, now.Add(11*time.Minute), nil, 20000)
		tick(t, r, now.Add(15*time.Minute+59*time.Second), nil, 20000)
		tick(t, r, now.Add(16*time.Minute), nil, 0)
		tick(t, r, now.Add(16*time.Minute+time.Second), nil, 20000)
		tick(t, r, now.Add(21*time.Minute), nil, 20000)
		expect(t, r.settle())
	})
}

func TestAuditSequenceGap(t *testing.T) {
	t.Parallel()
	// publish stores eight uses of distinct keys from distinct addresses
	// (nothing any other rule counts) and returns their ids by sequence.
	publish := func(r *rig) map[uint64]string {
		ids := map[uint64]string{}
		for i := range 8 {
			ids[uint64(i+1)] = r.use(newKey(), valid, fmt.Sprintf("198.51.100.%d", 60+i), at(time.Duration(i)*time.Second))
		}
		return ids
	}
	t.Run("events lost on the way to the engine", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		// USAGE sequences 3, 5 and 6 never reach the engine.
		r.startDropping(alerts.Config{}, func(seq uint64) bool { return seq == 3 || seq == 5 || seq == 6 })
		ids := publish(r)
		expect(t, r.settle(), want{
			rule: alerts.RuleSequenceGap, severity: domain.SeverityCritical, incident: "audit_sequence_gap:USAGE:3-3",
			evidence: []string{ids[4]}, at: at(3 * time.Second),
		}, want{
			rule: alerts.RuleSequenceGap, severity: domain.SeverityCritical, incident: "audit_sequence_gap:USAGE:5-6",
			evidence: []string{ids[7]}, at: at(6 * time.Second),
		})
	})
	t.Run("near miss", func(t *testing.T) {
		t.Parallel()
		r := newRig(t)
		r.start(alerts.Config{})
		publish(r)
		expect(t, r.settle())
	})
}

func TestAuditChainBroken(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	r.start(alerts.Config{})
	id := r.use(newKey(), valid, "198.51.100.70", at(0))
	for range 2 { // the verifier finding it again is the same incident
		if err := r.engine.ChainBroken(context.Background(), at(time.Minute), id, "hash mismatch"); err != nil {
			t.Fatal(err)
		}
	}
	expect(t, r.settle(), want{
		rule: alerts.RuleChainBroken, severity: domain.SeverityCritical, incident: "audit_chain_broken:" + id,
		evidence: []string{id}, at: at(time.Minute),
	})
}

// checkQuery runs an alert's log query against the ClickHouse log and
// checks that it finds the alert's evidence again.
func (r *rig) checkQuery(a domain.AlertRaised) {
	r.t.Helper()
	u, err := url.Parse(a.Query)
	if err != nil {
		r.t.Fatal(err)
	}
	v := u.Query()
	q := chlog.Query{KeyIDs: v["key_id"], Actions: v["action"]}
	if q.From, err = time.Parse(time.RFC3339Nano, v.Get("from")); err != nil {
		r.t.Fatalf("query %s: %v", a.Query, err)
	}
	if q.To, err = time.Parse(time.RFC3339Nano, v.Get("to")); err != nil {
		r.t.Fatalf("query %s: %v", a.Query, err)
	}
	checkFor(r.t, 20*time.Second, 20*time.Millisecond, func() error {
		var found []string
		if _, err := r.ch.Search(context.Background(), q, func(row chlog.Row) error {
			found = append(found, row.EventID)
			return nil
		}); err != nil {
			return err
		}
		for _, id := range a.Evidence {
			if !slices.Contains(found, id) {
				return fmt.Errorf("query %s finds %v, not evidence %s", a.Query, found, id)
			}
		}
		return nil
	})
}

// checkLogged waits until the alert itself is in the ClickHouse log.
func (r *rig) checkLogged(s seen) {
	r.t.Helper()
	checkFor(r.t, 20*time.Second, 20*time.Millisecond, func() error {
		row, err := r.ch.Event(context.Background(), s.env.ID.String())
		if err != nil {
			return err
		}
		if row.Name != s.alert.Rule || row.Outcome != s.alert.Severity {
			return fmt.Errorf("logged alert %s/%s, want %s/%s", row.Name, row.Outcome, s.alert.Rule, s.alert.Severity)
		}
		return nil
	})
}
