// Package command is keyledger's command path: the one way a key, a
// principal or a role changes. Every command loads the aggregate from the
// key-state projection, decides with the pure rules of package domain,
// appends the resulting events with the version it decided on, waits until
// the local projection has applied them (so the caller reads its own write
// and a revocation is effective at this node when the call returns), and on
// a version conflict decides again, a bounded number of times.
//
// The HTTP layer authenticates, decodes and calls one method here; nothing
// below it climbs back up.
package command

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
)

// Store appends the writes of one command, all or nothing.
type Store interface {
	// AppendAll stores every write if and only if each aggregate is still
	// at the version its write expects, and returns the sequence of the
	// last event. Errors: EINVALID (bad_event), ECONFLICT
	// (version_conflict) when another command moved an aggregate on.
	AppendAll(ctx context.Context, writes []domain.Write) (uint64, error)
	// LastSeq returns the sequence of the last message of a stream.
	LastSeq(ctx context.Context, stream string) (uint64, error)
}

// Config tunes a Service; zero values take the defaults.
type Config struct {
	// Now and NewID are the clock and the event id source: time.Now and
	// UUIDv7 by default.
	Now   func() time.Time
	NewID func() uuid.UUID
	// MaxActiveKeys is the plan limit of principals that have none of
	// their own; domain.DefaultMaxActiveKeys when zero.
	MaxActiveKeys int
	// Attempts bounds how often a command is decided again after losing a
	// version race; 64 when zero. Under contention each round has one
	// winner, so this is also how many concurrent commands on one
	// aggregate are sure to land.
	Attempts int
}

// Service executes commands. It is safe for concurrent use.
type Service struct {
	store Store
	state *keystate.Projection
	cfg   Config
	// names serializes creating and renaming principals, whose names are
	// unique across aggregates.
	names sync.Mutex
	// ownKeys serializes revoking, disabling and deleting one's own keys,
	// so that the last-credential guard sees every earlier one applied.
	ownKeys sync.Mutex
}

// New returns a Service that appends to store and reads and waits on state,
// the projection that follows the store's KEYS stream.
func New(store Store, state *keystate.Projection, cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NewID == nil {
		cfg.NewID = func() uuid.UUID { return uuid.Must(uuid.NewV7()) }
	}
	if cfg.MaxActiveKeys <= 0 {
		cfg.MaxActiveKeys = domain.DefaultMaxActiveKeys
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 64
	}
	return &Service{store: store, state: state, cfg: cfg}
}

// Aggregate is the state a command decides on: the one of Key, Principal
// or Role that Kind names, as the local projection holds it.
type Aggregate struct {
	Kind, ID  string
	Key       domain.Key
	Principal domain.Principal
	Role      domain.Role
}

// Version is the stream sequence of the aggregate's last event, 0 when it
// has none.
func (a Aggregate) Version() uint64 {
	switch a.Kind {
	case domain.KindKey:
		return a.Key.Version
	case domain.KindPrincipal:
		return a.Principal.Version
	case domain.KindRole:
		return a.Role.Version
	}
	return 0
}

func (s *Service) load(kind, id string) Aggregate {
	a := Aggregate{Kind: kind, ID: id}
	switch kind {
	case domain.KindKey:
		a.Key, _ = s.state.Key(id)
	case domain.KindPrincipal:
		a.Principal, _ = s.state.Principal(id)
	case domain.KindRole:
		a.Role, _ = s.state.Role(id)
	}
	return a
}

// Update is the one way to change an aggregate. It loads kind/id, lets
// decide return the events of the command, appends them with the loaded
// version as the concurrency check and waits until the local projection
// has applied them. decide may also return the events of new aggregates (a
// principal's first credential), which are stored in the same atomic
// append and must not exist yet. When another command got there first,
// Update waits for the projection to catch up and runs decide again, so
// decide must depend only on the state it is given and on what it reads
// from the projection.
//
// It returns the sequence of the last stored event. Errors: whatever decide
// returns, ECONFLICT (version_conflict) when every attempt lost its race,
// and the store's errors.
func (s *Service) Update(ctx context.Context, kind, id string, decide func(Aggregate) ([]domain.Envelope, error)) (uint64, error) {
	for attempt := 1; ; attempt++ {
		a := s.load(kind, id)
		envs, err := decide(a)
		if err != nil {
			return 0, err
		}
		writes, err := group(envs, kind, id, a.Version())
		if err != nil {
			return 0, err
		}
		seq, err := s.store.AppendAll(ctx, writes)
		if err == nil {
			if err := s.state.WaitFor(ctx, seq); err != nil {
				return 0, fmt.Errorf("%s %s stored at %d: %w", kind, id, seq, err)
			}
			return seq, nil
		}
		if domain.ErrorReason(err) != "version_conflict" || attempt >= s.cfg.Attempts {
			return 0, err
		}
		// Someone else's command landed after our read: catch up with
		// everything stored so far, then decide again on the new state.
		last, lerr := s.store.LastSeq(ctx, domain.StreamKeys)
		if lerr != nil {
			return 0, errors.Join(err, lerr)
		}
		if err := s.state.WaitFor(ctx, last); err != nil {
			return 0, err
		}
		// A little jitter keeps the losers of one round from colliding
		// again in lockstep.
		select {
		case <-time.After(rand.N(time.Duration(min(attempt, 10)) * time.Millisecond)):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// group splits envs into one write per aggregate, in order: kind/id at
// version, every other aggregate new.
func group(envs []domain.Envelope, kind, id string, version uint64) ([]domain.Write, error) {
	var writes []domain.Write
	for _, e := range envs {
		if n := len(writes); n > 0 {
			last := writes[n-1].Events[0]
			if last.Kind() == e.Kind() && last.KeyID == e.KeyID {
				writes[n-1].Events = append(writes[n-1].Events, e)
				continue
			}
		}
		for _, w := range writes {
			if w.Events[0].Kind() == e.Kind() && w.Events[0].KeyID == e.KeyID {
				return nil, fmt.Errorf("command events of %s %s are not contiguous", e.Kind(), e.KeyID)
			}
		}
		var expected uint64
		if e.Kind() == kind && e.KeyID == id {
			expected = version
		}
		writes = append(writes, domain.Write{Expected: expected, Events: []domain.Envelope{e}})
	}
	if len(writes) == 0 {
		return nil, errors.New("command produced no events")
	}
	return writes, nil
}

// newSecret draws a secret from the operating system's CSPRNG.
func newSecret() domain.Secret {
	var s domain.Secret
	_, _ = crand.Read(s[:]) // crypto/rand.Read never fails.
	return s
}
