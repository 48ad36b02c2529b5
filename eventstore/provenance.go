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
