package api

import (
	"crypto/ed25519"
	"encoding/base64"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/notary"
)

// Auditor is the notary as the API needs it.
type Auditor interface {
	PublicKey() ed25519.PublicKey
	// ProofFor returns an event's inclusion proof against its stream's
	// latest checkpoint. Errors: ENOTFOUND.
	ProofFor(eventID string) (notary.Proof, error)
	Latest() []domain.CheckpointPublished
}

// PublicKeyView answers GET /v1/audit/public-key.
type PublicKeyView struct {
	Algorithm string `json:"algorithm"`
	KeyID     string `json:"key_id"`
	PublicKey string `json:"public_key"` // base64
}

// CheckpointView is a signed checkpoint as the API shows it.
type CheckpointView struct {
	Stream    string    `json:"stream"`
	Size      uint64    `json:"size"`
	Root      string    `json:"root"`
	At        time.Time `json:"at"`
	KeyID     string    `json:"key_id"`
	Signature string    `json:"signature"`
}

func checkpointView(c domain.CheckpointPublished) CheckpointView {
	return CheckpointView{Stream: c.Stream, Size: c.Size, Root: c.Root, At: c.At, KeyID: c.KeyID, Signature: c.Sig}
}

// ProofView answers GET /v1/audit/proof.
type ProofView struct {
	EventID    string         `json:"event_id"`
	Stream     string         `json:"stream"`
	Seq        uint64         `json:"seq"`
	Index      uint64         `json:"index"`
	Hashes     []string       `json:"hashes"`
	Checkpoint CheckpointView `json:"checkpoint"`
}

func (s *Server) auditUnavailable(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.Audit == nil {
		s.problem(w, r, domain.Errorf(domain.EINTERNAL, "audit_unavailable", "this node does not run the notary"))
		return true
	}
	return false
}

// auditPublicKey serves the notary's key to any authenticated caller, like
// every /v1 route; a reviewer keeps a copy to check proofs offline.
func (s *Server) auditPublicKey(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.auditUnavailable(w, r) {
		return
	}
	pub := s.cfg.Audit.PublicKey()
	writeJSON(w, http.StatusOK, PublicKeyView{Algorithm: "ed25519", KeyID: notary.KeyID(pub), PublicKey: base64.StdEncoding.EncodeToString(pub)})
}

func (s *Server) auditCheckpoints(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.auditUnavailable(w, r) {
		return
	}
	out := []CheckpointView{}
	for _, c := range s.cfg.Audit.Latest() {
		out = append(out, checkpointView(c))
	}
	writeJSON(w, http.StatusOK, map[string]any{"checkpoints": out})
}

func (s *Server) auditProof(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.auditUnavailable(w, r) {
		return
	}
	id := r.URL.Query().Get("event_id")
	if _, err := uuid.Parse(id); err != nil {
		s.problem(w, r, domain.Errorf(domain.EINVALID, "invalid_event_id", "event_id %q is not an event id", id))
		return
	}
	p, err := s.cfg.Audit.ProofFor(id)
	if err != nil {
		s.problem(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ProofView{EventID: p.EventID, Stream: p.Stream, Seq: p.Seq, Index: p.Index,
		Hashes: nonNil(p.Hashes), Checkpoint: checkpointView(p.Checkpoint)})
}
