package notary_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/notary"
	"github.com/nats-io/nats.go/jetstream"
)

// TestRestartedNotaryResumesFromItsCheckpoint restarts the notary on a log
// whose every event is covered by its last checkpoint: it reads none of
// them again, answers proofs for the first events from the stored tiles
// and index, and goes on checking the chains of the keys it saw before,
// from the chain shards its state names (not those a crashed save left).
func TestRestartedNotaryResumesFromItsCheckpoint(t *testing.T) {
	l := newLedger(t)
	ctx := context.Background()
	// Enough usage events for complete tiles and index segments.
	usage := eventstore.NewUsagePublisher(l.store, eventstore.UsageConfig{})
	for i := range 3*notary.SegmentSize + 100 {
		env, _ := domain.NewEnvelope(uuid.Must(uuid.NewV7()), uuid.NewString(), domain.KeyUsed{Code: domain.OutcomeValid}, time.Now(), "svc",
			&domain.RequestContext{SourceIP: fmt.Sprintf("10.1.%d.%d", i/250, i%250)})
		env.Seal("")
		if err := usage.Publish(ctx, env); err != nil {
			t.Fatal(err)
		}
		l.usage = append(l.usage, env.ID.String())
	}
	if err := usage.Close(ctx); err != nil {
		t.Fatal(err)
	}
	l.notary.Flush(ctx)
	l.stopNotary()
	pub := l.key.Public().(ed25519.PublicKey)
	for _, c := range l.notary.Latest() {
		want := uint64(len(l.keyEvents))
		if c.Stream == domain.StreamUsage {
			want = uint64(len(l.usage))
		}
		if c.Size != want {
			t.Fatalf("%s last checkpointed at %d of %d events", c.Stream, c.Size, want)
		}
	}
	// A save that crashed after writing its chain shards, before the
	// state naming them: the shards are in the slots the stored state
	// does not name, which the restart must not read.
	kv, saved := savedKEYSState(t, l)
	var st struct {
		Gen        string `json:"gen"`
		ChainSlots string `json:"chain_slots"`
	}
	if err := json.Unmarshal(saved, &st); err != nil || len(st.ChainSlots) == 0 || strings.Trim(st.ChainSlots, "-") == "" {
		t.Fatalf("saved KEYS state %s: %v", saved, err)
	}
	for i, slot := range st.ChainSlots {
		for _, other := range "01" {
			if other != slot {
				if _, err := kv.Put(ctx, fmt.Sprintf("chains.%s.%02x.%c", st.Gen, i, other), bytes.Repeat([]byte{0xee}, 48)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	n := notary.New(l.store.JetStream(), l.store, l.key, notary.Config{Every: 5, Interval: time.Hour}, nil)
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(nctx) }()
	t.Cleanup(func() { cancel(); <-done })

	proven := func(id string) notary.Proof {
		t.Helper()
		var p notary.Proof
		checkFor(t, func() (err error) { p, err = n.ProofFor(id); return err })
		st, _ := l.store.JetStream().Stream(ctx, p.Stream)
		m, err := st.GetMsg(ctx, p.Seq)
		if err != nil {
			t.Fatal(err)
		}
		if err := notary.CheckProof(p, eventIn(t, m, id), pub); err != nil {
			t.Fatalf("proof of %s: %v", id, err)
		}
		return p
	}
	// The ledger's first usage events are packs (usagePacks), the rest
	// one event a message: event i is leaf i and in message seqOf(i).
	seqOf := func(i int) uint64 {
		seq := 0
		for _, n := range usagePacks {
			seq++
			if i < n {
				return uint64(seq)
			}
			i -= n
		}
		return uint64(seq + i + 1)
	}
	if p := proven(l.keyEvents[0]); p.Seq != 1 || p.Checkpoint.Size != uint64(len(l.keyEvents)) {
		t.Fatalf("proof of the first event: seq %d against a checkpoint of %d", p.Seq, p.Checkpoint.Size)
	}
	for _, i := range []int{0, 1, 3, 5, 6, 11, 12, notary.SegmentSize, 2*notary.SegmentSize + 17, len(l.usage) - 1} {
		if p := proven(l.usage[i]); p.Seq != seqOf(i) || p.Index != uint64(i) || p.Checkpoint.Size != uint64(len(l.usage)) {
			t.Fatalf("proof of usage event %d: seq %d, leaf %d, against a checkpoint of %d", i, p.Seq, p.Index, p.Checkpoint.Size)
		}
	}
	for _, s := range notary.Streams {
		if got := notary.Read(n, s); got != 0 {
			t.Fatalf("the restarted notary read %d messages of %s again", got, s)
		}
	}
	if _, err := n.ProofFor(uuid.NewString()); err == nil || !strings.Contains(err.Error(), "not in the log") {
		t.Fatalf("proof of an unknown event: %v", err)
	}

	// A key created before the restart: its next event extends the chain
	// the notary stored, and an event that does not is caught.
	var k domain.Key
	_ = notary.ReadStream(ctx, l.store.JetStream(), domain.StreamKeys, 1, false, func(seq uint64, data []byte) error {
		env, _ := domain.UnmarshalEnvelope(data)
		if seq == 1 {
			k.ID = env.KeyID
		}
		if env.KeyID == k.ID {
			env.Seq = seq
			k = domain.Evolve(k, env)
		}
		return nil
	})
	extend := func(prev string) domain.Envelope {
		env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), k.ID, domain.KeyUpdated{Comments: ptr("after the restart")}, time.Now(), "t", nil)
		if err != nil {
			t.Fatal(err)
		}
		env.PrevHash = prev
		env.Seal(prev)
		seq, err := l.store.Append(ctx, k.Version, []domain.Envelope{env})
		if err != nil {
			t.Fatal(err)
		}
		env.Seq = seq
		k = domain.Evolve(k, env)
		return env
	}
	good := extend(k.LastHash)
	checkFor(t, func() error {
		if got := notary.Read(n, domain.StreamKeys); got != 1 {
			return fmt.Errorf("read %d new KEYS messages", got)
		}
		return nil
	})
	if why := n.Broken(); why != "" {
		t.Fatalf("an event extending a chain from before the restart: %s", why)
	}
	bad := extend("not the previous hash")
	checkFor(t, func() error {
		if why := n.Broken(); !strings.Contains(why, bad.ID.String()) || !strings.Contains(why, "prev_hash") {
			return fmt.Errorf("Broken() = %q", why)
		}
		return nil
	})
	n.Flush(ctx)
	proven(good.ID.String())
	proven(l.keyEvents[1])
}

// TestRestartReadsChainShardsInParts: chain shards too large for one
// message are stored in parts, which the state counts; a restart reads
// every part (no key's chain is forgotten) and folds nothing again.
func TestRestartReadsChainShardsInParts(t *testing.T) {
	notary.SetChainPartEntries(t, 2)
	l := newLedger(t)
	ctx := context.Background()
	// 300 more keys: about five a shard, so most shards have parts.
	keys := make([]domain.Key, 300)
	for i := range keys {
		envs, err := domain.Decide(domain.Key{}, domain.CreateKey{Meta: domain.Meta{Actor: "t"}, KeyID: uuid.Must(uuid.NewV7()).String(),
			Owner: "o", Name: fmt.Sprintf("many %d", i), SecretHash: domain.HashSecret(domain.Secret{byte(i)})}, time.Now(), uuid.New)
		if err != nil {
			t.Fatal(err)
		}
		seq, err := l.store.Append(ctx, 0, envs)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range envs {
			e.Seq = seq
			keys[i] = domain.Evolve(keys[i], e)
		}
	}
	want := uint64(len(l.keyEvents) + len(keys))
	checkFor(t, func() error {
		l.notary.Flush(ctx)
		for _, c := range l.notary.Latest() {
			if c.Stream == domain.StreamKeys && c.Size != want {
				return fmt.Errorf("KEYS checkpointed at %d of %d events", c.Size, want)
			}
		}
		return nil
	})
	l.stopNotary()
	_, saved := savedKEYSState(t, l)
	var st struct {
		ChainParts []int `json:"chain_parts"`
	}
	if err := json.Unmarshal(saved, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.ChainParts) != 64 || slices.Max(st.ChainParts) < 3 {
		t.Fatalf("saved KEYS state names parts %v, want 64 shards, some in 3 parts or more", st.ChainParts)
	}

	n := notary.New(l.store.JetStream(), l.store, l.key, notary.Config{Every: 1, Interval: time.Hour}, nil)
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(nctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// Every key's next event extends the chain the restart read back.
	for i, k := range keys {
		env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), k.ID, domain.KeyUpdated{Comments: ptr("after")}, time.Now(), "t", nil)
		if err != nil {
			t.Fatal(err)
		}
		env.PrevHash = k.LastHash
		env.Seal(k.LastHash)
		if _, err := l.store.Append(ctx, k.Version, []domain.Envelope{env}); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
	}
	checkFor(t, func() error {
		if got := notary.Read(n, domain.StreamKeys); got != uint64(len(keys)) {
			return fmt.Errorf("the restarted notary read %d KEYS messages, want the %d new ones", got, len(keys))
		}
		return nil
	})
	if why := n.Broken(); why != "" {
		t.Fatalf("a chain from before the restart was not read back: %s", why)
	}
}

// savedKEYSState returns the notary's bucket and the KEYS state saved in it.
func savedKEYSState(t *testing.T, l *ledger) (jetstream.KeyValue, []byte) {
	t.Helper()
	ctx := context.Background()
	kv, err := l.store.JetStream().KeyValue(ctx, notary.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "state."+domain.StreamKeys)
	if err != nil {
		t.Fatal(err)
	}
	return kv, e.Value()
}
