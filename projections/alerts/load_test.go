package alerts_test

import (
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/projections/alerts"
)

func TestLoadConfig(t *testing.T) {
	c, err := alerts.LoadConfig(strings.NewReader(`{"brute_force": {"count": 20, "window": "2m"}, "dormant_after": "720h"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.BruteForce.Count != 20 || c.BruteForce.Window != 2*time.Minute || c.BruteForce.Suppress != 30*time.Minute {
		t.Fatalf("brute force = %+v", c.BruteForce)
	}
	if c.DormantAfter != 720*time.Hour || c.KeySpraying.Count != 5 || c.HistoryTimeout != 3*time.Second {
		t.Fatalf("defaults not kept: %+v", c)
	}
	if c, err := alerts.LoadConfig(strings.NewReader(`{"history_timeout": "500ms"}`)); err != nil || c.HistoryTimeout != 500*time.Millisecond {
		t.Fatalf("history_timeout: %v, %v", c.HistoryTimeout, err)
	}
	for _, bad := range []string{`{"brute_forse": {}}`, `{"dormant_after": "soon"}`, `{"history_timeout": "-1s"}`, `{"brute_force": {"count": -1}}`, `{`} {
		if _, err := alerts.LoadConfig(strings.NewReader(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
