package main

import (
	"encoding/json"
	"testing"

	"github.com/keyledger/keyledger/domain"
)

// TestUsageCode: the metered publisher reads the outcome code of the
// events it stores without decoding them, and decodes what it cannot read
// that way.
func TestUsageCode(t *testing.T) {
	for _, ev := range []domain.Event{
		domain.KeyUsed{Code: domain.OutcomeValid, CallerKey: "k"},
		domain.KeyDenied{Code: domain.OutcomeRevoked},
	} {
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		var want struct {
			Code string `json:"code"`
		}
		_ = json.Unmarshal(b, &want)
		if got := usageCode(b); got != want.Code || got == "" {
			t.Errorf("usageCode(%s) = %q, want %q", b, got, want.Code)
		}
	}
	for data, want := range map[string]string{
		`{"owner":"o","code":"VALID"}`: "VALID",
		`{"code":"A\"B"}`:              `A"B`,
		`{"code":"\u0041"}`:            "A",
		`not json`:                     "",
	} {
		if got := usageCode([]byte(data)); got != want {
			t.Errorf("usageCode(%s) = %q, want %q", data, got, want)
		}
	}
}
