package eventstore

import (
	"crypto/ed25519"
	"encoding/base64"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
)

// Headers that carry a message's writer and its signature (see
// domain.SignMessage). They are not part of the event's wire format: the
// stored bytes are what is signed.
const (
	HdrWriter    = "Keyledger-Writer"
	HdrSignature = "Keyledger-Signature"
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
	m.Header.Set(HdrSignature, base64.RawStdEncoding.EncodeToString(domain.SignMessage(s.key, m.Subject, m.Data)))
}

// CheckProvenance reports why a stored message must not be applied under
// the trusted writers w, or nil: the one check the store's subscriptions
// and audit verify share.
func CheckProvenance(w domain.Writers, subject string, data []byte, header nats.Header, storedAt time.Time) error {
	writer := header.Get(HdrWriter)
	var sig []byte
	if v := header.Get(HdrSignature); v != "" {
		b, err := base64.RawStdEncoding.DecodeString(v)
		if err != nil {
			return domain.Errorf(domain.EFORBIDDEN, "bad_signature", "message on %s has a malformed signature", subject)
		}
		sig = b
	}
	return w.Check(subject, data, writer, sig, storedAt)
}

// WriterID is the id of the key the store signs with, "" when it signs
// nothing.
func (s *Store) WriterID() string {
	if s.signer == nil {
		return ""
	}
	return s.signer.id
}
