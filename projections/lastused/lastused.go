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
	switch env.Type {
	case domain.TypeKeyUsed, domain.TypeKeyDenied:
	default:
		return
	}
	ev, err := env.Decode()
	if err != nil {
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
