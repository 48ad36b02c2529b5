// Package keystate is the in-memory read model of every key, principal and
// role, folded from the KEYS stream. Verification reads it; management
// commands decide against it and wait for it to apply their own events.
package keystate

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	fastjson "github.com/segmentio/encoding/json"
)

// Projection holds the current state. It is safe for concurrent use: one
// goroutine applies events in stream order, any number read.
type Projection struct {
	mu         sync.RWMutex
	keys       map[uuid.UUID]*domain.Key
	principals map[string]*domain.Principal
	roles      map[string]*domain.Role
	// active counts each owner's keys that are neither revoked nor deleted,
	// for the plan limit.
	applied uint64
	changed chan struct{} // closed and replaced whenever applied advances

	// owners holds what verification needs of each principal: its
	// current permissions (the union of its roles') and whether it is
	// disabled. It is computed when a principal or a role changes, never
	// on the verification path, so a role change takes effect on every
	// key of its holders the moment this node applies it.
	owners map[string]Owner

	// forged counts events that were not applied because no trusted
	// writer signed them; onForged hears of each.
	forged   atomic.Uint64
	onForged func(domain.Envelope)

	// snapSize is the length of the last snapshot, which the next one
	// starts its buffer at.
	snapSize atomic.Int64
}

// New returns an empty projection.
func New() *Projection {
	return &Projection{
		keys:       make(map[uuid.UUID]*domain.Key),
		principals: make(map[string]*domain.Principal),
		roles:      make(map[string]*domain.Role),
		owners:     make(map[string]Owner),
		changed:    make(chan struct{}),
	}
}

// Owner is what verification needs of a key's owner.
type Owner struct {
	// Permissions are the owner's current permissions, sorted; shared,
	// never modified.
	Permissions []string
	Disabled    bool
}

// ownerOf computes a principal's Owner from its roles. Call with p.mu held.
func (p *Projection) ownerOf(pr *domain.Principal) Owner {
	var out []string
	for _, name := range pr.Roles {
		if perms, ok := domain.BuiltinRoles[name]; ok {
			out = append(out, perms...)
		} else if r := p.roles[name]; r != nil && !r.Deleted {
			out = append(out, r.Permissions...)
		}
	}
	slices.Sort(out)
	return Owner{Permissions: slices.Clip(slices.Compact(out)), Disabled: pr.Disabled}
}

// recomputeOwners recomputes the Owner of every principal, or, with role
// set, of every principal that holds it. Call with p.mu held for writing.
func (p *Projection) recomputeOwners(role string) {
	for id, pr := range p.principals {
		if role == "" || slices.Contains(pr.Roles, role) {
			p.owners[id] = p.ownerOf(pr)
		}
	}
}

// Apply folds one event of the KEYS stream. Events must arrive in stream
// order; an event at or below the applied sequence is ignored, so a
// replay that overlaps a snapshot is harmless.
func (p *Projection) Apply(env domain.Envelope) {
	if p.applyLocked(env) && p.onForged != nil {
		p.onForged(env)
	}
}

// applyLocked folds env under the lock and reports whether it was refused
// as forged.
func (p *Projection) applyLocked(env domain.Envelope) (forged bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if env.Seq != 0 && env.Seq <= p.applied {
		return false
	}
	if env.Forged != nil {
		// Not applied, but passed over: the projection's position moves
		// on so that nothing waits for it, and the event is reported.
		p.forged.Add(1)
		forged = true
	} else {
		p.apply(env)
	}
	if env.Seq > p.applied {
		p.applied = env.Seq
	}
	close(p.changed)
	p.changed = make(chan struct{})
	return forged
}

func (p *Projection) apply(env domain.Envelope) {
	switch env.Kind() {
	case domain.KindKey:
		id, err := uuid.Parse(env.KeyID)
		if err != nil {
			return
		}
		var k domain.Key
		if old := p.keys[id]; old != nil {
			k = *old
		}
		k = domain.Evolve(k, env)
		p.keys[id] = &k
	case domain.KindPrincipal:
		var pr domain.Principal
		if old := p.principals[env.KeyID]; old != nil {
			pr = *old
		}
		pr = domain.EvolvePrincipal(pr, env)
		p.principals[env.KeyID] = &pr
		if env.Type != domain.TypePrincipalKeyIssued {
			p.owners[env.KeyID] = p.ownerOf(&pr)
		}
	case domain.KindRole:
		var r domain.Role
		if old := p.roles[env.KeyID]; old != nil {
			r = *old
		}
		r = domain.EvolveRole(r, env)
		p.roles[env.KeyID] = &r
		p.recomputeOwners(env.KeyID)
	}
}

