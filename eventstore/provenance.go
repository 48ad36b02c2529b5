package eventstore

import (
	"crypto/ed25519"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
)

// Headers that carry a message's writer and its signature.
const (
	HdrWriter    = domain.HdrWriter
	HdrSignature = domain.HdrSignature
)

// signer signs the messages the store writes.
type signer struct {
	key ed25519.PrivateKey
	id  string
}

func newSigner(key ed25519.PrivateKey) *signer {
	if key == nil {
		return nil
	}
	return &signer{key: key, id: domain.WriterID(key.Public().(ed25519.PublicKey))}
}

// sign adds the writer and signature headers to m; a nil signer leaves m
// unsigned.
func (s *signer) sign(m *nats.Msg) {
	if s == nil {
		return
	}
	m.Header.Set(HdrWriter, s.id)
	m.Header.Set(HdrSignature, domain.EncodeSignature(domain.SignMessage(s.key, m.Subject, m.Data)))
}

// Verdict reports why a stored message must be quarantined, or nil, and
// the writer it names: the one check of provenance and content that every
// reader of every stream applies, once per message (a pack of usage events
// is one message with one signature). n and event give the message's
// events as the caller decoded them: event(i) returns the i-th event's
// type and actor, or ok false when it is not an event. With no trusted
// writers configured only the content is checked.
// writer and signature are the message's HdrWriter and HdrSignature headers.
func (s *Store) Verdict(stream, subject string, data []byte, writer, signature string, storedAt time.Time, n int, event func(i int) (typ, actor string, ok bool)) (string, error) {
	w := s.writers.Load()
	if w == nil {
		return writer, domain.CheckEvents(stream, subject, "", n, event)
	}
	return w.Verdict(stream, subject, data, writer, signature, storedAt, n, event)
}

// Writers returns the trusted writers the store checks messages against,
// nil when it checks only their content.
func (s *Store) Writers() *domain.Writers { return s.writers.Load() }

// SetWriters replaces the trusted writers: the set kept in the ledger
// changed (writer.trusted, writer.retired).
func (s *Store) SetWriters(w domain.Writers) { s.writers.Store(&w) }

// CheckProvenance reports why a stored message must not be applied under
// the trusted writers w, or nil.
func CheckProvenance(w domain.Writers, subject string, data []byte, header nats.Header, storedAt time.Time) error {
	return w.CheckHeaders(subject, data, header.Get(HdrWriter), header.Get(HdrSignature), storedAt)
}

// WriterID is the id of the key the store signs with, "" when it signs
// nothing.
func (s *Store) WriterID() string {
	if s.signer == nil {
		return ""
	}
	return s.signer.id
}
