// Package alerts is keyledger's anomaly rule engine. It watches USAGE and
// KEYS as events arrive, keeps in-memory windows for the fast rules, asks
// the ClickHouse log for the rules that need history, and raises every
// alert as an event on the ALERTS stream. A suppression window per incident
// makes one incident raise one alert, not thousands; a later alert of the
// same incident at a higher severity is an escalation.
package alerts

import "time"

// Rule names, as they appear in alert subjects: keyledger.alerts.<rule>.<severity>.
const (
	RuleBruteForce    = "brute_force"
	RuleKeySpraying   = "key_spraying"
	RuleFailureBurst  = "failure_burst"
	RuleDeadKey       = "dead_key_presented"
	RuleNewSource     = "new_source"
	RuleManyNetworks  = "many_networks"
	RuleDormantKey    = "dormant_key_used"
	RuleRotationDue   = "rotation_due"
	RuleExpiringSoon  = "expiring_soon"
	RuleSequenceGap   = "audit_sequence_gap"
	RuleSinkStuck     = "audit_sink_stuck"
	RuleChainBroken   = "audit_chain_broken"
	RuleForgedEvent   = "forged_event"
	defaultSuppressed = time.Hour
)

// Rules lists every rule name.
var Rules = []string{RuleBruteForce, RuleKeySpraying, RuleFailureBurst, RuleDeadKey, RuleNewSource,
	RuleManyNetworks, RuleDormantKey, RuleRotationDue, RuleExpiringSoon, RuleSequenceGap, RuleSinkStuck, RuleChainBroken, RuleForgedEvent}

// Threshold is a count within a window, and how long an incident stays
// suppressed after its alert.
type Threshold struct {
	Count    int
	Window   time.Duration
	Suppress time.Duration
}

// Config holds every rule's thresholds. Zero fields take the defaults.
type Config struct {
	// BruteForce: denials from one source address.
	BruteForce Threshold
	// KeySpraying: distinct keys presented from one source address.
	KeySpraying Threshold
	// FailureBurst: denials on one key; a success within Window after the
	// burst escalates it.
	FailureBurst Threshold
	// DeadKey: a revoked, expired, disabled or deleted key presented. The
	// first attempt alerts; Count distinct source addresses within Window
	// escalate.
	DeadKey Threshold
	// NewSourceLookback: a key used from a network (/24 or /48) it has not
	// used within this long.
	NewSourceLookback time.Duration
	NewSourceSuppress time.Duration
	// ManyNetworks: distinct /24 (or /48) networks using one key.
	ManyNetworks Threshold
	// DormantAfter: a key used again after this long idle.
	DormantAfter time.Duration
	// RotationAge: reminders for keys whose secret is older than this.
	RotationAge time.Duration
	// ExpiringWithin: reminders for keys that expire within this.
	ExpiringWithin time.Duration
	// ReminderSuppress: how often one key's reminder may repeat.
	ReminderSuppress time.Duration
	// SinkStuckLag and SinkStuckFor: the audit sink trailing JetStream by
	// more than SinkStuckLag events for longer than SinkStuckFor.
	SinkStuckLag uint64
	SinkStuckFor time.Duration
	// MaxEvidence caps the event ids carried by one alert.
	MaxEvidence int
	// HistoryTimeout bounds the history questions of one event (3s). A
	// question unanswered in time counts as no evidence: the rule stays
	// quiet.
	HistoryTimeout time.Duration
	// RetryMin and RetryMax bound the back-off (doubling from RetryMin)
	// before an alert ALERTS refused is tried again (1s, 1m), and before
	// the history is asked again after it failed, so that a ClickHouse
	// that times out delays one event per back-off, not every event.
	RetryMin, RetryMax time.Duration
}

func (t Threshold) or(def Threshold) Threshold {
	if t.Count <= 0 {
		t.Count = def.Count
	}
	if t.Window <= 0 {
		t.Window = def.Window
	}
	if t.Suppress <= 0 {
		t.Suppress = def.Suppress
	}
	return t
}

func orDur(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// WithDefaults fills zero fields with the defaults.
func (c Config) WithDefaults() Config {
	c.BruteForce = c.BruteForce.or(Threshold{Count: 10, Window: 5 * time.Minute, Suppress: 30 * time.Minute})
	c.KeySpraying = c.KeySpraying.or(Threshold{Count: 5, Window: 10 * time.Minute, Suppress: 30 * time.Minute})
	c.FailureBurst = c.FailureBurst.or(Threshold{Count: 15, Window: 10 * time.Minute, Suppress: 30 * time.Minute})
	c.DeadKey = c.DeadKey.or(Threshold{Count: 3, Window: time.Hour, Suppress: 24 * time.Hour})
	c.NewSourceLookback = orDur(c.NewSourceLookback, 14*24*time.Hour)
	c.NewSourceSuppress = orDur(c.NewSourceSuppress, 24*time.Hour)
	c.ManyNetworks = c.ManyNetworks.or(Threshold{Count: 5, Window: time.Hour, Suppress: time.Hour})
	c.DormantAfter = orDur(c.DormantAfter, 45*24*time.Hour)
	c.RotationAge = orDur(c.RotationAge, 90*24*time.Hour)
	c.ExpiringWithin = orDur(c.ExpiringWithin, 7*24*time.Hour)
	c.ReminderSuppress = orDur(c.ReminderSuppress, 7*24*time.Hour)
	if c.SinkStuckLag == 0 {
		c.SinkStuckLag = 10000
	}
	c.SinkStuckFor = orDur(c.SinkStuckFor, 5*time.Minute)
	if c.MaxEvidence <= 0 {
		c.MaxEvidence = 50
	}
	c.HistoryTimeout = orDur(c.HistoryTimeout, 3*time.Second)
	c.RetryMin = orDur(c.RetryMin, time.Second)
	c.RetryMax = max(orDur(c.RetryMax, time.Minute), c.RetryMin)
	return c
}
