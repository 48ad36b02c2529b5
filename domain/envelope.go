package domain

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	fastjson "github.com/segmentio/encoding/json"
)

// SchemaVersion is the envelope version this code writes. Stored events are
// never rewritten: older versions are upcast when read.
const SchemaVersion = 1

// Stream names. Lifecycle events and usage events live apart so that usage
// never causes false concurrency conflicts on lifecycle commands.
const (
	StreamKeys   = "KEYS"
	StreamUsage  = "USAGE"
	StreamAlerts = "ALERTS"
)

// Aggregate kinds: the second token of a lifecycle subject.
const (
	KindKey       = "keys"
	KindPrincipal = "principals"
	KindRole      = "roles"
)

// Envelope is the one wire format of every event. Its JSON encoding is
// pinned by golden files and never changes for a stored event.
type Envelope struct {
	ID            uuid.UUID       `json:"id"`
	Type          string          `json:"type"`
	KeyID         string          `json:"key_id"`
	Time          time.Time       `json:"time"`
	Actor         string          `json:"actor"`
	SchemaVersion int             `json:"schema_version"`
	Context       *RequestContext `json:"ctx,omitempty"`
	Data          json.RawMessage `json:"data"`
	PrevHash      string          `json:"prev_hash"`
	Hash          string          `json:"hash"`

	// Stream and Seq are where the event is stored; they are set when an
	// event is read back and are not part of the wire format.
	Stream string `json:"-"`
	Seq    uint64 `json:"-"`
	// Index is the event's place in its stored message: 0, unless the
	// message is a pack of usage events (pack.go).
	Index int `json:"-"`
	// Writer is the trusted writer that signed the stored message, and
	// Forged why it must not be applied (an unsigned message, an untrusted
	// or retired writer, a bad signature); both are set by the store when
	// it checks provenance, and are not part of the wire format.
	Writer string `json:"-"`
	Forged error  `json:"-"`
}

