package alerts

import (
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// fileThreshold is a Threshold as written in a rules file.
type fileThreshold struct {
	Count    int    `json:"count"`
	Window   string `json:"window"`
	Suppress string `json:"suppress"`
}

// fileConfig is the rules file: every field optional, durations in Go
// syntax ("5m", "336h").
type fileConfig struct {
	BruteForce        *fileThreshold `json:"brute_force"`
	KeySpraying       *fileThreshold `json:"key_spraying"`
	FailureBurst      *fileThreshold `json:"failure_burst"`
	DeadKey           *fileThreshold `json:"dead_key_presented"`
	ManyNetworks      *fileThreshold `json:"many_networks"`
	NewSourceLookback string         `json:"new_source_lookback"`
	NewSourceSuppress string         `json:"new_source_suppress"`
	DormantAfter      string         `json:"dormant_after"`
	RotationAge       string         `json:"rotation_age"`
	ExpiringWithin    string         `json:"expiring_within"`
	ReminderSuppress  string         `json:"reminder_suppress"`
	SinkStuckLag      uint64         `json:"sink_stuck_lag"`
	SinkStuckFor      string         `json:"sink_stuck_for"`
	MaxEvidence       int            `json:"max_evidence"`
	HistoryTimeout    string         `json:"history_timeout"`
}

// LoadConfig reads rule thresholds from JSON, for example
//
//	{"brute_force": {"count": 20, "window": "5m", "suppress": "1h"}, "dormant_after": "1080h"}
//
// Unknown fields are errors, so a misspelt rule is not silently ignored.
func LoadConfig(r io.Reader) (Config, error) {
	var f fileConfig
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return Config{}, fmt.Errorf("alert rules: %w", err)
	}
	var c Config
	var err error
	dur := func(name, s string) time.Duration {
		if s == "" || err != nil {
			return 0
		}
		d, perr := time.ParseDuration(s)
		if perr != nil || d < 0 {
			err = fmt.Errorf("alert rules: %s: %q is not a duration", name, s)
		}
		return d
	}
	th := func(name string, t *fileThreshold) Threshold {
		if t == nil {
			return Threshold{}
		}
		if t.Count < 0 && err == nil {
			err = fmt.Errorf("alert rules: %s: count must not be negative", name)
		}
		return Threshold{Count: t.Count, Window: dur(name+".window", t.Window), Suppress: dur(name+".suppress", t.Suppress)}
	}
	c.BruteForce = th("brute_force", f.BruteForce)
	c.KeySpraying = th("key_spraying", f.KeySpraying)
	c.FailureBurst = th("failure_burst", f.FailureBurst)
	c.DeadKey = th("dead_key_presented", f.DeadKey)
	c.ManyNetworks = th("many_networks", f.ManyNetworks)
	c.NewSourceLookback = dur("new_source_lookback", f.NewSourceLookback)
	c.NewSourceSuppress = dur("new_source_suppress", f.NewSourceSuppress)
	c.DormantAfter = dur("dormant_after", f.DormantAfter)
	c.RotationAge = dur("rotation_age", f.RotationAge)
	c.ExpiringWithin = dur("expiring_within", f.ExpiringWithin)
	c.ReminderSuppress = dur("reminder_suppress", f.ReminderSuppress)
	c.SinkStuckLag = f.SinkStuckLag
	c.SinkStuckFor = dur("sink_stuck_for", f.SinkStuckFor)
	c.MaxEvidence = f.MaxEvidence
	c.HistoryTimeout = dur("history_timeout", f.HistoryTimeout)
	if err != nil {
		return Config{}, err
	}
	return c.WithDefaults(), nil
}
