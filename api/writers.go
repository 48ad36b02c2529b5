package api

import (
	"context"
	"net/http"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// WriterAdmin manages the trusted writers kept in the ledger
// (writer.trusted and writer.retired events on KEYS, signed by the node).
type WriterAdmin interface {
	// TrustWriter makes the Ed25519 key id (unpadded base64url) a trusted
	// writer: a node's when service is empty, else a verifying service's,
	// which may sign only its own usage events with service as their
	// actor. It returns once this node checks messages against the new
	// set. Errors: EINVALID, ECONFLICT, EUNAVAILABLE.
	TrustWriter(ctx context.Context, actor, id, name, service string) (domain.Writers, error)
	// RetireWriter stops trusting id for what is stored from now on.
	// Errors: EINVALID, ECONFLICT, EUNAVAILABLE.
	RetireWriter(ctx context.Context, actor, id, reason string) (domain.Writers, error)
	// Writers returns the set this node checks messages against.
	Writers() domain.Writers
}

// WriterRequest trusts or retires a writer key.
type WriterRequest struct {
	Key     string `json:"key"`
	Name    string `json:"name"`
	Service string `json:"service"`
	// Retire stops trusting Key for what is stored from now on.
	Retire bool   `json:"retire"`
	Reason string `json:"reason"`
}

// WriterView is one trusted (or retired) writer.
type WriterView struct {
	Key       string     `json:"key"`
	Name      string     `json:"name,omitempty"`
	Service   string     `json:"service,omitempty"`
	RetiredAt *time.Time `json:"retired_at,omitempty"`
}

// WriterList is the set of trusted writers.
type WriterList struct {
	Writers []WriterView `json:"writers"`
	// UnsignedBefore: unsigned messages stored before it are accepted
	// (a ledger from before keyledger signed its events).
	UnsignedBefore *time.Time `json:"unsigned_before,omitempty"`
}

func writerList(w domain.Writers) WriterList {
	out := WriterList{Writers: []WriterView{}}
	for _, x := range w.Writers {
		v := WriterView{Key: x.ID, Name: x.Name, Service: x.Service}
		if !x.RetiredAt.IsZero() {
			t := x.RetiredAt
			v.RetiredAt = &t
		}
		out.Writers = append(out.Writers, v)
	}
	if !w.UnsignedBefore.IsZero() {
		t := w.UnsignedBefore
		out.UnsignedBefore = &t
	}
	return out
}

var errNoWriterAdmin = domain.Errorf(domain.EUNAVAILABLE, "writers_unavailable", "this node keeps no trusted writers")

func (s *Server) changeWriter(w http.ResponseWriter, r *http.Request, c caller) {
	var req WriterRequest
	if err := decode(r, &req); err != nil {
		s.problem(w, r, err)
		return
	}
	if s.cfg.Writers == nil {
		s.problem(w, r, errNoWriterAdmin)
		return
	}
	var set domain.Writers
	var err error
	if req.Retire {
		set, err = s.cfg.Writers.RetireWriter(r.Context(), c.ID(), req.Key, req.Reason)
	} else {
		set, err = s.cfg.Writers.TrustWriter(r.Context(), c.ID(), req.Key, req.Name, req.Service)
	}
	if err != nil {
		s.problem(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, writerList(set))
}

func (s *Server) listWriters(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.cfg.Writers == nil {
		s.problem(w, r, errNoWriterAdmin)
		return
	}
	writeJSON(w, http.StatusOK, writerList(s.cfg.Writers.Writers()))
}