// OnForged sets a function that hears of every event the projection
// refuses because no trusted writer signed it (domain.Envelope.Forged). It
// runs after the projection's lock is released, in stream order. Set it
// before the first Apply.
func (p *Projection) OnForged(fn func(domain.Envelope)) { p.onForged = fn }

// Forged returns how many events the projection refused to apply.
func (p *Projection) Forged() uint64 { return p.forged.Load() }

// Applied returns the stream sequence of the last applied event.
func (p *Projection) Applied() uint64 {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.applied
}

// WaitFor blocks until the event at seq has been applied, so a command's
// caller reads its own write. It returns ctx's error if that comes first.
func (p *Projection) WaitFor(ctx context.Context, seq uint64) error {
	for {
		p.mu.RLock()
		applied, ch := p.applied, p.changed
		p.mu.RUnlock()
		if applied >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for sequence %d (applied %d): %w", seq, applied, ctx.Err())
		}
	}
}

// Key returns a copy of a key's state.
func (p *Projection) Key(id string) (domain.Key, bool) {
	u, err := uuid.Parse(id)
	if err != nil {
		return domain.Key{}, false
	}
	return p.KeyByUUID(u)
}

// KeyByUUID returns a copy of a key's state; the verification path looks
// keys up by the id parsed from the token.
func (p *Projection) KeyByUUID(id uuid.UUID) (domain.Key, bool) {
	p.mu.RLock()
	k := p.keys[id]
	p.mu.RUnlock()
	if k == nil {
		return domain.Key{}, false
	}
	return *k, true
}

// Principal returns a copy of a principal's state.
func (p *Projection) Principal(id string) (domain.Principal, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	pr := p.principals[id]
	if pr == nil {
		return domain.Principal{}, false
	}
	return *pr, true
}

// Principals returns every principal, ordered by id.
func (p *Projection) Principals() []domain.Principal {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]domain.Principal, 0, len(p.principals))
	for _, pr := range p.principals {
		out = append(out, *pr)
	}
	slices.SortFunc(out, func(a, b domain.Principal) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Role returns a role, built in or custom. Deleted custom roles are returned
// with Deleted set, so their history chain can continue.
func (p *Projection) Role(name string) (domain.Role, bool) {
	if perms, ok := domain.BuiltinRoles[name]; ok {
		return domain.Role{Name: name, Permissions: perms, BuiltIn: true}, true
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	r := p.roles[name]
	if r == nil {
		return domain.Role{}, false
	}
	return *r, true
}

// Roles returns every live role, built in first, then custom by name.
func (p *Projection) Roles() []domain.Role {
	var out []domain.Role
	for _, name := range []string{domain.RoleSuperadmin, domain.RoleKeyAdmin, domain.RoleAuditor, domain.RoleVerifier} {
		out = append(out, domain.Role{Name: name, Permissions: domain.BuiltinRoles[name], BuiltIn: true})
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	var custom []domain.Role
	for _, r := range p.roles {
		if !r.Deleted {
			custom = append(custom, *r)
		}
	}
	slices.SortFunc(custom, func(a, b domain.Role) int { return cmp.Compare(a.Name, b.Name) })
	return append(out, custom...)
}

// RoleExists reports whether a role can be granted.
func (p *Projection) RoleExists(name string) bool {
	r, ok := p.Role(name)
	return ok && !r.Deleted
}

// PrincipalPermissions returns the union of a principal's roles' permissions,
// sorted. The slice is shared by every caller: do not modify it.
func (p *Projection) PrincipalPermissions(id string) []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.owners[id].Permissions
}

// KeyForVerify returns a copy of a key's state and what verification needs
// of its owner, under one read lock: the verification path's one lookup.
// ownerFound is false for a key whose owner is unknown, which then holds
// no permission.
func (p *Projection) KeyForVerify(id uuid.UUID) (k domain.Key, owner Owner, found bool) {
	p.mu.RLock()
	kp := p.keys[id]
	if kp == nil {
		p.mu.RUnlock()
		return domain.Key{}, Owner{}, false
	}
	k = *kp
	owner = p.owners[k.Owner]
	p.mu.RUnlock()
	return k, owner, true
}

// ActiveKeys counts an owner's keys that are not revoked or deleted (expired
// and disabled keys still count: they can come back).
func (p *Projection) ActiveKeys(owner string) int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	n := 0
	for _, k := range p.keys {
		if k.Owner == owner && k.RevokedAt.IsZero() && k.DeletedAt.IsZero() {
			n++
		}
	}
	return n
}

// Credentials counts owner's credentials at now (see domain.IsCredential),
// leaving out the key except.
func (p *Projection) Credentials(owner string, now time.Time, except string) int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	n := 0
	for _, k := range p.keys {
		if k.Owner == owner && k.ID != except && domain.IsCredential(*k, now) {
			n++
		}
	}
	return n
}

