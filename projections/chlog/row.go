package chlog

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/keyledger/keyledger/domain"
)

// Row is one event as the audit table stores it: the envelope's fields, the
// fields of the typed event that reviewers search on, and the raw event.
// Empty strings and empty slices stand for "not applicable": no column is
// Nullable, which keeps the schema identical on 18.16 and a current LTS and
// makes every filter a plain comparison.
type Row struct {
	EventID string
	// Time is the event's time to the millisecond, in UTC.
	Time          time.Time
	Stream        string
	Seq           uint64
	Type          string // "key.revoked", "key.denied", ...
	Kind          string // the subject's aggregate: keys, usage, principals, roles, alerts
	Action        string // the verb of Type: "revoked", "denied", ...
	Outcome       string // the verification outcome code of a usage event (VALID, REVOKED, ...)
	Actor         string
	KeyID         string
	Owner         string
	Permissions   []string // permissions requested (usage) or granted (lifecycle)
	SourceIP      string
	UserAgent     string
	RequestID     string
	Service       string
	TokenHash     string
	Name          string
	Comments      string
	Reason        string
	SchemaVersion uint16
	PrevHash      string
	Hash          string
	// Raw is the event exactly as it is stored in JetStream, so that the
	// audit verifier can recompute its hash from ClickHouse alone.
	Raw string
	// Quarantine is why the event store quarantined the event's message,
	// empty when it is part of the accepted history.
	Quarantine string
}

// invalidType marks a row for a message that is not a decodable event at
// all. It is stored rather than dropped so that nothing in a stream is
// missing from the log, and rather than retried so that one bad message
// cannot stall the sink.
const invalidType = "invalid"

// RowsFromMessage maps a stored message to the rows of its events: one,
// unless the message is a pack of usage events (count is its
// domain.HdrEvents header), whose every event gets its own row. A pack
// that does not split into its events is stored whole as one invalid row,
// like any other message that is not an event.
func RowsFromMessage(stream string, seq uint64, count string, raw []byte) []Row {
	return AppendRows(nil, stream, seq, count, raw)
}

// AppendRows is RowsFromMessage appending to dst. The sink builds a whole
// batch's rows this way, each in place: a Row is 25 fields, and a batch of
// packs holds thousands of them.
func AppendRows(dst []Row, stream string, seq uint64, count string, raw []byte) []Row {
	events, err := domain.Unpack(count, raw)
	if err != nil {
		return append(dst, invalidRow(stream, seq, raw))
	}
	// The events' Raw fields share one copy of the message: one
	// allocation a pack instead of one an event.
	whole := string(raw)
	dst = slices.Grow(dst, len(events))
	for i, e := range events {
		dst = append(dst, Row{})
		// Unpack's events are subslices of raw, so cap tells where
		// each starts.
		var str string
		if start := cap(raw) - cap(e); start >= 0 && start+len(e) <= len(whole) {
			str = whole[start : start+len(e)]
		} else {
			str = string(e)
		}
		fillFromEvent(&dst[len(dst)-1], stream, seq, i, e, str)
	}
	return dst
}

func invalidRow(stream string, seq uint64, raw []byte) Row {
	return Row{
		EventID: fmt.Sprintf("%s:%s:%d", invalidType, stream, seq),
		Stream:  stream,
		Seq:     seq,
		Type:    invalidType,
		Action:  invalidType,
		Raw:     string(raw),
	}
}

// RowFromMessage maps a message of a stream to its row. raw is the message
// body; stream and seq say where it is stored. It never fails: an event of a
// type this code does not know (an alert type added later, say) still gets
// its envelope fields and whatever common fields its data has, and a body
// that is not an envelope at all gets a row of type "invalid" keyed by its
// stream and sequence.
func RowFromMessage(stream string, seq uint64, raw []byte) Row {
	var r Row
	fillFromEvent(&r, stream, seq, 0, raw, string(raw))
	return r
}

// fillFromEvent maps the event at index of the message at seq into r; an
// invalid event of a pack is named by its index too. rawStr is raw as a
// string.
func fillFromEvent(r *Row, stream string, seq uint64, index int, raw []byte, rawStr string) {
	env, err := domain.UnmarshalEnvelope(raw)
	if err != nil {
		// UnmarshalEnvelope is strict about types and fields it does
		// not know; the log is not, as long as there is an event id.
		var loose domain.Envelope
		if json.Unmarshal(raw, &loose) != nil || loose.Type == "" || loose.ID == uuid.Nil {
			*r = invalidRow(stream, seq, raw)
			r.Raw = rawStr
			if index > 0 {
				r.EventID += ":" + strconv.Itoa(index)
			}
			return
		}
		env = loose
	}
	env.Stream, env.Seq, env.Index = stream, seq, index
	fillFromEnvelope(r, &env, rawStr)
}

