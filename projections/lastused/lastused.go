// Package lastused keeps, for every key, when and from where it was last
// used successfully, folded from the USAGE stream. At start it needs only the
// last "used" event of each key, not the whole stream.
package lastused

import (
	"sync"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// Use is one key's last successful use.
type Use struct {
	At       time.Time
	SourceIP string
}

// Projection is safe for concurrent use.
type Projection struct {
	mu   sync.RWMutex
	last map[string]Use
}

// New returns an empty projection.
func New() *Projection { return &Projection{last: make(map[string]Use)} }

// Apply folds one USAGE event; only successful uses count, and an older
// event never replaces a newer one, so redelivery and overlap are harmless.
func (p *Projection) Apply(env domain.Envelope) {
	if env.Type != domain.TypeKeyUsed || env.KeyID == "" || env.KeyID == domain.UnknownKeyID {
		return
	}
	u := Use{At: env.Time}
	if env.Context != nil {
		u.SourceIP = env.Context.SourceIP
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.last[env.KeyID]; ok && !u.At.After(old.At) {
		return
	}
	p.last[env.KeyID] = u
}

// LastUsed implements the API's LastUsed interface.
func (p *Projection) LastUsed(keyID string) (time.Time, string, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	u, ok := p.last[keyID]
	return u.At, u.SourceIP, ok
}
