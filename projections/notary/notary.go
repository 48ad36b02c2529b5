package notary

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go/jetstream"
)

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

	mu     sync.RWMutex
	trees  map[string]*Tree
	folded map[string]uint64               // stream -> last sequence folded into its tree
	seqs   map[string]map[uuid.UUID]uint64 // stream -> event id -> seq; about 40 bytes an event
	latest map[string]domain.CheckpointPublished
	signed map[string]uint64 // stream -> size of the last checkpoint published
	// earlier holds the checkpoints stored before this start, by stream,
	// in order of size: as the rebuilt tree reaches each size its root must
	// match, or the log was rewritten while the notary was not looking.
	earlier map[string][]domain.CheckpointPublished
	chains  map[string]string // aggregate -> last hash (KEYS)
	broken  string
	pending map[string]int
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
		trees: map[string]*Tree{}, folded: map[string]uint64{}, seqs: map[string]map[uuid.UUID]uint64{},
		latest: map[string]domain.CheckpointPublished{}, signed: map[string]uint64{}, earlier: map[string][]domain.CheckpointPublished{},
		chains: map[string]string{}, pending: map[string]int{}}
	for _, s := range Streams {
		n.trees[s] = NewTree()
		n.seqs[s] = map[uuid.UUID]uint64{}
	}
	return n
}

// PublicKey returns the key checkpoints verify with.
func (n *Notary) PublicKey() ed25519.PublicKey { return n.key.Public().(ed25519.PublicKey) }

// Run folds every stream from its first message and publishes checkpoints
// until ctx ends.
func (n *Notary) Run(ctx context.Context) error {
	if err := n.loadCheckpoints(ctx); err != nil && ctx.Err() == nil {
		// Without them the notary still signs new checkpoints; only the
		// comparison with the ones signed before this start is lost.
		n.log.Warn("read earlier checkpoints", "err", err)
	}
	var wg sync.WaitGroup
	for _, s := range Streams {
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
	return ReadStream(ctx, n.js, domain.StreamCheckpoints, 1, false, func(seq uint64, data []byte) error {
		env, err := domain.UnmarshalEnvelope(data)
		if err != nil {
			return nil
		}
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

func (n *Notary) follow(ctx context.Context, stream string) {
	for ctx.Err() == nil {
		n.mu.RLock()
		from := n.folded[stream] + 1
		n.mu.RUnlock()
		err := ReadStream(ctx, n.js, stream, from, true, func(seq uint64, data []byte) error {
			n.add(ctx, stream, seq, data)
			return nil
		})
		if err != nil && ctx.Err() == nil {
			n.log.Warn("notary subscription", "stream", stream, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (n *Notary) add(ctx context.Context, stream string, seq uint64, data []byte) {
	n.mu.Lock()
	t := n.trees[stream]
	if want := n.folded[stream] + 1; seq != want {
		// A sequence the stream no longer has: the tree cannot skip it.
		n.markBroken(fmt.Sprintf("%s:%d", stream, want), fmt.Sprintf("%s sequence %d is missing (next stored is %d)", stream, want, seq))
	}
	n.folded[stream] = seq
	t.Append(data)
	env, err := domain.UnmarshalEnvelope(data)
	switch {
	case err != nil:
		n.markBroken(fmt.Sprintf("%s:%d", stream, seq), fmt.Sprintf("%s sequence %d is not a valid event: %v", stream, seq, err))
	default:
		n.seqs[stream][env.ID] = seq
		if why := checkEvent(env, n.chains, stream); why != "" {
			n.markBroken(env.ID.String(), why)
		}
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
	n.pending[stream]++
	due := n.pending[stream] >= n.cfg.Every
	n.mu.Unlock()
	if due {
		n.checkpoint(ctx, stream)
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
// last checkpoint.
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
	n.mu.Unlock()
	c.Sig = hex.EncodeToString(ed25519.Sign(n.key, c.SignedBytes()))
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), stream, c, c.At, "keyledger-notary", nil)
	if err == nil {
		env.Seal("")
		_, err = n.pub.PublishCheckpoint(ctx, env)
	}
	if err != nil {
		// The next tick or the next Every events try again.
		n.log.Warn("publish checkpoint", "stream", stream, "size", size, "err", err)
		return
	}
	n.mu.Lock()
	n.signed[stream] = size
	n.pending[stream] = 0
	if size > n.latest[stream].Size {
		n.latest[stream] = c
	}
	n.mu.Unlock()
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
	n.mu.RLock()
	defer n.mu.RUnlock()
	for _, s := range Streams {
		seq, ok := n.seqs[s][id]
		if !ok {
			continue
		}
		c, ok := n.latest[s]
		if !ok || c.Size < seq {
			return Proof{}, domain.Errorf(domain.ENOTFOUND, "not_yet_checkpointed", "event %s is not covered by a checkpoint yet", eventID)
		}
		hs, err := n.trees[s].InclusionProof(seq-1, c.Size)
		if err != nil {
			return Proof{}, err
		}
		p := Proof{Stream: s, Seq: seq, Index: seq - 1, EventID: eventID, Checkpoint: c}
		for _, h := range hs {
			p.Hashes = append(p.Hashes, hex.EncodeToString(h))
		}
		return p, nil
	}
	return Proof{}, domain.Errorf(domain.ENOTFOUND, "event_not_found", "event %s is not in the log", eventID)
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
	Seq               uint64
	Subject           string
	Data              []byte
	Writer, Signature string
	Stored            time.Time
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
	it, err := cons.Messages(jetstream.PullMaxMessages(2000))
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
		if err := fn(Message{Seq: md.Sequence.Stream, Subject: msg.Subject(), Data: msg.Data(),
			Writer: h.Get(domain.HdrWriter), Signature: h.Get(domain.HdrSignature), Stored: md.Timestamp}); err != nil {
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
