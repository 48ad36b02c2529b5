package api_test

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// TestAlertStreamDropsASlowReader: a stream whose reader stops reading is
// dropped once its buffer is full, while the node's one subscription goes
// on feeding the others; nothing is buffered for it without bound.
func TestAlertStreamDropsASlowReader(t *testing.T) {
	feed := make(chanAlertFeed)
	h := mustStartWith(t, eventstore.Config{NoSync: true}, eventstore.UsageConfig{}, func(c *api.Config) {
		c.Alerts = feed
		c.AlertStreams = api.AlertStreamLimits{Buffer: 4, WriteTimeout: 200 * time.Millisecond}
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	open := func() *http.Response {
		req, _ := http.NewRequestWithContext(ctx, "GET", h.ts.URL+"/v1/alerts/stream", nil)
		req.Header.Set("Authorization", "Bearer "+h.root)
		res, err := http.DefaultClient.Do(req)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("stream: %v %v", res, err)
		}
		return res
	}
	slow, fast := open(), open()
	defer slow.Body.Close()
	defer fast.Body.Close()
	fastLines := bufio.NewScanner(fast.Body)
	fastLines.Buffer(make([]byte, 64<<10), 1<<20)
	// Large alerts fill the slow reader's connection quickly; the fast
	// reader reads each one as it comes.
	summary := strings.Repeat("x", 32<<10)
	sent, dropped := 0, false
	for !dropped && sent < 10000 {
		env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), "k", domain.AlertRaised{Rule: "key_spraying", Severity: domain.SeverityHigh, Incident: "i", Summary: summary}, time.Now(), "keyledger-alerts", nil)
		if err != nil {
			t.Fatal(err)
		}
		feed <- env
		sent++
		for fastLines.Scan() {
			if strings.HasPrefix(fastLines.Text(), "data: ") {
				break
			}
		}
		if fastLines.Err() != nil {
			t.Fatalf("the fast reader's stream ended after %d alerts: %v", sent, fastLines.Err())
		}
		// The slow stream's place is free again once it is dropped:
		// the principal's cap (4) admits as many new streams as before.
		var extra []*http.Response
		for range 3 {
			req, _ := http.NewRequestWithContext(ctx, "GET", h.ts.URL+"/v1/alerts/stream", nil)
			req.Header.Set("Authorization", "Bearer "+h.root)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			extra = append(extra, res)
		}
		dropped = extra[2].StatusCode == 200
		for _, res := range extra {
			res.Body.Close()
		}
	}
	if !dropped {
		t.Fatalf("the slow reader was still served after %d alerts", sent)
	}
	t.Logf("the slow reader was dropped after %d alerts", sent)
}
