package domain_test

import (
	"math"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
)

func TestBackoff(t *testing.T) {
	const s = time.Second
	for _, c := range []struct {
		attempt   int
		base, max time.Duration
		want      time.Duration
	}{
		{attempt: 0, base: s, max: time.Minute, want: 0},
		{attempt: -3, base: s, max: time.Minute, want: 0},
		{attempt: 1, base: s, max: time.Minute, want: s},
		{attempt: 2, base: s, max: time.Minute, want: 2 * s},
		{attempt: 3, base: s, max: time.Minute, want: 4 * s},
		{attempt: 6, base: s, max: time.Minute, want: 32 * s},
		{attempt: 7, base: s, max: time.Minute, want: time.Minute},
		{attempt: 1000, base: s, max: time.Minute, want: time.Minute},
		{attempt: math.MaxInt, base: s, max: time.Minute, want: time.Minute},
		{attempt: 1, base: 5 * s, max: 2 * s, want: 2 * s},
		{attempt: 4, base: 5 * s, max: 2 * s, want: 2 * s},
		{attempt: 1, base: 0, max: time.Minute, want: 0},
		{attempt: 1, base: -s, max: time.Minute, want: 0},
		{attempt: 1, base: s, max: 0, want: 0},
		{attempt: 70, base: 1, max: math.MaxInt64, want: math.MaxInt64},
		{attempt: 63, base: 1, max: math.MaxInt64, want: 1 << 62},
		{attempt: 64, base: 1, max: math.MaxInt64, want: math.MaxInt64},
	} {
		if got := domain.Backoff(c.attempt, c.base, c.max); got != c.want {
			t.Errorf("Backoff(%d, %s, %s) = %s, want %s", c.attempt, c.base, c.max, got, c.want)
		}
	}
}
