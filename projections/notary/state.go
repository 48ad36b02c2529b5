package notary

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the JetStream key-value bucket the notary keeps its state in:
// the tiles of its trees, the index of their event ids (index.go), the last
// hash of every KEYS aggregate, and per stream the compact range
// of its last checkpoint, from which a restarted notary resumes.
const Bucket = "KEYLEDGER_NOTARY"

// stateStore is where the notary keeps what outlives a restart.
type stateStore interface {
	// Get returns nil, nil for a key that is not there.
	Get(ctx context.Context, key string) ([]byte, error)
	Put(ctx context.Context, key string, value []byte) error
	// PutAsync stores a value without waiting; Sync waits until every
	// value put so far is stored.
	PutAsync(ctx context.Context, key string, value []byte) error
	Sync(ctx context.Context) error
}

// kvState is a stateStore on a JetStream key-value bucket.
//
// On a server that fsyncs every write, a put costs about a millisecond
// whatever its size, so the notary's bulk writes (tiles, index segments,
// chain shards) are published without waiting: their acknowledgements are
// collected by Sync, which the notary calls before it signs or saves
// anything that names them. Until then Get answers them from memory.
type kvState struct {
	js jetstream.JetStream
	kv jetstream.KeyValue

	// syncMu serialises Sync: a Sync returns only once every put made
	// before it was called is stored, even those another Sync collected.
	syncMu  sync.Mutex
	mu      sync.Mutex
	pending []pendingPut
	// unacked is the newest value of each key put asynchronously and not
	// yet known to be stored.
	unacked map[string]unacked
	puts    uint64 // puts made, numbering them
}

type unacked struct {
	put   uint64
	value []byte
}

type pendingPut struct {
	f          jetstream.PubAckFuture
	put        uint64
	key        string
	value      []byte
	publishErr error
}

// maxPending bounds the asynchronous puts in flight.
const maxPending = 1000

// ackWait is how long Sync waits for the acknowledgements of the puts it
// collected (all of them, from its first wait on) before it puts the rest
// again synchronously, and how long such a put may take.
var ackWait = 10 * time.Second

func openKVState(ctx context.Context, js jetstream.JetStream) (*kvState, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: Bucket, History: 1, Storage: jetstream.FileStorage,
		Description: "keyledger notary: tiles, event sequences, chains and resume points"})
	if err != nil {
		return nil, fmt.Errorf("notary bucket: %w", err)
	}
	return &kvState{js: js, kv: kv, unacked: map[string]unacked{}}, nil
}

func (s *kvState) Get(ctx context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	u, ok := s.unacked[key]
	s.mu.Unlock()
	if ok {
		return bytes.Clone(u.value), nil
	}
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return e.Value(), nil
}

func (s *kvState) Put(ctx context.Context, key string, value []byte) error {
	if _, err := s.kv.Put(ctx, key, value); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// PutAsync publishes to the bucket's subject of key, which is what a put
// is, without waiting for the acknowledgement. The value is copied: the
// caller may reuse it.
func (s *kvState) PutAsync(ctx context.Context, key string, value []byte) error {
	value = bytes.Clone(value)
	s.mu.Lock()
	// Published under mu, so that the puts of a key are acknowledged in
	// the order unacked holds them.
	f, err := s.js.PublishAsync("$KV."+Bucket+"."+key, value)
	s.puts++
	s.pending = append(s.pending, pendingPut{f: f, put: s.puts, key: key, value: value, publishErr: err})
	s.unacked[key] = unacked{put: s.puts, value: value}
	full := len(s.pending) >= maxPending
	s.mu.Unlock()
	if full {
		return s.Sync(ctx)
	}
	return nil
}

// Sync waits for the asynchronous puts made so far; one that failed is put
// again, synchronously. When it fails, what it did not store stays pending
// for the next Sync.
func (s *kvState) Sync(ctx context.Context) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	s.mu.Lock()
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	timeout := time.NewTimer(ackWait)
	defer timeout.Stop()
	timedOut := false
	for i, p := range pending {
		ok := p.publishErr == nil
		switch {
		case ok && timedOut:
			select {
			case <-p.f.Ok():
			default:
				ok = false
			}
		case ok:
			select {
			case <-p.f.Ok():
			case <-p.f.Err():
				ok = false
			case <-timeout.C:
				// An acknowledgement the connection dropped (a slow
				// consumer on a busy node) never comes: this put and
				// those after it not acknowledged yet are put again,
				// each waited for.
				timedOut, ok = true, false
			case <-ctx.Done():
				s.requeue(pending[i:])
				return ctx.Err()
			}
		}
		// Put again, unless a newer put of the key is pending: this one
		// would overwrite it.
		if !ok && s.newest(p) {
			pctx, cancel := context.WithTimeout(ctx, ackWait)
			err := s.Put(pctx, p.key, p.value)
			cancel()
			if err != nil {
				s.requeue(pending[i:])
				return err
			}
		}
		s.mu.Lock()
		if u, ok := s.unacked[p.key]; ok && u.put == p.put {
			delete(s.unacked, p.key) // no newer put of the key is pending
		}
		s.mu.Unlock()
	}
	return nil
}

