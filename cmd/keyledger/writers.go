package main

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/alerts"
	"github.com/keyledger/keyledger/projections/notary"
)

// trustFileName is where a node keeps its trusted writers when no
// --trusted-writers file is given.
const trustFileName = "trusted-writers.json"

// loadWriters returns the node's writer key (keyFile, or
// <data-dir>/writer.key, created on first start with mode 0600) and the
// writers whose events the node applies: trustFile, or
// <data-dir>/trusted-writers.json, which the first start writes with the
// node's own key. The node's own key is always trusted unless the file
// lists it (as retired, for a rotation). A ledger that already held events
// when the trust file was first written (one from before keyledger signed
// its events) has them accepted unsigned up to that moment.
func loadWriters(dataDir, keyFile, trustFile string, now time.Time) (ed25519.PrivateKey, domain.Writers, error) {
	if keyFile == "" {
		keyFile = filepath.Join(dataDir, "writer.key")
	}
	key, err := notary.LoadOrCreateKey(keyFile)
	if err != nil {
		return nil, domain.Writers{}, fmt.Errorf("writer key: %w", err)
	}
	own := domain.WriterID(key.Public().(ed25519.PublicKey))
	if trustFile != "" {
		b, err := os.ReadFile(trustFile)
		if err != nil {
			return nil, domain.Writers{}, fmt.Errorf("--trusted-writers: %w", err)
		}
		w, err := domain.ParseWriters(b)
		if err != nil {
			return nil, domain.Writers{}, fmt.Errorf("--trusted-writers %s: %w", trustFile, err)
		}
		return key, w.Trust(own, "this node"), nil
	}
	path := filepath.Join(dataDir, trustFileName)
	b, err := os.ReadFile(path)
	if err == nil {
		w, err := domain.ParseWriters(b)
		if err != nil {
			return nil, domain.Writers{}, fmt.Errorf("%s: %w", path, err)
		}
		if w.Version < domain.WritersVersion {
			// A ledger from before services signed their usage: what
			// they published unsigned until now stays accepted.
			w.Version = domain.WritersVersion
			if w.UnsignedUsageBefore.IsZero() {
				w.UnsignedUsageBefore = now.UTC()
			}
			out, _ := json.MarshalIndent(w, "", "  ")
			if err := os.WriteFile(path, append(out, '\n'), 0o600); err != nil {
				return nil, domain.Writers{}, fmt.Errorf("write trusted writers: %w", err)
			}
		}
		return key, w.Trust(own, "this node"), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, domain.Writers{}, fmt.Errorf("trusted writers: %w", err)
	}
	w := domain.Writers{Version: domain.WritersVersion}.Trust(own, "this node")
	if entries, err := os.ReadDir(filepath.Join(dataDir, "nats")); err == nil && len(entries) > 0 {
		w.UnsignedBefore = now.UTC()
	}
	out, _ := json.MarshalIndent(w, "", "  ")
	if err := os.WriteFile(path, append(out, '\n'), 0o600); err != nil {
		return nil, domain.Writers{}, fmt.Errorf("write trusted writers: %w", err)
	}
	return key, w, nil
}

// readTrustedWriters returns the writers audit verify checks signatures
// against: trustFile, else the data dir's own trust file; nil when there is
// neither (a ledger from before keyledger signed its events).
func readTrustedWriters(dataDir, trustFile string) (*domain.Writers, error) {
	path := trustFile
	if path == "" {
		if dataDir == "" {
			return nil, nil
		}
		path = filepath.Join(dataDir, trustFileName)
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && trustFile == "" {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("trusted writers: %w", err)
	}
	w, err := domain.ParseWriters(b)
	if err != nil {
		return nil, fmt.Errorf("trusted writers %s: %w", path, err)
	}
	// The node trusts its own key without listing it (loadWriters); so
	// does the verification of its data dir.
	if dataDir != "" {
		if seed, err := os.ReadFile(filepath.Join(dataDir, "writer.key")); err == nil && len(seed) > 0 {
			if key, err := notary.LoadOrCreateKey(filepath.Join(dataDir, "writer.key")); err == nil {
				w = w.Trust(domain.WriterID(key.Public().(ed25519.PublicKey)), "this node")
			}
		}
	}
	return &w, nil
}

// forgedAlerts counts every quarantined message this node's followers meet
// (keyledger_forged_events_total) and raises forged_event for each.
// Messages quarantined while the key-state projection replays at start,
// before the alert engine runs, wait for it.
type forgedAlerts struct {
	mu      sync.Mutex
	engine  *alerts.Engine
	waiting []alerts.Quarantined
	log     *slog.Logger
	count   atomic.Uint64
}

// refused hears of a KEYS event the key-state projection refused (a KEYS
// message holds one event).
func (f *forgedAlerts) refused(env domain.Envelope) {
	q := alerts.Quarantined{Stream: env.Stream, Seq: env.Seq, Subject: env.Subject(), Why: env.Forged,
		EventID: env.ID.String(), Type: env.Type, KeyID: env.KeyID}
	f.quarantined(q)
}

// message hears of a quarantined message of another stream.
func (f *forgedAlerts) message(stream string, m eventstore.StoredMessage) {
	q := alerts.Quarantined{Stream: stream, Seq: m.Seq, Subject: m.Subject, Writer: m.Writer, Why: m.Quarantine}
	for i, env := range m.Events {
		if m.Err(i) == nil {
			q.EventID, q.Type = env.ID.String(), env.Type
			if env.Kind() == domain.KindKey || env.Kind() == domain.KindUsage {
				q.KeyID = env.KeyID
			}
			break
		}
	}
	f.quarantined(q)
}

func (f *forgedAlerts) quarantined(q alerts.Quarantined) {
	f.count.Add(1)
	f.log.Error("forged message quarantined: applied nowhere", "stream", q.Stream, "seq", q.Seq, "subject", q.Subject,
		"writer", q.Writer, "event_id", q.EventID, "type", q.Type, "why", q.Why)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.engine == nil {
		f.waiting = append(f.waiting, q)
		return
	}
	f.raise(q)
}

// start hands the waiting messages and every later one to engine.
func (f *forgedAlerts) start(engine *alerts.Engine) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.engine = engine
	for _, q := range f.waiting {
		f.raise(q)
	}
	f.waiting = nil
}

