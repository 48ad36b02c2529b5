package keystate_test

import (
	"crypto/rand"
	"net/netip"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
)

// benchProjection returns a projection holding n keys and the token of one.
func benchProjection(b *testing.B, n int) (*keystate.Projection, string) {
	p := keystate.New()
	f := &feed{p: p}
	owner := f.reader(b)
	var tok string
	for i := range n {
		id := uuid.Must(uuid.NewV7())
		var s domain.Secret
		_, _ = rand.Read(s[:])
		c := createCmd(id.String(), owner, "k", s)
		c.AllowedIPs = []string{"10.0.0.0/8"}
		f.do(b, id.String(), c)
		if i == n/2 {
			tok = domain.FormatToken(id, s)
		}
	}
	return p, tok
}

// BenchmarkVerifierDecide measures the verification path on the in-memory
// projection of 100k keys: parse, lookup, hash compare, status, CIDR,
// permission, and building the sealed usage event (storing it is measured
// in the eventstore and api benchmarks).
func BenchmarkVerifierDecide(b *testing.B) {
	p, tok := benchProjection(b, 100_000)
	v := &keystate.Verifier{State: p, Now: func() time.Time { return t0 }, NewID: uuid.New}
	req := keystate.Request{Token: tok, Permission: "orders.read", IP: netip.MustParseAddr("10.1.2.3"), Actor: "svc"}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, _, err := v.Decide(req)
			if err != nil || !res.Valid() {
				b.Fatalf("%v %v", res.Code, err)
			}
		}
	})
}

// BenchmarkLookupAndCheck is the decision alone, without the usage event.
func BenchmarkLookupAndCheck(b *testing.B) {
	p, tok := benchProjection(b, 100_000)
	addr := netip.MustParseAddr("10.1.2.3")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t, err := domain.ParseToken(tok)
		if err != nil {
			b.Fatal(err)
		}
		k, owner, _ := p.KeyForVerify(t.KeyID)
		if domain.Check(k, t.Secret, t0, addr, "orders.read", owner.Permissions) != domain.OutcomeValid {
			b.Fatal("not valid")
		}
	}
}

// BenchmarkSnapshot encodes and restores the snapshot of 100k keys, which
// a node writes every so often and reads at every start.
func BenchmarkSnapshot(b *testing.B) {
	p, _ := benchProjection(b, 100_000)
	_, snap, err := p.Snapshot()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := p.Snapshot(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(snap))/1e6, "MB")
	})
	b.Run("restore", func(b *testing.B) {
		q := keystate.New()
		for b.Loop() {
			if err := q.Restore(snap); err != nil {
				b.Fatal(err)
			}
		}
		if q.Len() != p.Len() {
			b.Fatalf("restored %d keys of %d", q.Len(), p.Len())
		}
	})
}
