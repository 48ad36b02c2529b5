package domain_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// TestVerdict checks the one verdict every reader applies to a stored
// message: provenance, the types its stream may hold, and a service
// writer's own usage only.
func TestVerdict(t *testing.T) {
	_, node, _ := ed25519.GenerateKey(rand.Reader)
	_, svc, _ := ed25519.GenerateKey(rand.Reader)
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	id := func(k ed25519.PrivateKey) string { return domain.WriterID(k.Public().(ed25519.PublicKey)) }
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w := domain.Writers{
		Writers:             []domain.Writer{{ID: id(node)}, {ID: id(svc), Service: "billing"}},
		UnsignedUsageBefore: start,
	}
	const usage = "keyledger.usage.k1.used"
	data := []byte(`{"id":"x"}`)
	sign := func(k ed25519.PrivateKey, subject string) (string, string) {
		return id(k), domain.EncodeSignature(domain.SignMessage(k, subject, data))
	}
	one := func(typ, actor string) func(int) (string, string, bool) {
		return func(int) (string, string, bool) { return typ, actor, typ != "" }
	}
	after := start.Add(time.Hour)
	for _, tc := range []struct {
		name       string
		stream     string
		key        ed25519.PrivateKey
		stored     time.Time
		typ, actor string
		reason     string
	}{
		{"node usage", domain.StreamUsage, node, after, domain.TypeKeyUsed, "gateway", ""},
		{"service usage as itself", domain.StreamUsage, svc, after, domain.TypeKeyDenied, "billing", ""},
		{"service usage naming another actor", domain.StreamUsage, svc, after, domain.TypeKeyUsed, "bob", "other_actor"},
		{"service lifecycle event", domain.StreamUsage, svc, after, domain.TypeKeyRevoked, "billing", "wrong_stream"},
		{"service alert on usage", domain.StreamUsage, svc, after, domain.TypeAlertRaised, "billing", "wrong_stream"},
		{"service alert on ALERTS", domain.StreamAlerts, svc, after, domain.TypeAlertRaised, "billing", "not_usage"},
		{"not an event", domain.StreamUsage, svc, after, "", "", "undecodable"},
		{"unknown writer", domain.StreamUsage, stranger, after, domain.TypeKeyUsed, "billing", "untrusted_writer"},
		{"unsigned usage", domain.StreamUsage, nil, after, domain.TypeKeyUsed, "billing", "unsigned"},
		{"unsigned usage from before services signed", domain.StreamUsage, nil, start.Add(-time.Hour), domain.TypeKeyUsed, "billing", ""},
		{"unsigned lifecycle event from then", domain.StreamKeys, nil, start.Add(-time.Hour), domain.TypeKeyCreated, "alice", "unsigned"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			subject := usage
			var writer, sig string
			if tc.key != nil {
				writer, sig = sign(tc.key, subject)
			}
			_, err := w.Verdict(tc.stream, subject, data, writer, sig, tc.stored, 1, one(tc.typ, tc.actor))
			if got := domain.ErrorReason(err); got != tc.reason && !(tc.reason == "" && err == nil) {
				t.Errorf("verdict %v, want reason %q", err, tc.reason)
			}
		})
	}
}