func (f *forgedAlerts) raise(q alerts.Quarantined) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A refused publish stays queued in the engine and is retried.
	if err := f.engine.Quarantine(ctx, time.Now(), q); err != nil {
		f.log.Error("raise forged-event alert", "stream", q.Stream, "seq", q.Seq, "err", err)
	}
}

// writerFilter selects the writer events of KEYS.
const writerFilter = "keyledger." + domain.KindWriter + ".>"

// ledgerWriters folds the writer.trusted and writer.retired events of KEYS
// into the event store's trusted writers, which every reader checks every
// message against. Each is applied only when its own message passes that
// check: only an already trusted writer changes the set.
type ledgerWriters struct {
	store *eventstore.Store
	log   *slog.Logger

	mu      sync.Mutex
	applied uint64
	changed chan struct{}
}

// start reads the writer events stored so far, before any projection reads
// anything else, then follows the new ones.
func (m *Main) startWriters(ctx context.Context) error {
	lw := &ledgerWriters{store: m.store, log: m.Logger, changed: make(chan struct{})}
	m.writers = lw
	if m.store.Writers() == nil {
		return nil
	}
	last, err := m.store.LastSeqOf(ctx, domain.StreamKeys, writerFilter)
	if err != nil {
		return fmt.Errorf("trusted writers: %w", err)
	}
	sub, err := m.store.SubscribeSubjects(context.WithoutCancel(ctx), domain.StreamKeys, writerFilter, 1, lw.apply)
	if err != nil {
		return fmt.Errorf("trusted writers: %w", err)
	}
	m.stack.add(layerConsumers, "trusted writers", follow(sub))
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := lw.wait(wctx, last); err != nil {
		return fmt.Errorf("trusted writers: read the writer events up to %d: %w", last, err)
	}
	return nil
}

func (lw *ledgerWriters) apply(sm eventstore.StoredMessage) error {
	if sm.Quarantined() {
		lw.log.Error("writer event quarantined: the set of trusted writers is unchanged", "seq", sm.Seq, "subject", sm.Subject, "why", sm.Quarantine)
	} else if w := lw.store.Writers(); w != nil {
		next := *w
		for i, env := range sm.Events {
			if sm.Err(i) == nil {
				next = next.Apply(env)
			}
		}
		lw.store.SetWriters(next)
		lw.log.Info("trusted writers changed", "seq", sm.Seq, "subject", sm.Subject, "writers", len(next.Writers))
	}
	lw.mu.Lock()
	lw.applied = sm.Seq
	close(lw.changed)
	lw.changed = make(chan struct{})
	lw.mu.Unlock()
	return nil
}

// wait returns once the writer events up to seq are applied.
func (lw *ledgerWriters) wait(ctx context.Context, seq uint64) error {
	for {
		lw.mu.Lock()
		done, ch := lw.applied >= seq, lw.changed
		lw.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// change appends a writer event about id, signed by this node, and returns
// once this node checks messages against the changed set. Errors: EINVALID,
// ECONFLICT, or a wrapped infrastructure error.
func (lw *ledgerWriters) change(ctx context.Context, actor, id string, ev domain.Event, now time.Time) (domain.Writers, error) {
	if _, err := domain.ParseWriterID(id); err != nil {
		return domain.Writers{}, err
	}
	if lw.store.Writers() == nil {
		return domain.Writers{}, domain.Errorf(domain.EINVALID, "no_writers", "this node checks no writer signatures")
	}
	prior, err := lw.store.Load(ctx, domain.KindWriter, id)
	if err != nil {
		return domain.Writers{}, fmt.Errorf("load writer %s: %w", id, err)
	}
	var expected uint64
	if len(prior) > 0 {
		expected = prior[len(prior)-1].Seq
	}
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), id, ev, now, actor, nil)
	if err != nil {
		return domain.Writers{}, err
	}
	prev := ""
	if len(prior) > 0 {
		prev = prior[len(prior)-1].Hash
	}
	env.PrevHash = prev
	env.Seal(prev)
	seq, err := lw.store.Append(ctx, expected, []domain.Envelope{env})
	if err != nil {
		return domain.Writers{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := lw.wait(wctx, seq); err != nil {
		return domain.Writers{}, fmt.Errorf("apply writer event %d: %w", seq, err)
	}
	return *lw.store.Writers(), nil
}

// TrustWriter makes id a trusted writer (api.WriterAdmin).
func (lw *ledgerWriters) TrustWriter(ctx context.Context, actor, id, name, service string) (domain.Writers, error) {
	ev, err := domain.TrustWriter(id, name, service)
	if err != nil {
		return domain.Writers{}, err
	}
	return lw.change(ctx, actor, id, ev, time.Now())
}

// RetireWriter stops trusting id for what is stored from now on
// (api.WriterAdmin).
func (lw *ledgerWriters) RetireWriter(ctx context.Context, actor, id, reason string) (domain.Writers, error) {
	return lw.change(ctx, actor, id, domain.WriterRetired{Reason: reason}, time.Now())
}

// Writers returns the set this node checks messages against.
func (lw *ledgerWriters) Writers() domain.Writers {
	if w := lw.store.Writers(); w != nil {
		return *w
	}
	return domain.Writers{}
}
