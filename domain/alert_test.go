package domain_test

import (
	"testing"

	"github.com/keyledger/keyledger/domain"
)

func TestSeverityRank(t *testing.T) {
	// Severities is lowest first; the ranks follow it from 1.
	for i, s := range domain.Severities {
		if got, want := domain.SeverityRank(s), i+1; got != want {
			t.Errorf("SeverityRank(%q) = %d, want %d", s, got, want)
		}
	}
	for _, s := range []string{"", "unknown", "Critical", "info"} {
		if got := domain.SeverityRank(s); got != 0 {
			t.Errorf("SeverityRank(%q) = %d, want 0", s, got)
		}
	}
}
