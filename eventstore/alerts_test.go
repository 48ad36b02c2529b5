package eventstore_test

import (
	"testing"

	"github.com/keyledger/keyledger/domain"
)

func TestPublishAlert(t *testing.T) {
	s := MustOpenStore(t)
	alert := envelope(t, "", domain.AlertRaised{
		Rule: "brute_force", Severity: domain.SeverityHigh, Incident: "ip:10.0.0.1", Summary: "20 denials in 1m",
	})
	seq, err := s.PublishAlert(testCtx(t), alert)
	if err != nil {
		t.Fatal(err)
	}
	// Two nodes raising the same alert store it once.
	again, err := s.PublishAlert(testCtx(t), alert)
	if err != nil || again != seq {
		t.Fatalf("second publish: seq %d, %v; want %d", again, err, seq)
	}
	if got := mustCount(t, s, domain.StreamAlerts); got != 1 {
		t.Errorf("alerts stream holds %d, want 1", got)
	}
	if m := rawMsg(t, s, domain.StreamAlerts, seq); m.Subject != "keyledger.alerts.brute_force.high" {
		t.Errorf("stored under %s", m.Subject)
	}
	col := newCollector()
	sub, err := s.Subscribe(testCtx(t), domain.StreamAlerts, 0, col.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	if got := col.next(t, 1)[0]; got.ID != alert.ID || got.Seq != seq {
		t.Errorf("delivered %s at %d", got.ID, got.Seq)
	}
	if _, err := s.PublishAlert(testCtx(t), used(t, newKeyID())); domain.ErrorCode(err) != domain.EINVALID {
		t.Errorf("publish of a usage event as alert: %v, want %s", err, domain.EINVALID)
	}
}
