package notary

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/transparency-dev/merkle/compact"
)

// catchUpEvery is how many times Config.Every events a notary that is
// behind its stream (a first fold, a restart after a long stop) folds
// between checkpoints: each costs a signed event and a saved state, a few
// fsyncs, which at every Every events would bound a first fold of millions
// of events by the disk. Config.Interval still checkpoints meanwhile.
const catchUpEvery = 100

// Streams are the streams the notary covers.
var Streams = []string{domain.StreamKeys, domain.StreamUsage, domain.StreamAlerts}

// LoadOrCreateKey reads an Ed25519 signing key (its 32-byte seed, hex) from
// path, creating one with mode 0600 when the file does not exist.
func LoadOrCreateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		seed := make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, []byte(hex.EncodeToString(seed)+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("write notary key: %w", err)
		}
		return ed25519.NewKeyFromSeed(seed), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read notary key: %w", err)
	}
	seed, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("notary key %s is not a hex Ed25519 seed", path)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// KeyID names a public key: the hex of the first 8 bytes of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Publisher stores checkpoint events.
type Publisher interface {
	PublishCheckpoint(ctx context.Context, env domain.Envelope) (uint64, error)
}

// Config tunes the notary.
type Config struct {
	// Every and Interval: a checkpoint of a stream is published after
	// Every new events, or Interval after the last one if the tree grew.
	Every    int
	Interval time.Duration
	// OnBroken is called once for the first event whose hash does not
	// recompute or whose prev_hash breaks its key's chain.
	OnBroken func(eventID, why string)
	// Feeds are the streams that the node already follows and decodes
	// (USAGE): the notary folds what the node's subscription offers to a
	// stream's Feed, and reads that stream itself only for what it was not
	// offered (feed.go).
	Feeds map[string]*Feed
	// Verdict is the event store's verdict on a message the notary read
	// itself (a Feed's messages come with theirs): why it is
	// quarantined, or nil. envs are the message's events decoded, errs[i]
	// why the i-th does not decode (nil when all did). A quarantined
	// message is still folded into the tree (the tree proves what was
	// stored) but its events are not checked against the chains: it is
	// not part of the accepted history, and it never marks the log
	// broken. When nil, only what does not decode is quarantined.
	Verdict func(stream string, m Message, envs []domain.Envelope, errs []error) error
}

// Notary folds the streams into trees and signs checkpoints.
type Notary struct {
	js  jetstream.JetStream
	pub Publisher
	key ed25519.PrivateKey
	cfg Config
	log *slog.Logger

	// cpMu serialises signing and publishing, so that the checkpoints of
	// a stream are stored in the order of their sizes.
	cpMu sync.Mutex

	// store keeps the tiles of the trees, the sequence of every event by
	// its id, the KEYS chains and where each stream resumes (state.go).
	store stateStore

	mu     sync.RWMutex
	trees  map[string]*CompactTree
	ids    map[string][]byte // stream -> the incomplete segment of its event index (index.go)
	scan   sync.Mutex        // serialises the lookups that read a whole index
	folded map[string]uint64 // stream -> last sequence folded into its tree
	read   map[string]uint64 // stream -> messages read since this start
	gen    map[string]string // stream -> fold generation (state.go, chainKey)
	latest map[string]domain.CheckpointPublished
	signed map[string]uint64 // stream -> size of the last checkpoint published
	// earlier holds the checkpoints stored before this start, by stream,
	// in order of size: as the rebuilt tree reaches each size its root must
	// match, or the log was rewritten while the notary was not looking.
	earlier map[string][]domain.CheckpointPublished
	// chains holds the last hash of every KEYS aggregate (chains.go).
	chains  *chainSet
	broken  string
	pending map[string]int
	// fed counts the messages of fed streams folded as their feed brought
	// them, selfRead those the notary read from the stream itself because
	// its feed had not brought them.
	fed, selfRead atomic.Uint64
}

