package domain

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// Every message keyledger stores carries an Ed25519 signature of the node
// that wrote it, over the subject and the exact stored bytes. Projections
// apply only what a trusted writer signed; the hash chain alone uses no key,
// so anyone able to publish could otherwise extend it.

// Message headers that carry a stored message's writer and its signature
// (standard base64, unpadded). They are not part of the event's wire
// format: the stored bytes are what is signed.
const (
	HdrWriter    = "Keyledger-Writer"
	HdrSignature = "Keyledger-Signature"
)

// EncodeSignature renders a signature for HdrSignature.
func EncodeSignature(sig []byte) string { return base64.RawStdEncoding.EncodeToString(sig) }

// signingContext separates keyledger's event signatures from any other use
// of a writer key.
const signingContext = "keyledger event v1\n"

// WriterID names a writer by its public key: unpadded base64url, 43
// characters.
func WriterID(pub ed25519.PublicKey) string {
	return base64.RawURLEncoding.EncodeToString(pub)
}

// ParseWriterID returns the public key a WriterID names.
func ParseWriterID(id string) (ed25519.PublicKey, error) {
	b, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, Errorf(EINVALID, "invalid_writer", "writer %q is not an Ed25519 public key in unpadded base64url", id)
	}
	return ed25519.PublicKey(b), nil
}

func signingInput(subject string, data []byte) []byte {
	in := make([]byte, 0, len(signingContext)+len(subject)+1+len(data))
	in = append(in, signingContext...)
	in = append(in, subject...)
	in = append(in, '\n')
	return append(in, data...)
}

// SignMessage returns the signature of a message to be stored on subject
// with the bytes data.
func SignMessage(key ed25519.PrivateKey, subject string, data []byte) []byte {
	return ed25519.Sign(key, signingInput(subject, data))
}

// Writer is a trusted writer key. A retired key stays trusted for what the
// server stored before RetiredAt, and for nothing stored after it.
type Writer struct {
	ID        string    `json:"key"`
	Name      string    `json:"name,omitempty"`
	RetiredAt time.Time `json:"retired_at,omitzero"`
	// Service, when set, makes the writer a verifying service's: it may
	// sign only usage events (used, denied) whose actor is Service. A
	// node's writer (Service empty) may sign any event of the stream it
	// writes to.
	Service string `json:"service,omitempty"`
}

// Writers is the set of keys whose messages keyledger applies.
type Writers struct {
	Writers []Writer `json:"writers"`
	// UnsignedBefore accepts messages without a signature that the server
	// stored before it: the events of a ledger written before keyledger
	// signed its messages. Zero accepts none.
	UnsignedBefore time.Time `json:"unsigned_before,omitzero"`
	// UnsignedUsageBefore accepts unsigned usage (USAGE) stored before it:
	// what verifying services published before they had writer keys of
	// their own. Zero accepts none beyond UnsignedBefore.
	UnsignedUsageBefore time.Time `json:"unsigned_usage_before,omitzero"`
	// Version is the version of this document's rules: WritersVersion
	// since services sign their usage.
	Version int `json:"version,omitempty"`
}

// WritersVersion is the version of the trusted-writers rules this code
// applies: 2 since every stream, usage included, must be signed.
const WritersVersion = 2

// ParseWriters reads a trusted-writers document (JSON, the shape of
// Writers). Errors: EINVALID.
func ParseWriters(b []byte) (Writers, error) {
	var w Writers
	if err := json.Unmarshal(b, &w); err != nil {
		return Writers{}, Errorf(EINVALID, "invalid_writers", "trusted writers: %v", err)
	}
	for _, x := range w.Writers {
		if _, err := ParseWriterID(x.ID); err != nil {
			return Writers{}, err
		}
	}
	return w, nil
}

// Trust adds id as a current writer unless it is already listed.
func (w Writers) Trust(id, name string) Writers {
	if slices.ContainsFunc(w.Writers, func(x Writer) bool { return x.ID == id }) {
		return w
	}
	w.Writers = append(slices.Clone(w.Writers), Writer{ID: id, Name: name})
	return w
}