// newest reports whether p is the newest put of its key.
func (s *kvState) newest(p pendingPut) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.unacked[p.key]
	return !ok || u.put == p.put
}

// requeue puts back, ahead of the puts made since, the puts a failed Sync
// did not store; they are put again synchronously by the next Sync.
func (s *kvState) requeue(rest []pendingPut) {
	again := make([]pendingPut, len(rest))
	for i, p := range rest {
		again[i] = pendingPut{put: p.put, key: p.key, value: p.value, publishErr: errors.New("not acknowledged")}
	}
	s.mu.Lock()
	s.pending = append(again, s.pending...)
	s.mu.Unlock()
}

// memState is a stateStore in memory: the notary falls back on it when it
// cannot create its bucket, and then grows with the log and refolds every
// stream at each start, as it did before it had a bucket.
type memState struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *memState) Get(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key], nil
}

func (s *memState) Put(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[key] = append([]byte(nil), value...)
	return nil
}

func (s *memState) PutAsync(ctx context.Context, key string, value []byte) error {
	return s.Put(ctx, key, value)
}

func (s *memState) Sync(context.Context) error { return nil }

func tileKey(stream string, level uint, index uint64) string {
	return fmt.Sprintf("tile.%s.%d.%d", stream, level, index)
}

func stateKey(stream string) string { return "state." + stream }

// chainShardKey is the key of one shard of the KEYS chains (chains.go) in
// fold generation gen, in one of its two slots: a notary that refolds a
// stream from its start begins a new generation, so that the shards its
// earlier folds stored do not mislead it.
func chainShardKey(gen string, shard int, slot byte) string {
	return fmt.Sprintf("chains.%s.%02x.%c", gen, shard, slot)
}

// chainPartKey is the key of one part of a stored chain shard: the first
// part has the shard's own key.
func chainPartKey(gen string, shard int, slot byte, part int) string {
	if part == 0 {
		return chainShardKey(gen, shard, slot)
	}
	return fmt.Sprintf("%s.%d", chainShardKey(gen, shard, slot), part)
}

// savedState is what a restarted notary resumes a stream from: the tree
// of its last checkpoint. Its incomplete tiles and index segment, and on
// KEYS the shards of the chains, are stored before it, under their own
// keys.
type savedState struct {
	Gen    string   `json:"gen"`
	Folded uint64   `json:"folded"` // the last stream sequence folded
	Size   uint64   `json:"size"`
	Hashes []string `json:"hashes"` // the compact range [0, size)
	// ChainSlots (KEYS only) names the slot each chain shard is stored in
	// at this state: '0' or '1', '-' for a shard with no aggregate yet.
	ChainSlots string `json:"chain_slots,omitempty"`
	// ChainParts (KEYS only, when a shard has more than one part) is how
	// many parts each chain shard is stored in; absent, one each.
	ChainParts []int `json:"chain_parts,omitempty"`
}
