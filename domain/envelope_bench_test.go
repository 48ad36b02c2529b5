package domain_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// BenchmarkUnmarshalEnvelope decodes a verification's usage event and its
// typed data, as every follower of USAGE does.
func BenchmarkUnmarshalEnvelope(b *testing.B) {
	env := verificationEvent(b)
	raw, err := env.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		e, err := domain.UnmarshalEnvelope(raw)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Decode(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMarshalEnvelope encodes a verification's usage event, as the
// verify handler does for every verification.
func BenchmarkMarshalEnvelope(b *testing.B) {
	env := verificationEvent(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := env.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}

// verificationEvent is the sealed usage event of one verification.
func verificationEvent(b *testing.B) domain.Envelope {
	b.Helper()
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7()).String(),
		domain.KeyUsed{Code: domain.OutcomeValid, Owner: uuid.Must(uuid.NewV7()).String(), Permission: "api.read", CallerKey: uuid.Must(uuid.NewV7()).String(), CallerIP: "10.0.0.1"},
		time.Now(), uuid.Must(uuid.NewV7()).String(), &domain.RequestContext{RequestID: "req-1", SourceIP: "10.1.2.3"})
	if err != nil {
		b.Fatal(err)
	}
	env.Seal("")
	return env
}