// PrincipalNamed returns a principal whose name is the same as name
// (domain.SameName), other than the principal except.
func (p *Projection) PrincipalNamed(name, except string) (domain.Principal, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for id, pr := range p.principals {
		if id != except && domain.SameName(pr.Name, name) {
			return *pr, true
		}
	}
	return domain.Principal{}, false
}

// Filter selects keys for the key grid.
type Filter struct {
	// Owner limits the result to one owner's keys; empty means every owner.
	Owner string
	// Status is a status name or "all"; empty means every status but deleted.
	Status string
	// Query matches name, comments or id, case-insensitively.
	Query string
	// After is the id of the last key of the previous page.
	After string
	Limit int
	Now   time.Time
}

// List returns one page of keys ordered by id (key ids are UUIDv7, so this
// is creation order), and whether more follow.
func (p *Projection) List(f Filter) ([]domain.Key, bool) {
	q := strings.ToLower(f.Query)
	p.mu.RLock()
	var out []domain.Key
	for _, k := range p.keys {
		if f.Owner != "" && k.Owner != f.Owner {
			continue
		}
		if f.After != "" && k.ID <= f.After {
			continue
		}
		st := k.Status(f.Now)
		switch f.Status {
		case "all":
		case "":
			if st == domain.StatusDeleted {
				continue
			}
		default:
			if string(st) != f.Status {
				continue
			}
		}
		if q != "" && !strings.Contains(strings.ToLower(k.Name), q) && !strings.Contains(strings.ToLower(k.Comments), q) && !strings.Contains(k.ID, q) {
			continue
		}
		out = append(out, *k)
	}
	p.mu.RUnlock()
	slices.SortFunc(out, func(a, b domain.Key) int { return cmp.Compare(a.ID, b.ID) })
	if f.Limit > 0 && len(out) > f.Limit {
		return out[:f.Limit], true
	}
	return out, false
}

// Len returns the number of keys, deleted ones included.
func (p *Projection) Len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.keys)
}

// snapshot is the encoded form of the whole projection. It is derived data:
// its format may change between versions, in which case a start-up simply
// replays from the beginning.
type snapshot struct {
	Version    int                 `json:"version"`
	Applied    uint64              `json:"applied"`
	Keys       []*domain.Key       `json:"keys"`
	Principals []*domain.Principal `json:"principals"`
	Roles      []*domain.Role      `json:"roles"`
}

const snapshotVersion = 1

// Snapshot encodes the projection and returns the sequence it reflects.
func (p *Projection) Snapshot() (uint64, []byte, error) {
	p.mu.RLock()
	s := snapshot{Version: snapshotVersion, Applied: p.applied}
	for _, k := range p.keys {
		s.Keys = append(s.Keys, k)
	}
	for _, pr := range p.principals {
		s.Principals = append(s.Principals, pr)
	}
	for _, r := range p.roles {
		s.Roles = append(s.Roles, r)
	}
	// segmentio's encoder and decoder: a snapshot of 100k keys is 70 MB
	// of JSON, and a start waits for its decoding.
	size := max(p.snapSize.Load()*9/8, int64(len(s.Keys)+len(s.Principals))*768)
	b, err := fastjson.Append(make([]byte, 0, size), s, fastjson.SortMapKeys)
	p.mu.RUnlock()
	p.snapSize.Store(int64(len(b)))
	if err != nil {
		return 0, nil, fmt.Errorf("encode snapshot: %w", err)
	}
	return s.Applied, b, nil
}

// Restore replaces the projection's state with a snapshot. A snapshot of
// another format version is refused so the caller replays instead.
func (p *Projection) Restore(b []byte) error {
	var s snapshot
	if err := fastjson.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("decode snapshot: %w", err)
	}
	if s.Version != snapshotVersion {
		return fmt.Errorf("snapshot version %d, want %d", s.Version, snapshotVersion)
	}
	keys := make(map[uuid.UUID]*domain.Key, len(s.Keys))
	for _, k := range s.Keys {
		id, err := uuid.Parse(k.ID)
		if err != nil {
			return fmt.Errorf("snapshot key id %q: %w", k.ID, err)
		}
		keys[id] = k
	}
	principals := make(map[string]*domain.Principal, len(s.Principals))
	for _, pr := range s.Principals {
		principals[pr.ID] = pr
	}
	roles := make(map[string]*domain.Role, len(s.Roles))
	for _, r := range s.Roles {
		roles[r.Name] = r
	}
	p.mu.Lock()
	p.keys, p.principals, p.roles, p.applied = keys, principals, roles, s.Applied
	p.owners = make(map[string]Owner, len(principals))
	p.recomputeOwners("")
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	return nil
}