// New returns a notary; Run starts it.
func New(js jetstream.JetStream, pub Publisher, key ed25519.PrivateKey, cfg Config, logger *slog.Logger) *Notary {
	if cfg.Every <= 0 {
		cfg.Every = 1000
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	n := &Notary{js: js, pub: pub, key: key, cfg: cfg, log: logger.With("component", "notary"),
		trees: map[string]*CompactTree{}, ids: map[string][]byte{}, folded: map[string]uint64{}, read: map[string]uint64{}, gen: map[string]string{},
		latest: map[string]domain.CheckpointPublished{}, signed: map[string]uint64{}, earlier: map[string][]domain.CheckpointPublished{},
		chains: newChainSet(), pending: map[string]int{}}
	for _, s := range Streams {
		n.trees[s] = NewCompactTree(n.tileSink(s))
		n.ids[s] = make([]byte, 0, SegmentSize*entrySize)
		n.gen[s] = newGen()
	}
	return n
}

func newGen() string { return strings.ReplaceAll(uuid.Must(uuid.NewV7()).String(), "-", "") }

// tileSink stores the complete tiles of a stream's tree without waiting
// (state.go): checkpoint waits for them (Sync) before it signs a tree that
// has them, so no checkpoint names a tile that is not stored.
func (n *Notary) tileSink(stream string) TileSink {
	return func(level uint, index uint64, tile []byte) error {
		if err := n.putAsync(tileKey(stream, level, index), tile); err != nil {
			// The tile stays pending: no checkpoint is signed until a
			// Sync stores it.
			n.log.Warn("notary tile", "stream", stream, "level", level, "index", index, "err", err)
		}
		return nil
	}
}

// putAsync stores a value without waiting. An error is that of the Sync
// a full pipeline waited for: the value itself stays pending and is put
// again by the next Sync.
func (n *Notary) putAsync(key string, value []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.store.PutAsync(ctx, key, value)
}

// tiles reads the stored tiles of a stream's tree.
func tiles(store stateStore, stream string) TileSource {
	return func(ctx context.Context, level uint, index uint64) ([]byte, error) {
		return store.Get(ctx, tileKey(stream, level, index))
	}
}

// PublicKey returns the key checkpoints verify with.
func (n *Notary) PublicKey() ed25519.PublicKey { return n.key.Public().(ed25519.PublicKey) }

// Run folds every stream from where its last saved checkpoint left it (from
// its first message when there is none) and publishes checkpoints until ctx
// ends.
func (n *Notary) Run(ctx context.Context) error {
	kv, err := openKVState(ctx, n.js)
	n.mu.Lock()
	if err != nil {
		n.log.Warn("notary state in memory: every start refolds the streams", "err", err)
		n.store = &memState{m: map[string][]byte{}}
	} else {
		n.store = kv
	}
	n.mu.Unlock()
	if err := n.loadCheckpoints(ctx); err != nil && ctx.Err() == nil {
		// Without them the notary still signs new checkpoints; only the
		// comparison with the ones signed before this start is lost (and
		// the streams are refolded: a saved state is only trusted when a
		// signed checkpoint vouches for its root).
		n.log.Warn("read earlier checkpoints", "err", err)
	}
	var wg sync.WaitGroup
	for _, s := range Streams {
		c, err := n.resume(ctx, s)
		if err != nil && ctx.Err() == nil {
			n.log.Info("refolding stream from its start", "stream", s, "why", err)
		}
		if err == nil {
			wg.Go(func() { n.recheck(ctx, s, c) })
		}
	}
	for _, s := range Streams {
		if f := n.cfg.Feeds[s]; f != nil {
			wg.Go(func() { n.followFed(ctx, s, f) })
			continue
		}
		wg.Go(func() { n.follow(ctx, s) })
	}
	t := time.NewTicker(n.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-t.C:
			for _, s := range Streams {
				n.checkpoint(ctx, s)
			}
		}
	}
}

