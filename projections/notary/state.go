package notary

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

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
type kvState struct {
	js jetstream.JetStream
	kv jetstream.KeyValue

	mu      sync.Mutex
	pending []pendingPut
}

type pendingPut struct {
	f          jetstream.PubAckFuture
	key        string
	value      []byte
	publishErr error
}

// maxPending bounds the asynchronous puts in flight.
const maxPending = 1000

func openKVState(ctx context.Context, js jetstream.JetStream) (*kvState, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: Bucket, History: 1, Storage: jetstream.FileStorage,
		Description: "keyledger notary: tiles, event sequences, chains and resume points"})
	if err != nil {
		return nil, fmt.Errorf("notary bucket: %w", err)
	}
	return &kvState{js: js, kv: kv}, nil
}

func (s *kvState) Get(ctx context.Context, key string) ([]byte, error) {
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
// is, without waiting for the acknowledgement.
func (s *kvState) PutAsync(ctx context.Context, key string, value []byte) error {
	f, err := s.js.PublishAsync("$KV."+Bucket+"."+key, value)
	s.mu.Lock()
	s.pending = append(s.pending, pendingPut{f: f, key: key, value: value, publishErr: err})
	full := len(s.pending) >= maxPending
	s.mu.Unlock()
	if full {
		return s.Sync(ctx)
	}
	return nil
}

// Sync waits for the asynchronous puts; one that failed is put again,
// synchronously.
func (s *kvState) Sync(ctx context.Context) error {
	s.mu.Lock()
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, p := range pending {
		ok := p.publishErr == nil
		if ok {
			select {
			case <-p.f.Ok():
			case <-p.f.Err():
				ok = false
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if !ok {
			if err := s.Put(ctx, p.key, p.value); err != nil {
				return err
			}
		}
	}
	return nil
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

// chainKey is the key of an aggregate's last hash in fold generation gen:
// a notary that refolds a stream from its start begins a new generation,
// so that the hashes its earlier folds stored do not mislead it.
func chainKey(gen, agg string) string {
	sum := sha256.Sum256([]byte(agg))
	return "chain." + gen + "." + hex.EncodeToString(sum[:16])
}

// savedState is what a restarted notary resumes a stream from: the tree
// of its last checkpoint. Its incomplete tiles and index segment are stored
// before it, under their own keys; the KEYS chains changed since the previous saved state
// are stored in it, and under their chain keys after it (a restart puts
// them there again, in case it came between).
type savedState struct {
	Gen    string            `json:"gen"`
	Folded uint64            `json:"folded"` // the last stream sequence folded
	Size   uint64            `json:"size"`
	Hashes []string          `json:"hashes"` // the compact range [0, size)
	Chains map[string]string `json:"chains,omitempty"`
}
