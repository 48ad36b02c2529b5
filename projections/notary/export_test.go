package notary

import (
	"context"
	"crypto/ed25519"
	"math"
	"time"
)

// Read is how many messages of stream the notary has read since it started.
func Read(n *Notary, stream string) uint64 {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.read[stream]
}

// SetFeedCheck sets how often a fed stream is checked for what its feed did
// not bring, for the notaries started until the test ends.
func SetFeedCheck(t interface{ Cleanup(func()) }, d time.Duration) {
	old := feedCheck
	feedCheck = d
	t.Cleanup(func() { feedCheck = old })
}

// discard is a stateStore that keeps nothing: folding into it measures
// what the notary itself holds.
type discard struct{}

func (discard) Get(context.Context, string) ([]byte, error)    { return nil, nil }
func (discard) Put(context.Context, string, []byte) error      { return nil }
func (discard) PutAsync(context.Context, string, []byte) error { return nil }
func (discard) Sync(context.Context) error                     { return nil }

// NewFolding returns a notary that only folds (Fold), storing nothing
// and signing no checkpoint.
func NewFolding() *Notary {
	n := New(nil, nil, ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)), Config{Every: math.MaxInt}, nil)
	n.store = discard{}
	return n
}

// Fold folds the message at seq of stream as the notary's subscription does.
func Fold(n *Notary, stream string, seq uint64, data []byte) {
	n.add(context.Background(), stream, Message{Seq: seq, Events: [][]byte{data}})
}

// SetChainPartEntries makes chain shards be stored in parts of n
// aggregates until the test ends.
func SetChainPartEntries(t interface{ Cleanup(func()) }, n int) {
	old := chainPartEntries
	chainPartEntries = n
	t.Cleanup(func() { chainPartEntries = old })
}