// RowFromEnvelope maps an envelope to its row. raw is the envelope's stored
// encoding; when it is nil the envelope is encoded again, which gives the
// same bytes for an envelope this code wrote.
func RowFromEnvelope(env domain.Envelope, raw []byte) Row {
	if raw == nil {
		raw, _ = env.Marshal()
	}
	var r Row
	fillFromEnvelope(&r, &env, string(raw))
	return r
}

func fillFromEnvelope(r *Row, env *domain.Envelope, raw string) {
	*r = Row{
		EventID:       env.ID.String(),
		Time:          env.Time.UTC().Truncate(time.Millisecond),
		Stream:        env.Stream,
		Seq:           env.Seq,
		Type:          env.Type,
		Kind:          domain.KindOf(env.Type),
		Action:        domain.Action(env.Type),
		Actor:         env.Actor,
		KeyID:         env.KeyID,
		SchemaVersion: uint16(env.SchemaVersion),
		PrevHash:      env.PrevHash,
		Hash:          env.Hash,
		Raw:           raw,
	}
	if r.Stream == "" {
		r.Stream = env.StreamName()
	}
	if c := env.Context; c != nil {
		r.RequestID, r.SourceIP, r.UserAgent = c.RequestID, c.SourceIP, c.UserAgent
	}
	ev, err := env.Decode()
	if err != nil {
		r.fillCommon(env.Data)
		return
	}
	switch e := ev.(type) {
	case domain.KeyCreated:
		r.Owner, r.Name, r.Comments, r.Permissions = e.Owner, e.Name, e.Comments, e.Permissions
	case domain.KeyUpdated:
		if e.Name != nil {
			r.Name = *e.Name
		}
		if e.Comments != nil {
			r.Comments = *e.Comments
		}
		if e.Permissions != nil {
			r.Permissions = *e.Permissions
		}
	case domain.KeyDisabled:
		r.Reason = e.Reason
	case domain.KeyRevoked:
		r.Reason = e.Reason
	case domain.KeyUsed:
		r.Outcome, r.Owner, r.Service = e.Code, e.Owner, e.Service
		r.Permissions = nonEmpty(e.Permission)
	case domain.KeyDenied:
		r.Outcome, r.Owner, r.Service, r.TokenHash = e.Code, e.Owner, e.Service, e.TokenHash
		r.Permissions = nonEmpty(e.Permission)
	case domain.PrincipalCreated:
		r.Name = e.Name
	case domain.PrincipalUpdated:
		if e.Name != nil {
			r.Name = *e.Name
		}
	case domain.PrincipalDisabled:
		r.Reason = e.Reason
	case domain.PrincipalKeyIssued:
		// A search by owner finds the principal's issued keys; the free
		// text finds the issuance of one key.
		r.Owner, r.Comments = env.KeyID, "key "+e.KeyID
	case domain.RoleCreated:
		r.Permissions, r.Comments = e.Permissions, e.Description
	case domain.RoleUpdated:
		r.Permissions = e.Permissions
		if e.Description != nil {
			r.Comments = *e.Description
		}
	case domain.AlertRaised:
		// An alert's rule and severity go where searches filter: name
		// and outcome; its summary is the free text.
		r.Name, r.Outcome, r.Reason = e.Rule, e.Severity, e.Summary
		if len(e.SourceIPs) > 0 {
			r.SourceIP = e.SourceIPs[0]
		}
	}
}

// fillCommon takes the fields that several event types share from data of
// a type this code cannot decode, so that such events still show up in the
// searches by owner, outcome, permission and free text.
func (r *Row) fillCommon(data json.RawMessage) {
	var c struct {
		Code        string   `json:"code"`
		Owner       string   `json:"owner"`
		Permission  string   `json:"permission"`
		Permissions []string `json:"permissions"`
		Service     string   `json:"service"`
		Name        string   `json:"name"`
		Comments    string   `json:"comments"`
		Reason      string   `json:"reason"`
		Description string   `json:"description"`
	}
	if json.Unmarshal(data, &c) != nil {
		return
	}
	r.Outcome, r.Owner, r.Service, r.Name, r.Reason = c.Code, c.Owner, c.Service, c.Name, c.Reason
	r.Comments = c.Comments
	if r.Comments == "" {
		r.Comments = c.Description
	}
	r.Permissions = c.Permissions
	if len(r.Permissions) == 0 {
		r.Permissions = nonEmpty(c.Permission)
	}
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}
