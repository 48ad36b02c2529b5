package domain

import (
	"encoding/json"
	"time"
)

// TypeAlertRaised is the type of every alert event, on the ALERTS stream.
const TypeAlertRaised = "alert.raised"

// Alert severities, lowest first.
const (
	SeverityLow      = "low"
	SeverityMedium   = "medium"
	SeverityHigh     = "high"
	SeverityCritical = "critical"
)

// Severities lists the severities, lowest first.
var Severities = []string{SeverityLow, SeverityMedium, SeverityHigh, SeverityCritical}

// SeverityRank orders severities: 1 for low up to 4 for critical, and 0
// for a severity this version does not know. The rank says nothing about
// what to do with an unknown severity; each caller decides that (the
// engine lets any known severity escalate over it, webhooks deliver it).
func SeverityRank(s string) int {
	switch s {
	case SeverityLow:
		return 1
	case SeverityMedium:
		return 2
	case SeverityHigh:
		return 3
	case SeverityCritical:
		return 4
	}
	return 0
}

// AlertRaised records an anomaly found in the event log. Incident names the
// thing the alert is about (a rule and its subject, such as a source
// address or a key) so that one incident raises one alert, and a later
// alert of the same incident at a higher severity is an escalation.
type AlertRaised struct {
	Rule        string    `json:"rule"`
	Severity    string    `json:"severity"`
	Incident    string    `json:"incident"`
	Summary     string    `json:"summary"`
	KeyIDs      []string  `json:"key_ids,omitempty"`
	SourceIPs   []string  `json:"source_ips,omitempty"`
	WindowStart time.Time `json:"window_start,omitzero"`
	WindowEnd   time.Time `json:"window_end,omitzero"`
	Count       int       `json:"count,omitempty"`
	// Evidence holds the ids of the events that triggered the alert, and
	// Query a /v1/logs query that finds them again.
	Evidence   []string `json:"evidence,omitempty"`
	Query      string   `json:"query,omitempty"`
	Escalation bool     `json:"escalation,omitempty"`
}

// EventType implements Event.
func (AlertRaised) EventType() string { return TypeAlertRaised }

func init() {
	eventFactories[TypeAlertRaised] = func() any { return new(AlertRaised) }
}

// alertSubject returns keyledger.alerts.<rule>.<severity> for an alert
// envelope: alerting pipelines subscribe by rule and severity.
func alertSubject(e Envelope) string {
	var a struct {
		Rule     string `json:"rule"`
		Severity string `json:"severity"`
	}
	_ = json.Unmarshal(e.Data, &a)
	if a.Rule == "" {
		a.Rule = "unknown"
	}
	if a.Severity == "" {
		a.Severity = "unknown"
	}
	return "keyledger.alerts." + a.Rule + "." + a.Severity
}