// Check reports why a message stored on subject with data at storedAt,
// signed by writer with sig, must not be applied, or nil when a trusted
// writer signed it. Reasons: unsigned, untrusted_writer, retired_writer,
// bad_signature (all EFORBIDDEN).
func (w Writers) Check(subject string, data []byte, writer string, sig []byte, storedAt time.Time) error {
	if writer == "" && len(sig) == 0 {
		if !w.UnsignedBefore.IsZero() && storedAt.Before(w.UnsignedBefore) {
			return nil
		}
		return Errorf(EFORBIDDEN, "unsigned", "message on %s carries no writer signature", subject)
	}
	i := slices.IndexFunc(w.Writers, func(x Writer) bool { return x.ID == writer })
	if i < 0 {
		return Errorf(EFORBIDDEN, "untrusted_writer", "message on %s is signed by %s, which is not a trusted writer", subject, writer)
	}
	if r := w.Writers[i].RetiredAt; !r.IsZero() && !storedAt.Before(r) {
		return Errorf(EFORBIDDEN, "retired_writer", "message on %s was stored at %s, after its writer %s was retired at %s",
			subject, storedAt.UTC().Format(time.RFC3339), writer, r.UTC().Format(time.RFC3339))
	}
	pub, err := ParseWriterID(writer)
	if err != nil {
		return err
	}
	if !ed25519.Verify(pub, signingInput(subject, data), sig) {
		return Errorf(EFORBIDDEN, "bad_signature", "message on %s does not match its signature by %s", subject, writer)
	}
	return nil
}

// Verdict reports why a stored message must be quarantined, or nil when it
// may be applied: a trusted writer signed it (Check), every event in it
// decoded (n events; event(i) returns the i-th event's type and actor, or
// ok false when it is not an event), each is of a type stream may hold, and
// a service's writer signed only its own usage. It returns the id of the
// writer that signed the message ("" for one accepted unsigned). It is
// called once per stored message, a pack of usage events included, so a
// pack's one signature is checked once. Reasons: those of Check, and
// undecodable, wrong_stream, not_usage, other_actor (all EFORBIDDEN).
func (w Writers) Verdict(stream, subject string, data []byte, writer, signature string, storedAt time.Time, n int, event func(i int) (typ, actor string, ok bool)) (string, error) {
	legacyUsage := stream == StreamUsage && writer == "" && signature == "" && storedAt.Before(w.UnsignedUsageBefore)
	if !legacyUsage {
		if err := w.CheckHeaders(subject, data, writer, signature, storedAt); err != nil {
			return writer, err
		}
	}
	service := ""
	if writer != "" {
		if i := slices.IndexFunc(w.Writers, func(x Writer) bool { return x.ID == writer }); i >= 0 {
			service = w.Writers[i].Service
		}
	}
	return writer, CheckEvents(stream, subject, service, n, event)
}

// CheckEvents reports why the n events of a message stored on stream may
// not be applied, or nil: one is not an event, belongs to another stream,
// or, for a service's writer (service is the actor it signs as), is not a
// usage event or names another actor.
func CheckEvents(stream, subject, service string, n int, event func(i int) (typ, actor string, ok bool)) error {
	if n == 0 {
		return Errorf(EFORBIDDEN, "undecodable", "message on %s holds no event", subject)
	}
	for i := range n {
		typ, actor, ok := event(i)
		if !ok {
			return Errorf(EFORBIDDEN, "undecodable", "message on %s: event %d is not an event", subject, i)
		}
		if got := StreamOfType(typ); got != stream {
			return Errorf(EFORBIDDEN, "wrong_stream", "message on %s: a %q event belongs to %s, not %s", subject, typ, got, stream)
		}
		if service == "" {
			continue
		}
		if typ != TypeKeyUsed && typ != TypeKeyDenied {
			return Errorf(EFORBIDDEN, "not_usage", "message on %s: service %s may write only usage events, not %q", subject, service, typ)
		}
		if actor != service {
			return Errorf(EFORBIDDEN, "other_actor", "message on %s: service %s signed an event naming %q as its actor", subject, service, actor)
		}
	}
	return nil
}

// CheckHeaders is Check with the writer and the signature as the message
// headers carry them.
func (w Writers) CheckHeaders(subject string, data []byte, writer, signature string, storedAt time.Time) error {
	var sig []byte
	if signature != "" {
		b, err := base64.RawStdEncoding.DecodeString(signature)
		if err != nil {
			return Errorf(EFORBIDDEN, "bad_signature", "message on %s has a malformed signature", subject)
		}
		sig = b
	}
	return w.Check(subject, data, writer, sig, storedAt)
}

// String names the writers for logs.
func (w Writers) String() string {
	return fmt.Sprintf("%d trusted writers", len(w.Writers))
}
