package api

import (
	"net/url"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// FuzzParseLogQuery feeds arbitrary query strings to the log and alert
// query parsers: they either refuse with EINVALID or produce a query whose
// every value came through validation (bound as a parameter later).
func FuzzParseLogQuery(f *testing.F) {
	f.Add("key_id=01a21a52-3c6c-751b-9f8c-81c09ab34616&action=denied&ip=10.0.0.0/8&from=2026-01-02T03:04:05Z&limit=5")
	f.Add("q=%27%20OR%201%3D1&cursor=AQAAAAAAAAAAYWJj&format=csv")
	f.Add("outcome=REVOKED,VALID&rule=brute_force&min_severity=high")
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, format, err := parseLogQuery(v, time.Time{})
		if err != nil {
			if domain.ErrorCode(err) != domain.EINVALID {
				t.Fatalf("%q: error class %v", raw, err)
			}
		} else {
			if format != "json" && format != "ndjson" && format != "csv" {
				t.Fatalf("%q: format %q", raw, format)
			}
			if q.Limit < 0 || q.Limit > maxLogPage {
				t.Fatalf("%q: limit %d", raw, q.Limit)
			}
			for _, a := range q.Actions {
				if !contains(knownActions, a) {
					t.Fatalf("%q: action %q passed", raw, a)
				}
			}
		}
		if _, err := parseAlertQuery(v); err != nil && domain.ErrorCode(err) != domain.EINVALID {
			t.Fatalf("%q: alert query error class %v", raw, err)
		}
	})
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