// loadCheckpoints reads the checkpoints stored before this start. A
// restarted notary then neither signs again what it signed before nor
// leaves proofs unanswered until its next checkpoint, and it checks the
// rebuilt trees against them.
func (n *Notary) loadCheckpoints(ctx context.Context) error {
	pub := n.PublicKey()
	defer func() {
		// Checkpoints stored before they were serialised may be out of
		// order; add walks each list by size.
		n.mu.Lock()
		for _, list := range n.earlier {
			sort.SliceStable(list, func(i, j int) bool { return list[i].Size < list[j].Size })
		}
		n.mu.Unlock()
	}()
	return ReadMessages(ctx, n.js, domain.StreamCheckpoints, 1, false, func(m Message) error {
		seq := m.Seq
		envs, _, quarantine := n.judge(domain.StreamCheckpoints, m)
		if quarantine != nil || len(envs) != 1 {
			// No node wrote it: it is not one of this ledger's
			// checkpoints, and the node that raises forged_event for
			// it is the one reading the stream.
			n.log.Warn("quarantined checkpoint message ignored", "seq", seq, "why", quarantine)
			return nil
		}
		env := envs[0]
		ev, _ := env.Decode()
		c, ok := ev.(domain.CheckpointPublished)
		if !ok || n.trees[c.Stream] == nil {
			return nil
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		if err := c.Verify(pub); err != nil {
			n.markBroken(env.ID.String(), fmt.Sprintf("%s sequence %d: %v", domain.StreamCheckpoints, seq, err))
			return nil
		}
		n.earlier[c.Stream] = append(n.earlier[c.Stream], c)
		n.signed[c.Stream] = max(n.signed[c.Stream], c.Size)
		return nil
	})
}

// follow folds a stream from the message after the last folded one, live
// until ctx ends.
func (n *Notary) follow(ctx context.Context, stream string) { n.readStream(ctx, stream, true, nil) }

// readStream folds a stream from the message after the last folded one: up to
// its last message now, or with live until ctx ends. It retries while the
// stream cannot be read; count, if set, counts the messages it folds.
func (n *Notary) readStream(ctx context.Context, stream string, live bool, count *atomic.Uint64) {
	for ctx.Err() == nil {
		n.mu.RLock()
		from := n.folded[stream] + 1
		n.mu.RUnlock()
		err := ReadMessages(ctx, n.js, stream, from, live, func(m Message) error {
			if count != nil {
				count.Add(1)
			}
			n.add(ctx, stream, m)
			return nil
		})
		if ctx.Err() != nil || (err == nil && !live) {
			return
		}
		if err != nil {
			n.log.Warn("notary read", "stream", stream, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// add folds the events of the message m (one, or the events of a pack),
// each a leaf of the tree, under one hold of the lock: a saved state never
// ends inside a message. m.Pending is how many messages of the stream
// follow it: while it catches up, a checkpoint is taken every
// catchUpEvery*Every events (and each Interval), not every Every.
func (n *Notary) add(ctx context.Context, stream string, m Message) {
	seq, events, behind := m.Seq, m.Events, m.Pending
	envs, _, quarantine := n.judge(stream, m)
	n.mu.Lock()
	t := n.trees[stream]
	if want := n.folded[stream] + 1; seq != want {
		// A sequence the stream no longer has: the tree cannot skip it.
		n.markBroken(fmt.Sprintf("%s:%d", stream, want), fmt.Sprintf("%s sequence %d is missing (next stored is %d)", stream, want, seq))
	}
	n.folded[stream] = seq
	n.read[stream]++
	for i, data := range events {
		n.addLeaf(ctx, stream, seq, data, envs[i], quarantine != nil)
	}
	for len(n.earlier[stream]) > 0 && n.earlier[stream][0].Size <= t.Size() {
		c := n.earlier[stream][0]
		n.earlier[stream] = n.earlier[stream][1:]
		if c.Size < t.Size() {
			continue // an older checkpoint of a size already passed (they are stored in order)
		}
		if hex.EncodeToString(t.Root()) != c.Root {
			n.markBroken(fmt.Sprintf("%s:%d", stream, seq), fmt.Sprintf(
				"the tree of the first %d events of %s does not match the checkpoint signed at %s: an event at or before sequence %d was altered, removed, inserted or reordered",
				c.Size, stream, c.At.Format(time.RFC3339Nano), seq))
			continue
		}
		if c.Size > n.latest[stream].Size {
			n.latest[stream] = c
		}
	}
	n.pending[stream] += len(events)
	// Catching up: the messages still to come hold (about, by this one)
	// catchUpEvery*Every events or more.
	catchUp := behind*uint64(len(events)) >= uint64(catchUpEvery*n.cfg.Every)
	due := n.pending[stream] >= n.cfg.Every && (!catchUp || n.pending[stream] >= catchUpEvery*n.cfg.Every)
	n.mu.Unlock()
	if due {
		n.checkpoint(ctx, stream)
	}
}

// judge decodes m's events, unless its feed did, and returns them with the
// verdict on m: the feed's, Config.Verdict's, or (without one) whether
// every event decoded.
func (n *Notary) judge(stream string, m Message) ([]domain.Envelope, []error, error) {
	envs, errs := m.Envelopes, m.EnvelopeErrs
	fed := len(envs) == len(m.Events)
	if !fed {
		envs = make([]domain.Envelope, len(m.Events))
		errs = nil
		for i, data := range m.Events {
			env, err := domain.UnmarshalEnvelope(data)
			if err != nil {
				if errs == nil {
					errs = make([]error, len(m.Events))
				}
				errs[i] = err
				continue
			}
			envs[i] = env
		}
	}
	if fed && m.Quarantine != nil {
		return envs, errs, m.Quarantine
	}
	for _, err := range errs {
		if err != nil {
			return envs, errs, domain.Errorf(domain.EFORBIDDEN, "undecodable", "%s sequence %d is not a valid event: %v", stream, m.Seq, err)
		}
	}
	if fed || n.cfg.Verdict == nil {
		return envs, errs, nil
	}
	return envs, errs, n.cfg.Verdict(stream, m, envs, errs)
}

// addLeaf folds one event of the message at seq, data as stored and env
// decoded from it; n.mu is held. The event of a quarantined message is a
// leaf like any other, indexed by its id when it has one, and is not
// checked: it is no part of the accepted history.
func (n *Notary) addLeaf(ctx context.Context, stream string, seq uint64, data []byte, env domain.Envelope, quarantined bool) {
	t := n.trees[stream]
	if err := t.Append(data); err != nil {
		n.log.Error("notary tree", "stream", stream, "seq", seq, "err", err)
	}
	// Every leaf has its entry in the index, the nil id when the message
	// is not an event.
	n.ids[stream] = appendEntry(n.ids[stream], env.ID, seq)
	if len(n.ids[stream]) == SegmentSize*entrySize {
		if err := n.putAsync(segmentKey(stream, (t.Size()-1)/SegmentSize), n.ids[stream]); err != nil {
			n.log.Error("notary index", "stream", stream, "seq", seq, "err", err)
		}
		n.ids[stream] = n.ids[stream][:0]
	}
	if quarantined {
		return
	}
	why := checkEventHashed(env, env.ComputeHash(), nil, "")
	if why == "" && stream == domain.StreamKeys {
		why = n.chains.check(env)
	}
	if why != "" {
		n.markBroken(env.ID.String(), why)
	}
}

// checkEvent recomputes an event's hash and, on KEYS, checks that it
// extends its aggregate's chain; it returns why not, or "".
func checkEvent(env domain.Envelope, chains map[string]string, stream string) string {
	return checkEventHashed(env, env.ComputeHash(), chains, stream)
}

// checkEventHashed is checkEvent with the event's hash already recomputed.
func checkEventHashed(env domain.Envelope, got string, chains map[string]string, stream string) string {
	if got != env.Hash {
		return fmt.Sprintf("event %s: stored hash %s, contents hash to %s", env.ID, env.Hash, got)
	}
	if stream != domain.StreamKeys {
		return ""
	}
	agg := env.Kind() + "/" + env.KeyID
	if prev := chains[agg]; env.PrevHash != prev {
		return fmt.Sprintf("event %s of %s: prev_hash %q, but the previous event of that %s hashes to %q", env.ID, env.KeyID, env.PrevHash, strings.TrimSuffix(env.Kind(), "s"), prev)
	}
	chains[agg] = env.Hash
	return ""
}

func (n *Notary) markBroken(eventID, why string) {
	if n.broken != "" {
		return
	}
	n.broken = why
	n.log.Error("audit chain broken", "event", eventID, "why", why)
	if n.cfg.OnBroken != nil {
		go n.cfg.OnBroken(eventID, why)
	}
}

// Broken returns why the log does not verify, or "".
func (n *Notary) Broken() string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.broken
}

// checkpoint signs and publishes the stream's tree if it grew past the
// last checkpoint, once every tile and index segment of that tree is
// stored, then saves the state a restart resumes from.
func (n *Notary) checkpoint(ctx context.Context, stream string) {
	n.cpMu.Lock()
	defer n.cpMu.Unlock()
	n.mu.Lock()
	t := n.trees[stream]
	size := t.Size()
	if size == 0 || size <= n.signed[stream] {
		n.mu.Unlock()
		return
	}
	pub := n.PublicKey()
	c := domain.CheckpointPublished{Stream: stream, Size: size, Root: hex.EncodeToString(t.Root()),
		At: time.Now().UTC().Truncate(time.Millisecond), KeyID: KeyID(pub)}
	snap := n.capture(stream)
	n.mu.Unlock()
	// The complete tiles and segments of the tree were put before the
	// capture, without waiting: the checkpoint waits for them.
	err := n.store.Sync(ctx)
	if err == nil {
		c.Sig = hex.EncodeToString(ed25519.Sign(n.key, c.SignedBytes()))
		var env domain.Envelope
		env, err = domain.NewEnvelope(uuid.Must(uuid.NewV7()), stream, c, c.At, "keyledger-notary", nil)
		if err == nil {
			env.Seal("")
			_, err = n.pub.PublishCheckpoint(ctx, env)
		}
	}
	if err != nil {
		// The next tick or the next Every events try again.
		n.log.Warn("publish checkpoint", "stream", stream, "size", size, "err", err)
		n.mu.Lock()
		n.chains.redirty(snap.chains)
		n.mu.Unlock()
		return
	}
	n.mu.Lock()
	n.signed[stream] = size
	n.pending[stream] = 0
	if size > n.latest[stream].Size {
		n.latest[stream] = c
	}
	n.mu.Unlock()
	if err := n.save(ctx, stream, snap); err != nil {
		// The next checkpoint saves again; a restart before it refolds
		// from the state saved before.
		n.log.Warn("save notary state", "stream", stream, "size", size, "err", err)
	}
}

// snapshot is a stream's tree and, on KEYS, the chain shards that changed
// when a checkpoint was taken.
type snapshot struct {
	state   savedState
	partial [][]byte
	ids     []byte
	chains  []chainWrite
}

// capture takes the snapshot of a stream; n.mu is held.
func (n *Notary) capture(stream string) snapshot {
	size, hashes, partial := n.trees[stream].Snapshot()
	st := savedState{Gen: n.gen[stream], Folded: n.folded[stream], Size: size}
	for _, h := range hashes {
		st.Hashes = append(st.Hashes, hex.EncodeToString(h))
	}
	snap := snapshot{state: st, partial: partial, ids: bytes.Clone(n.ids[stream])}
	if stream == domain.StreamKeys {
		snap.chains = n.chains.capture()
	}
	return snap
}

// save stores a snapshot: first what it relies on (the incomplete tiles,
// the incomplete index segment and the changed chain shards, each put
// without waiting, then waited for), then the state that names them.
// n.cpMu is held.
func (n *Notary) save(ctx context.Context, stream string, snap snapshot) (err error) {
	st := snap.state
	if stream == domain.StreamKeys {
		n.mu.RLock()
		chains := n.chains
		n.mu.RUnlock()
		if chains.uncertain {
			// The last save failed and may have stored its state: the
			// slots it names are read back before any is written again.
			b, err := n.store.Get(ctx, stateKey(stream))
			var stored savedState
			if err == nil && b != nil {
				err = json.Unmarshal(b, &stored)
			}
			if err != nil {
				n.mu.Lock()
				chains.redirty(snap.chains)
				n.mu.Unlock()
				return fmt.Errorf("read back the saved state: %w", err)
			}
			n.mu.Lock()
			chains.resolve(stored, st.Gen)
			n.mu.Unlock()
		}
		n.mu.Lock()
		st.ChainSlots, st.ChainParts = chains.place(snap.chains)
		n.mu.Unlock()
		defer func() {
			n.mu.Lock()
			defer n.mu.Unlock()
			if err != nil {
				chains.failed(snap.chains)
			} else {
				chains.saved(st.ChainSlots, st.ChainParts)
			}
		}()
		for _, w := range snap.chains {
			for p, part := range w.parts {
				if err := n.store.PutAsync(ctx, chainPartKey(st.Gen, w.shard, w.slot, p), part); err != nil {
					return err
				}
			}
		}
	}
	for l, p := range snap.partial {
		if len(p) == 0 {
			continue
		}
		if err := n.store.PutAsync(ctx, tileKey(stream, uint(l), (st.Size>>(uint(l)*TileHeight))/TileWidth), p); err != nil {
			return err
		}
	}
	if len(snap.ids) > 0 {
		if err := n.store.PutAsync(ctx, segmentKey(stream, st.Size/SegmentSize), snap.ids); err != nil {
			return err
		}
	}
	if err := n.store.Sync(ctx); err != nil {
		return err
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return n.store.Put(ctx, stateKey(stream), b)
}

// resume restores a stream's tree from its saved state, which must be the
// tree of a checkpoint signed by this notary's key (its root is compared)
// and whose last event is still the one the stream holds at its sequence;
// it returns that checkpoint, which recheck then compares the stored
// events with. Otherwise the stream is folded from its start, in a new
// generation.
func (n *Notary) resume(ctx context.Context, stream string) (c domain.CheckpointPublished, err error) {
	fail := func(e error) (domain.CheckpointPublished, error) { return domain.CheckpointPublished{}, e }
	b, err := n.store.Get(ctx, stateKey(stream))
	if err != nil || b == nil {
		return fail(cmp.Or(err, errors.New("no saved state")))
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return fail(fmt.Errorf("saved state: %w", err))
	}
	hashes := make([][]byte, len(st.Hashes))
	for i, h := range st.Hashes {
		if hashes[i], err = hex.DecodeString(h); err != nil || len(hashes[i]) != 32 {
			return fail(fmt.Errorf("saved state: hash %d is not a hash", i))
		}
	}
	if st.Size == 0 || st.Folded == 0 || st.Gen == "" {
		return fail(fmt.Errorf("saved state of %d events at sequence %d", st.Size, st.Folded))
	}
	var partial [][]byte
	for l := range tileLevels(st.Size) {
		p, err := n.store.Get(ctx, tileKey(stream, uint(l), (st.Size>>(uint(l)*TileHeight))/TileWidth))
		if err != nil {
			return fail(err)
		}
		partial = append(partial, p)
	}
	t, err := RestoreCompactTree(st.Size, hashes, partial, n.tileSink(stream))
	if err != nil {
		return fail(fmt.Errorf("saved state: %w", err))
	}
	ids, err := n.store.Get(ctx, segmentKey(stream, st.Size/SegmentSize))
	if err != nil {
		return fail(err)
	}
	want := int(st.Size%SegmentSize) * entrySize
	if len(ids) < want {
		return fail(fmt.Errorf("saved state: the index segment of %d events holds %d bytes", st.Size, len(ids)))
	}
	ids = append(make([]byte, 0, SegmentSize*entrySize), ids[:want]...)
	root := hex.EncodeToString(t.Root())
	n.mu.RLock()
	for _, e := range n.earlier[stream] {
		if e.Size == st.Size && e.Root == root {
			c = e
		}
	}
	n.mu.RUnlock()
	if c.Size == 0 {
		return fail(fmt.Errorf("no checkpoint signed of the saved tree of %d events", st.Size))
	}
	// The saved tree's last leaf must still be the stream's message at
	// the saved sequence: a stream replaced since (restored from a
	// backup, say) is refolded and checked against every checkpoint.
	js, err := n.js.Stream(ctx, stream)
	if err != nil {
		return fail(err)
	}
	// A ledger stream never deletes: a message the server lost or dropped
	// (a damaged file it no longer trusts) shows as a gap, and then the
	// stream is refolded so the gap is found and named.
	if info, err := js.Info(ctx); err != nil {
		return fail(err)
	} else if s := info.State; s.NumDeleted > 0 || (s.Msgs > 0 && s.FirstSeq != 1) {
		return fail(fmt.Errorf("the stream has lost messages since the saved state (%d deleted, first sequence %d)", s.NumDeleted, s.FirstSeq))
	}
	m, err := js.GetMsg(ctx, st.Folded)
	if err != nil {
		return fail(fmt.Errorf("sequence %d: %w", st.Folded, err))
	}
	leaf, err := t.Prover(tiles(n.store, stream)).nodeHash(ctx, compact.NewNodeID(0, st.Size-1))
	if err != nil {
		return fail(err)
	}
	events, err := domain.Unpack(m.Header.Get(domain.HdrEvents), m.Data)
	if err != nil || !bytes.Equal(leaf, LeafHash(events[len(events)-1])) {
		return fail(fmt.Errorf("sequence %d is not the message the saved tree ends with", st.Folded))
	}
	var chains *chainSet
	if stream == domain.StreamKeys {
		if len(st.ChainSlots) != chainShards {
			return fail(errors.New("saved state without its chains (of an earlier version)"))
		}
		if st.ChainParts != nil && len(st.ChainParts) != chainShards {
			return fail(fmt.Errorf("saved state names the parts of %d chain shards, not %d", len(st.ChainParts), chainShards))
		}
		chains = newChainSet()
		for i := range chainShards {
			slot := st.ChainSlots[i]
			if slot == '-' {
				continue
			}
			parts := 1
			if st.ChainParts != nil {
				parts = max(st.ChainParts[i], 1)
			}
			for p := range parts {
				v, err := n.store.Get(ctx, chainPartKey(st.Gen, i, slot, p))
				if err == nil && v == nil {
					err = fmt.Errorf("part %d of chain shard %02x is not stored", p, i)
				}
				if err == nil {
					err = chains.load(i, slot, v)
				}
				if err != nil {
					return fail(err)
				}
			}
			chains.parts[i] = parts
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.trees[stream], n.ids[stream], n.folded[stream], n.gen[stream] = t, ids, st.Folded, st.Gen
	if chains != nil {
		n.chains = chains
	}
	for len(n.earlier[stream]) > 0 && n.earlier[stream][0].Size <= st.Size {
		n.earlier[stream] = n.earlier[stream][1:]
	}
	n.latest[stream] = c
	n.log.Info("notary resumed", "stream", stream, "size", st.Size, "seq", st.Folded)
	return c, nil
}

// recheck re-reads, in the background, the events a resumed stream's
// checkpoint covers and compares them with it: every event's hash and
// chain, no missing sequence, and the root of the first c.Size leaves. The
// node is ready at once and keeps O(log n) memory (one compact range and
// the chains), yet a log rewritten while the notary was stopped is still
// found, fails readiness and raises the alert, as a refold would.
func (n *Notary) recheck(ctx context.Context, stream string, c domain.CheckpointPublished) {
	rf := &compact.RangeFactory{Hash: hasher.HashChildren}
	r := rf.NewEmptyRange(0)
	chains := map[string]string{}
	expect := uint64(1)
	broken := func(id, why string) {
		n.mu.Lock()
		n.markBroken(id, fmt.Sprintf("%s sequence %d: %s", stream, expect, why))
		n.mu.Unlock()
	}
	err := ReadMessages(ctx, n.js, stream, 1, false, func(m Message) error {
		if m.Seq != expect {
			broken("", fmt.Sprintf("missing from the stream (next stored is %d)", m.Seq))
			return errStop
		}
		envs, _, quarantine := n.judge(stream, m)
		for i, data := range m.Events {
			env := envs[i]
			if quarantine == nil {
				if why := checkEvent(env, chains, stream); why != "" {
					broken(env.ID.String(), why)
					return errStop
				}
			}
			_ = r.Append(LeafHash(data), nil)
			if r.End() == c.Size {
				if root, _ := r.GetRootHash(nil); hex.EncodeToString(root) != c.Root {
					broken(env.ID.String(), fmt.Sprintf("the first %d events do not match the checkpoint signed at %s", c.Size, c.At.Format(time.RFC3339Nano)))
				}
				return errStop
			}
		}
		expect++
		return nil
	})
	if err != nil && err != errStop && ctx.Err() == nil {
		n.log.Warn("notary re-check", "stream", stream, "err", err)
		return
	}
	if err == nil && r.End() < c.Size && ctx.Err() == nil {
		broken("", fmt.Sprintf("the stream holds %d events but a checkpoint covers %d", r.End(), c.Size))
	}
}

// Flush waits (at most 5 seconds) until every stream is folded up to the
// last message it held when Flush was called, then publishes a checkpoint
// of every stream that grew: on shutdown, so that the last events of a
// stopped node are covered by a signed checkpoint.
func (n *Notary) Flush(ctx context.Context) {
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, s := range Streams {
		st, err := n.js.Stream(wctx, s)
		if err != nil {
			continue
		}
		info, err := st.Info(wctx)
		if err != nil {
			continue
		}
		for wctx.Err() == nil {
			n.mu.RLock()
			done := n.folded[s] >= info.State.LastSeq
			n.mu.RUnlock()
			if done {
				break
			}
			select {
			case <-wctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	for _, s := range Streams {
		n.checkpoint(ctx, s)
	}
}

// Proof is an inclusion proof of one event against a signed checkpoint.
type Proof struct {
	Stream     string                     `json:"stream"`
	Seq        uint64                     `json:"seq"`
	Index      uint64                     `json:"index"`
	EventID    string                     `json:"event_id"`
	Hashes     []string                   `json:"hashes"`
	Checkpoint domain.CheckpointPublished `json:"checkpoint"`
}

// ProofFor returns the inclusion proof of an event against the latest
// checkpoint of its stream. Errors: EINVALID for a malformed id, ENOTFOUND
// when the event is unknown or not yet covered by a checkpoint.
func (n *Notary) ProofFor(eventID string) (Proof, error) {
	id, err := uuid.Parse(eventID)
	if err != nil {
		return Proof{}, domain.Errorf(domain.EINVALID, "invalid_event_id", "event_id %q is not an event id", eventID)
	}
	notFound := domain.Errorf(domain.ENOTFOUND, "event_not_found", "event %s is not in the log", eventID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n.mu.RLock()
	store := n.store
	n.mu.RUnlock()
	if store == nil {
		return Proof{}, notFound
	}
	s, seq, leaf, err := n.locate(ctx, store, id)
	if err != nil {
		return Proof{}, fmt.Errorf("proof of %s: %w", eventID, err)
	}
	if seq == 0 {
		return Proof{}, notFound
	}
	n.mu.RLock()
	t := n.trees[s]
	c, ok := n.latest[s]
	var pr Prover
	if t != nil && ok && c.Size > leaf {
		pr = t.Prover(tiles(store, s))
	}
	n.mu.RUnlock()
	if t == nil {
		return Proof{}, notFound
	}
	if !ok || c.Size <= leaf {
		return Proof{}, domain.Errorf(domain.ENOTFOUND, "not_yet_checkpointed", "event %s is not covered by a checkpoint yet", eventID)
	}
	// The index is the notary's own, kept outside the log: the message at
	// its sequence must hold the event (a refolded, rewritten stream may
	// have left an entry behind).
	if st, err := n.js.Stream(ctx, s); err != nil {
		return Proof{}, fmt.Errorf("proof of %s: %w", eventID, err)
	} else if m, err := st.GetMsg(ctx, seq); err != nil {
		return Proof{}, fmt.Errorf("proof of %s: %w", eventID, err)
	} else if !holds(m.Header.Get(domain.HdrEvents), m.Data, id) {
		return Proof{}, notFound
	}
	hs, err := pr.InclusionProof(ctx, leaf, c.Size)
	if err != nil {
		return Proof{}, fmt.Errorf("proof of %s: %w", eventID, err)
	}
	p := Proof{Stream: s, Seq: seq, Index: leaf, EventID: eventID, Checkpoint: c}
	for _, h := range hs {
		p.Hashes = append(p.Hashes, hex.EncodeToString(h))
	}
	return p, nil
}

// holds reports whether the stored message (count is its HdrEvents
// header) holds the event id.
func holds(count string, data []byte, id uuid.UUID) bool {
	events, err := domain.Unpack(count, data)
	if err != nil {
		return false
	}
	for _, e := range events {
		if env, err := domain.UnmarshalEnvelope(e); err == nil && env.ID == id {
			return true
		}
	}
	return false
}

// locate finds the stream, message sequence and leaf index of an event, or
// returns a 0 seq.
func (n *Notary) locate(ctx context.Context, store stateStore, id uuid.UUID) (string, uint64, uint64, error) {
	for _, s := range Streams {
		n.mu.RLock()
		complete, partial := n.trees[s].Size()/SegmentSize, bytes.Clone(n.ids[s])
		n.mu.RUnlock()
		seq, leaf, err := locate(ctx, store, s, complete, partial, id, &n.scan)
		if err != nil || seq != 0 {
			return s, seq, leaf, err
		}
	}
	return "", 0, 0, nil
}

// Latest returns the latest checkpoint of every stream that has one.
func (n *Notary) Latest() []domain.CheckpointPublished {
	n.mu.RLock()
	defer n.mu.RUnlock()
	var out []domain.CheckpointPublished
	for _, s := range Streams {
		if c, ok := n.latest[s]; ok {
			out = append(out, c)
		}
	}
	return out
}

// CheckProof verifies a proof with nothing but the event's stored bytes and
// the public key: the checkpoint's signature, then the path to its root.
func CheckProof(p Proof, event []byte, pub ed25519.PublicKey) error {
	if err := p.Checkpoint.Verify(pub); err != nil {
		return err
	}
	if p.Checkpoint.Stream != p.Stream {
		return fmt.Errorf("proof for %s against a checkpoint of %s", p.Stream, p.Checkpoint.Stream)
	}
	root, err := hex.DecodeString(p.Checkpoint.Root)
	if err != nil {
		return fmt.Errorf("checkpoint root: %w", err)
	}
	hs := make([][]byte, len(p.Hashes))
	for i, h := range p.Hashes {
		if hs[i], err = hex.DecodeString(h); err != nil {
			return fmt.Errorf("proof hash %d: %w", i, err)
		}
	}
	if err := VerifyInclusion(event, p.Index, p.Checkpoint.Size, hs, root); err != nil {
		return fmt.Errorf("event is not in the tree of the checkpoint: %w", err)
	}
	return nil
}

// ReadStream calls fn with each message of a stream from sequence from on,
// in order, with its stored bytes. With follow it stays live until ctx
// ends; without, it returns after the last message stored at call time.
func ReadStream(ctx context.Context, js jetstream.JetStream, stream string, from uint64, follow bool, fn func(seq uint64, data []byte) error) error {
	return ReadMessages(ctx, js, stream, from, follow, func(m Message) error { return fn(m.Seq, m.Data) })
}

// Message is one stored message: where it is, its bytes, the writer that
// signed it and when the server stored it.
type Message struct {
	Seq     uint64
	Subject string
	Data    []byte
	// Events are the message's events: Data, or the events of a pack
	// (domain.Unpack), each a leaf of the stream's tree.
	Events            [][]byte
	Writer, Signature string
	Stored            time.Time
	// Pending is how many messages of the stream follow it, as the
	// server counted when it delivered it.
	Pending uint64
	// Envelopes, when set (a Feed's messages), are Events already
	// decoded by domain.UnmarshalEnvelope, one for each; EnvelopeErrs[i]
	// is why Events[i] does not decode (nil when every event decoded).
	Envelopes    []domain.Envelope
	EnvelopeErrs []error
	// Quarantine is the event store's verdict on a Feed's message: why it
	// is applied nowhere, or nil (Config.Verdict).
	Quarantine error
}

// ReadMessages is ReadStream with each message's subject, signature and
// store time.
func ReadMessages(ctx context.Context, js jetstream.JetStream, stream string, from uint64, follow bool, fn func(Message) error) error {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	last := info.State.LastSeq
	if !follow && (last == 0 || from > last) {
		return nil
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if from > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	// Bounded in bytes, not messages: 2000 packs of usage events would
	// be hundreds of MB asked of the node's one connection at once.
	it, err := cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(2000, 8<<20))
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read %s: %w", stream, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("read %s: %w", stream, err)
		}
		h := msg.Headers()
		events, err := domain.Unpack(h.Get(domain.HdrEvents), msg.Data())
		if err != nil {
			// A pack that does not split is one leaf, which no event
			// decodes from: the readers name it as not an event.
			events = [][]byte{msg.Data()}
		}
		if err := fn(Message{Seq: md.Sequence.Stream, Subject: msg.Subject(), Data: msg.Data(), Events: events,
			Writer: h.Get(domain.HdrWriter), Signature: h.Get(domain.HdrSignature), Stored: md.Timestamp, Pending: md.NumPending}); err != nil {
			return err
		}
		// NumPending reaching 0 ends a read whose last sequence is gone
		// (dropped by the file store after a corruption), which would
		// otherwise wait for a message that never comes.
		if !follow && (md.Sequence.Stream >= last || md.NumPending == 0) {
			return nil
		}
	}
}
