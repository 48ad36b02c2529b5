package domain

import "time"

// Backoff is the wait after failed attempt number attempt (1 is the first)
// of a retried operation: base after the first failure, doubling with each
// further one, never more than max. It is 0 before any failure (attempt <
// 1) or when base is not positive, and max (or 0) when max is below base.
// It is pure: callers that want jitter add their own.
func Backoff(attempt int, base, max time.Duration) time.Duration {
	switch {
	case attempt < 1 || base <= 0 || max <= 0:
		return 0
	case max < base:
		return max
	}
	d := base
	for i := 1; i < attempt && d < max; i++ {
		if d > max/2 { // doubling would pass max (or overflow)
			return max
		}
		d *= 2
	}
	return d
}
