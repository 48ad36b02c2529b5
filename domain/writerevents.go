package domain

import (
	"slices"
	"time"
)

// The set of trusted writers is kept in the ledger: writer.trusted and
// writer.retired events on KEYS, one aggregate per writer (its id is the
// writer's id), each signed by a writer the set already trusts. A node
// folds them into the Writers it checks every message against; a
// trusted-writers.json file seeds the set (bootstrap, and ledgers from
// before these events).
const (
	TypeWriterTrusted = "writer.trusted"
	TypeWriterRetired = "writer.retired"
	// KindWriter is the subject token of writer events.
	KindWriter = "writer"
)

// WriterTrusted makes a key a trusted writer: a node's (Service empty), or
// a verifying service's, which may sign only its own usage events.
type WriterTrusted struct {
	Name    string `json:"name,omitempty"`
	Service string `json:"service,omitempty"`
}

// EventType implements Event.
func (WriterTrusted) EventType() string { return TypeWriterTrusted }

// WriterRetired stops trusting a writer for what is stored after the
// event's time; what it signed before stays trusted.
type WriterRetired struct {
	Reason string `json:"reason,omitempty"`
}

// EventType implements Event.
func (WriterRetired) EventType() string { return TypeWriterRetired }

func init() {
	eventFactories[TypeWriterTrusted] = func() any { return new(WriterTrusted) }
	eventFactories[TypeWriterRetired] = func() any { return new(WriterRetired) }
}

// Apply folds one accepted writer event into the set; other events leave
// it as it is. A writer trusted again after its retirement is trusted
// again from then on, and a retired writer's RetiredAt is the event's
// time.
func (w Writers) Apply(env Envelope) Writers {
	if env.Kind() != KindWriter {
		return w
	}
	ev, err := env.Decode()
	if err != nil {
		return w
	}
	list := slices.Clone(w.Writers)
	i := slices.IndexFunc(list, func(x Writer) bool { return x.ID == env.KeyID })
	switch e := ev.(type) {
	case WriterTrusted:
		x := Writer{ID: env.KeyID, Name: e.Name, Service: e.Service}
		if i < 0 {
			list = append(list, x)
		} else {
			list[i] = x
		}
	case WriterRetired:
		if i < 0 {
			list = append(list, Writer{ID: env.KeyID, RetiredAt: env.Time.UTC()})
		} else if list[i].RetiredAt.IsZero() || env.Time.Before(list[i].RetiredAt) {
			list[i].RetiredAt = env.Time.UTC()
		}
	}
	w.Writers = list
	return w
}

// TrustWriter returns the writer.trusted event for id, after checking that
// id is a writer key and service, when given, can be an actor. Errors:
// EINVALID.
func TrustWriter(id, name, service string) (WriterTrusted, error) {
	if _, err := ParseWriterID(id); err != nil {
		return WriterTrusted{}, err
	}
	if len(name) > 200 || len(service) > 200 {
		return WriterTrusted{}, Errorf(EINVALID, "invalid_writer", "a writer's name and service are at most 200 characters")
	}
	return WriterTrusted{Name: name, Service: service}, nil
}

// RetiredBy reports whether the writer is retired for what is stored at t.
func (x Writer) RetiredBy(t time.Time) bool { return !x.RetiredAt.IsZero() && !t.Before(x.RetiredAt) }
