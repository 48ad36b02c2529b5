package eventstore_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/nats-io/nats.go"
)

func mustKey(tb testing.TB) ed25519.PrivateKey {
	tb.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func writerOf(k ed25519.PrivateKey) string { return domain.WriterID(k.Public().(ed25519.PublicKey)) }

// publishSigned stores env the way another writer would: signed by key
// (or unsigned when key is nil), past the store's own signer.
func publishSigned(tb testing.TB, s *eventstore.Store, env domain.Envelope, key ed25519.PrivateKey) {
	tb.Helper()
	b, err := env.Marshal()
	if err != nil {
		tb.Fatal(err)
	}
	m := nats.NewMsg(env.Subject())
	m.Data = b
	m.Header.Set("Nats-Msg-Id", env.ID.String())
	if key != nil {
		m.Header.Set(eventstore.HdrWriter, writerOf(key))
		m.Header.Set(eventstore.HdrSignature, domain.EncodeSignature(domain.SignMessage(key, m.Subject, m.Data)))
	}
	if _, err := s.JetStream().PublishMsg(testCtx(tb), m); err != nil {
		tb.Fatalf("publish: %v", err)
	}
}

// TestWriterKeyRotation: events signed by a key retired later still
// verify; what that key signs after its retirement, what an untrusted key
// signs, an unsigned message and an altered one do not.
func TestWriterKeyRotation(t *testing.T) {
	dir := t.TempDir()
	old, cur, stranger := mustKey(t), mustKey(t), mustKey(t)

	// The first node writes with the old key.
	trustOld := domain.Writers{}.Trust(writerOf(old), "old")
	s1 := MustOpenStore(t, func(c *eventstore.Config) { c.DataDir, c.NoSync, c.WriterKey, c.Writers = dir, true, old, &trustOld })
	k1 := newKeyID()
	mustAppend(t, s1, 0, created(t, k1))
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	// The old key is retired; the node now writes with the new one.
	retiredAt := time.Now()
	trust := domain.Writers{Writers: []domain.Writer{{ID: writerOf(old), RetiredAt: retiredAt}, {ID: writerOf(cur)}}}
	s2 := MustOpenStore(t, func(c *eventstore.Config) { c.DataDir, c.NoSync, c.WriterKey, c.Writers = dir, true, cur, &trust })
	k2 := newKeyID()
	mustAppend(t, s2, 0, created(t, k2))
	// Stored after the retirement (the server's clock, not the writer's,
	// decides), by the old key, a stranger, nobody, and an altered copy.
	publishSigned(t, s2, created(t, newKeyID()), old)
	publishSigned(t, s2, created(t, newKeyID()), stranger)
	publishSigned(t, s2, created(t, newKeyID()), nil)
	altered := created(t, newKeyID())
	b, _ := altered.Marshal()
	m := nats.NewMsg(altered.Subject())
	m.Data = b
	m.Header.Set(eventstore.HdrWriter, writerOf(cur))
	m.Header.Set(eventstore.HdrSignature, domain.EncodeSignature(domain.SignMessage(cur, m.Subject, append([]byte(nil), b[:len(b)-1]...))))
	if _, err := s2.JetStream().PublishMsg(testCtx(t), m); err != nil {
		t.Fatal(err)
	}

	c := newCollector()
	sub, err := s2.Subscribe(testCtx(t), domain.StreamKeys, 1, c.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	got := c.next(t, 6)
	want := []struct{ writer, reason string }{
		{writerOf(old), ""}, {writerOf(cur), ""},
		{"", "retired_writer"}, {"", "untrusted_writer"}, {"", "unsigned"}, {"", "bad_signature"},
	}
	for i, w := range want {
		if got[i].Writer != w.writer || domain.ErrorReason(got[i].Forged) != w.reason && !(w.reason == "" && got[i].Forged == nil) {
			t.Errorf("event %d: writer %q forged %v; want writer %q, reason %q", i+1, got[i].Writer, got[i].Forged, w.writer, w.reason)
		}
	}
	if got[0].KeyID != k1 || got[1].KeyID != k2 {
		t.Fatalf("events out of order: %s %s", got[0].KeyID, got[1].KeyID)
	}

	// A ledger from before keyledger signed: unsigned messages stored
	// before the cut-off are accepted, later ones are not.
	legacy := domain.Writers{UnsignedBefore: time.Now().Add(time.Hour)}
	if err := eventstore.CheckProvenance(legacy, "keyledger.keys.x.key.created", []byte("{}"), nats.Header{}, time.Now()); err != nil {
		t.Fatalf("unsigned legacy message refused: %v", err)
	}
	legacy.UnsignedBefore = time.Now().Add(-time.Hour)
	if err := eventstore.CheckProvenance(legacy, "keyledger.keys.x.key.created", []byte("{}"), nats.Header{}, time.Now()); domain.ErrorReason(err) != "unsigned" {
		t.Fatalf("unsigned message after the cut-off: %v, want unsigned", err)
	}
}

// TestUsageMessagesAreSigned: the usage publisher signs every message it
// stores with the store's writer key.
func TestUsageMessagesAreSigned(t *testing.T) {
	key := mustKey(t)
	trust := domain.Writers{}.Trust(writerOf(key), "node")
	s := MustOpenStore(t, func(c *eventstore.Config) { c.NoSync, c.WriterKey, c.Writers = true, key, &trust })
	p := eventstore.NewUsagePublisher(s, eventstore.UsageConfig{})
	if err := p.Publish(testCtx(t), used(t, newKeyID()), used(t, newKeyID())); err != nil {
		t.Fatal(err)
	}
	_ = p.Close(testCtx(t))
	c := newCollector()
	sub, err := s.Subscribe(testCtx(t), domain.StreamUsage, 1, c.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	for i, e := range c.next(t, 2) {
		raw := rawMsg(t, s, domain.StreamUsage, e.Seq)
		if err := eventstore.CheckProvenance(trust, raw.Subject, raw.Data, raw.Header, raw.Time); err != nil {
			t.Fatalf("usage event %d: %v", i, err)
		}
	}
	if got := s.WriterID(); got != writerOf(key) {
		t.Fatalf("WriterID %q", got)
	}
}

// TestVerdictOnEveryStream: the store judges every message of every stream
// once, at the one place every reader goes through: a message signed by a
// service's writer holding a lifecycle event, an event naming another
// actor, or bytes that are not an event is quarantined on USAGE, and an
// unsigned alert on ALERTS, while the node's own messages and the
// service's own usage are accepted. A filtered subscription (the writer
// events of KEYS) reads only its subjects, and LastSeqOf finds the last.
func TestVerdictOnEveryStream(t *testing.T) {
	node, svc := mustKey(t), mustKey(t)
	trust := domain.Writers{Writers: []domain.Writer{{ID: writerOf(node)}, {ID: writerOf(svc), Service: "billing"}}}
	s := MustOpenStore(t, func(c *eventstore.Config) { c.NoSync, c.WriterKey, c.Writers = true, node, &trust })
	k := newKeyID()
	own := used(t, k)
	own.Actor = "billing"
	own.Seal("")
	other := used(t, k)
	other.Actor = "bob"
	other.Seal("")
	revoked := created(t, k)
	revoked.Type = domain.TypeKeyRevoked
	publishSigned(t, s, own, svc)
	publishSigned(t, s, other, svc)
	// A lifecycle event on a usage subject.
	b, _ := revoked.Marshal()
	m := nats.NewMsg(own.Subject())
	m.Data = b
	m.Header.Set(eventstore.HdrWriter, writerOf(svc))
	m.Header.Set(eventstore.HdrSignature, domain.EncodeSignature(domain.SignMessage(svc, m.Subject, m.Data)))
	if _, err := s.JetStream().PublishMsg(testCtx(t), m); err != nil {
		t.Fatal(err)
	}
	junk := nats.NewMsg(own.Subject())
	junk.Data = []byte("not an event")
	junk.Header.Set(eventstore.HdrWriter, writerOf(svc))
	junk.Header.Set(eventstore.HdrSignature, domain.EncodeSignature(domain.SignMessage(svc, junk.Subject, junk.Data)))
	if _, err := s.JetStream().PublishMsg(testCtx(t), junk); err != nil {
		t.Fatal(err)
	}

	msgs := make(chan eventstore.StoredMessage, 16)
	sub, err := s.SubscribeMessages(testCtx(t), domain.StreamUsage, 1, func(m eventstore.StoredMessage) error {
		msgs <- m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	for i, want := range []string{"", "other_actor", "wrong_stream", "undecodable"} {
		select {
		case m := <-msgs:
			if got := domain.ErrorReason(m.Quarantine); got != want && !(want == "" && m.Quarantine == nil) {
				t.Errorf("USAGE message %d: quarantine %v, want %q", i+1, m.Quarantine, want)
			}
			if m.Writer != writerOf(svc) {
				t.Errorf("USAGE message %d names writer %q, want the service's", i+1, m.Writer)
			}
			for j, env := range m.Events {
				if m.Err(j) == nil && (env.Forged == nil) != (m.Quarantine == nil) {
					t.Errorf("USAGE message %d event %d: Forged %v, message quarantine %v", i+1, j, env.Forged, m.Quarantine)
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("USAGE message %d not delivered", i+1)
		}
	}

	// ALERTS: an unsigned alert is quarantined.
	alert, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), "", domain.AlertRaised{Rule: "brute_force", Severity: domain.SeverityCritical, Incident: "x", Summary: "x"}, time.Now(), "keyledger-alerts", nil)
	if err != nil {
		t.Fatal(err)
	}
	alert.Seal("")
	publishSigned(t, s, alert, nil)
	alerts := make(chan eventstore.StoredMessage, 1)
	asub, err := s.SubscribeMessages(testCtx(t), domain.StreamAlerts, 1, func(m eventstore.StoredMessage) error {
		alerts <- m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer asub.Stop()
	select {
	case m := <-alerts:
		if domain.ErrorReason(m.Quarantine) != "unsigned" {
			t.Errorf("unsigned alert: quarantine %v, want unsigned", m.Quarantine)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("alert not delivered")
	}

	// A filtered subscription of KEYS sees the writer events only.
	mustAppend(t, s, 0, created(t, newKeyID()))
	trusted, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), writerOf(svc), domain.WriterTrusted{Service: "billing"}, time.Now(), "root", nil)
	if err != nil {
		t.Fatal(err)
	}
	trusted.Seal("")
	seq := mustAppend(t, s, 0, trusted)
	mustAppend(t, s, 0, created(t, newKeyID()))
	if last, err := s.LastSeqOf(testCtx(t), domain.StreamKeys, "keyledger.writer.>"); err != nil || last != seq {
		t.Fatalf("LastSeqOf the writer events: %d, %v; want %d", last, err, seq)
	}
	writers := make(chan eventstore.StoredMessage, 4)
	wsub, err := s.SubscribeSubjects(testCtx(t), domain.StreamKeys, "keyledger.writer.>", 1, func(m eventstore.StoredMessage) error {
		writers <- m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer wsub.Stop()
	select {
	case m := <-writers:
		if m.Seq != seq || m.Quarantined() || m.Events[0].Type != domain.TypeWriterTrusted {
			t.Errorf("writer subscription delivered seq %d (%v) %s, want the writer.trusted at %d", m.Seq, m.Quarantine, m.Events[0].Type, seq)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("writer event not delivered")
	}
}