// RequestContext records where a command or a verification came from.
type RequestContext struct {
	RequestID string `json:"request_id,omitempty"`
	SourceIP  string `json:"source_ip,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
}

// Kind returns the aggregate kind of the envelope's event type.
func (e Envelope) Kind() string { return KindOf(e.Type) }

// Subject returns the NATS subject the envelope is stored under.
func (e Envelope) Subject() string {
	switch KindOf(e.Type) {
	case KindUsage:
		id := e.KeyID
		if id == "" {
			id = UnknownKeyID
		}
		return "keyledger.usage." + id + "." + UsageSuffix(e.Type)
	case KindAlert:
		return alertSubject(e)
	case KindCheckpoint:
		return "keyledger.checkpoints." + e.KeyID
	default:
		return "keyledger." + KindOf(e.Type) + "." + e.KeyID + "." + e.Type
	}
}

// StreamName returns the stream the envelope belongs to.
func (e Envelope) StreamName() string {
	if e.Type == "" {
		return StreamKeys
	}
	return StreamOfType(e.Type)
}

// StreamOfType returns the stream that holds events of type typ; "" for
// an empty type, which no stream holds.
func StreamOfType(typ string) string {
	if typ == "" {
		return ""
	}
	switch KindOf(typ) {
	case KindUsage:
		return StreamUsage
	case KindAlert:
		return StreamAlerts
	case KindCheckpoint:
		return StreamCheckpoints
	default:
		return StreamKeys
	}
}

// encodeData encodes an event's data. Usage events, one per verification,
// go through segmentio's encoder, which writes the bytes encoding/json
// writes (the same field order, omitempty and HTML-safe escaping; the
// bytes are hashed and signed, so they must not differ:
// TestUsageEncodingMatchesMarshal and FuzzUsageEncoding check it) without
// encoding/json's reflection on every call.
func encodeData(ev Event) ([]byte, error) {
	switch ev.(type) {
	case KeyUsed, *KeyUsed, KeyDenied, *KeyDenied:
		return fastjson.Append(make([]byte, 0, 256), ev, fastjson.EscapeHTML|fastjson.SortMapKeys)
	}
	return json.Marshal(ev)
}

// UnknownKeyID stands for the key id of a token that could not be parsed.
const UnknownKeyID = "_"

// NewEnvelope wraps an event. The time is truncated to the millisecond, the
// precision of every store keyledger writes to, so a hash computed now still
// matches after a round trip through any of them.
func NewEnvelope(id uuid.UUID, keyID string, ev Event, now time.Time, actor string, rc *RequestContext) (Envelope, error) {
	data, err := encodeData(ev)
	if err != nil {
		return Envelope{}, fmt.Errorf("encode %s: %w", ev.EventType(), err)
	}
	return Envelope{
		ID:            id,
		Type:          ev.EventType(),
		KeyID:         keyID,
		Time:          now.UTC().Truncate(time.Millisecond),
		Actor:         actor,
		SchemaVersion: SchemaVersion,
		Context:       rc,
		Data:          data,
	}, nil
}

// Seal sets the envelope's prev_hash and computes its hash.
func (e *Envelope) Seal(prev string) {
	e.PrevHash = prev
	e.Hash = e.ComputeHash()
}

// ComputeHash returns the SHA-256 of the envelope's canonical encoding,
// hex-encoded. The encoding (version 1) is a fixed tag followed by each field
// as a big-endian uint32 length and its bytes, in a fixed order; it does not
// depend on JSON key order or whitespace of the envelope itself.
func (e Envelope) ComputeHash() string {
	sum := e.hashSum()
	return hex.EncodeToString(sum[:])
}

func (e Envelope) hashSum() [sha256.Size]byte {
	// Most events fit the stack buffer; the canonical bytes are only
	// hashed, never kept.
	var buf [1024]byte
	return sha256.Sum256(appendCanonical(buf[:0], e))
}

// canonicalTag opens the canonical encoding, version 1.
const canonicalTag = "keyledger-event-v1"

// CanonicalBytes returns the bytes the envelope's hash is computed over.
func CanonicalBytes(e Envelope) []byte {
	var rc RequestContext
	if e.Context != nil {
		rc = *e.Context
	}
	var sv [20]byte
	version := strconv.AppendInt(sv[:0], int64(e.SchemaVersion), 10)
	const fields = 11
	n := len(canonicalTag) + 4*fields + len(e.ID) + len(e.Type) + len(e.KeyID) + 8 + len(e.Actor) +
		len(version) + len(rc.RequestID) + len(rc.SourceIP) + len(rc.UserAgent) + len(e.Data) + len(e.PrevHash)
	return appendCanonical(make([]byte, 0, n), e)
}

// appendCanonical appends the canonical bytes of e to b.
func appendCanonical(b []byte, e Envelope) []byte {
	var rc RequestContext
	if e.Context != nil {
		rc = *e.Context
	}
	var sv [20]byte
	version := strconv.AppendInt(sv[:0], int64(e.SchemaVersion), 10)
	b = append(b, canonicalTag...)
	b = appendField(b, e.ID[:])
	b = appendField(b, e.Type)
	b = appendField(b, e.KeyID)
	b = binary.BigEndian.AppendUint32(b, 8)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Time.UnixMilli()))
	b = appendField(b, e.Actor)
	b = appendField(b, version)
	b = appendField(b, rc.RequestID)
	b = appendField(b, rc.SourceIP)
	b = appendField(b, rc.UserAgent)
	b = appendField(b, e.Data)
	b = appendField(b, e.PrevHash)
	return b
}

// appendField appends one field of the canonical encoding: its length as a
// big-endian uint32, then its bytes.
func appendField[T ~[]byte | ~string](b []byte, s T) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// Marshal returns the wire encoding of the envelope.
//
// Every event is marshalled once when it is stored, and every usage event on
// a verification's path: segmentio's encoder, with encoding/json's escaping
// and key order, gives the same bytes (TestEnvelopeEncodingMatchesMarshal,
// FuzzEnvelopeEncoding) without its reflection on every call.
func (e Envelope) Marshal() ([]byte, error) {
	// segmentio's encoder writes the first value of data and drops what
	// follows it; encoding/json refuses such data, and so does Marshal.
	if e.Data != nil && !fastjson.Valid(e.Data) {
		return nil, fmt.Errorf("encode envelope: data is not one JSON value")
	}
	b, err := fastjson.Append(make([]byte, 0, 512+len(e.Data)), &e, fastjson.EscapeHTML|fastjson.SortMapKeys)
	if err != nil {
		return nil, fmt.Errorf("encode envelope: %w", err)
	}
	return b, nil
}

// UnmarshalEnvelope decodes the wire encoding of an event. It rejects
// unknown envelope fields, unsupported schema versions and missing ids.
func UnmarshalEnvelope(b []byte) (Envelope, error) {
	var e Envelope
	// Every follower decodes every event: segmentio's decoder has
	// encoding/json's semantics (and its unknown-field check) at a
	// fraction of the cost.
	rest, err := fastjson.Parse(b, &e, fastjson.DisallowUnknownFields)
	if err != nil {
		return Envelope{}, Errorf(EINVALID, "bad_event", "decode event: %v", err)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return Envelope{}, Errorf(EINVALID, "bad_event", "decode event: trailing data")
	}
	if e.SchemaVersion < 1 || e.SchemaVersion > SchemaVersion {
		return Envelope{}, Errorf(EINVALID, "bad_event", "unsupported schema version %d", e.SchemaVersion)
	}
	if e.ID == uuid.Nil || e.Type == "" {
		return Envelope{}, Errorf(EINVALID, "bad_event", "event without id or type")
	}
	if _, ok := eventFactories[e.Type]; !ok {
		return Envelope{}, Errorf(EINVALID, "bad_event", "unknown event type %q", e.Type)
	}
	return e, nil
}

// Decode returns the typed event carried by the envelope.
func (e Envelope) Decode() (Event, error) {
	f, ok := eventFactories[e.Type]
	if !ok {
		return nil, Errorf(EINVALID, "bad_event", "unknown event type %q", e.Type)
	}
	ev := f()
	if err := fastjson.Unmarshal(e.Data, ev); err != nil {
		return nil, Errorf(EINVALID, "bad_event", "decode %s data: %v", e.Type, err)
	}
	return derefEvent(ev), nil
}
