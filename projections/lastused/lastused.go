// Package lastused keeps, for every key, when and from where it was last
// used, folded from the USAGE stream. It starts from its last snapshot and
// the tail of USAGE stored since, never from the whole stream.
package lastused

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// SnapshotName is the name its snapshots are kept under.
const SnapshotName = "lastused"

// Use is one key's last successful use.
type Use struct {
	At       time.Time `json:"at"`
	SourceIP string    `json:"ip,omitempty"`
}

// Projection is safe for concurrent use.
type Projection struct {
	mu   sync.RWMutex
	last map[string]Use
	seq  uint64 // the highest USAGE sequence applied
	// saved is seq at the last snapshot, so an idle node saves nothing.
	saved uint64
}

// New returns an empty projection.
func New() *Projection { return &Projection{last: make(map[string]Use)} }

// Apply folds one USAGE event; only successful uses count, and an older
// event never replaces a newer one, so redelivery and overlap are harmless.
func (p *Projection) Apply(env domain.Envelope) {
	switch env.Type {
	case domain.TypeKeyUsed, domain.TypeKeyDenied:
	default:
		return
	}
	ev, err := env.Decode()
	if err != nil {
		return
	}
	p.ApplyDecoded(env, ev)
}

// ApplyDecoded is Apply for an event whose data the caller decoded already
// (ev from env.Decode()): a node's USAGE subscription decodes each event
// once for every follower.
func (p *Projection) ApplyDecoded(env domain.Envelope, ev domain.Event) {
	switch env.Type {
	case domain.TypeKeyUsed, domain.TypeKeyDenied:
	default:
		return
	}
	// A verification also records that its caller used its own key,
	// whatever the verified token's outcome.
	var caller, callerIP string
	switch e := ev.(type) {
	case domain.KeyUsed:
		caller, callerIP = e.CallerKey, e.CallerIP
	case domain.KeyDenied:
		caller, callerIP = e.CallerKey, e.CallerIP
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq = max(p.seq, env.Seq)
	if caller != "" {
		p.note(caller, Use{At: env.Time, SourceIP: callerIP})
	}
	if env.Type != domain.TypeKeyUsed || env.KeyID == "" || env.KeyID == domain.UnknownKeyID {
		return
	}
	u := Use{At: env.Time}
	if env.Context != nil {
		u.SourceIP = env.Context.SourceIP
	}
	p.note(env.KeyID, u)
}

// note records u as the last use of keyID unless a later one is known.
func (p *Projection) note(keyID string, u Use) {
	if old, ok := p.last[keyID]; ok && !u.At.After(old.At) {
		return
	}
	p.last[keyID] = u
}

// LastUsed implements the API's LastUsed interface.
func (p *Projection) LastUsed(keyID string) (time.Time, string, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	u, ok := p.last[keyID]
	return u.At, u.SourceIP, ok
}

// Snapshot encodes the projection with the USAGE sequence it covers in
// full: the one before the highest applied, whose message (a pack of many
// events) may have been applied only in part; replaying it again changes
// nothing, since an older use never replaces a newer one. changed is false
// when nothing was applied since the last snapshot.
func (p *Projection) Snapshot() (seq uint64, data []byte, changed bool, err error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.seq == p.saved {
		return 0, nil, false, nil
	}
	data, err = json.Marshal(p.last)
	if err != nil {
		return 0, nil, false, fmt.Errorf("encode last-used snapshot: %w", err)
	}
	return max(p.seq, 1) - 1, data, true, nil
}

// Saved records that the snapshot taken at seq (Snapshot's) was stored.
func (p *Projection) Saved(seq uint64) {
	p.mu.Lock()
	p.saved = max(p.saved, seq+1)
	p.mu.Unlock()
}

// Restore replaces the projection with a snapshot taken at seq; the caller
// then replays USAGE from seq+1.
func (p *Projection) Restore(seq uint64, data []byte) error {
	var last map[string]Use
	if err := json.Unmarshal(data, &last); err != nil {
		return fmt.Errorf("decode last-used snapshot: %w", err)
	}
	if last == nil {
		last = make(map[string]Use)
	}
	p.mu.Lock()
	p.last, p.seq, p.saved = last, seq, seq
	p.mu.Unlock()
	return nil
}
