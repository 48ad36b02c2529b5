package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/alerts"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/keystate"
	"github.com/keyledger/keyledger/projections/lastused"
	"github.com/keyledger/keyledger/projections/notary"
	"golang.org/x/sync/errgroup"
)

// A component is one long-running part of serve. Run works until ctx ends,
// then stops and returns nil; an error, or returning while ctx is still
// live, is a failure that stops the whole server.
type component struct {
	name string
	run  func(ctx context.Context) error
}

// Layers of the stack, in the order they stop: a layer's context ends only
// once every layer before it has returned, so HTTP stops taking requests
// before usage is flushed, the notary flushes while the consumers still
// run, the key-state snapshot is saved after the consumers stopped, and
// ClickHouse and the event store close last.
const (
	layerHTTP = iota
	layerUsage
	layerNotaryFlush
	layerConsumers
	layerKeyState
	layerStorage
	layerCount
)

// stack is the errgroup of serve's components.
type stack struct {
	log    *slog.Logger
	layers [layerCount][]component
}

func (s *stack) add(layer int, name string, run func(context.Context) error) {
	s.layers[layer] = append(s.layers[layer], component{name, run})
}

// run starts every component and returns once all have returned: after
// ctx ends, or after the first failure, which it returns. Either way the
// components stop layer by layer.
func (s *stack) run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	next := gctx
	for _, layer := range s.layers {
		layerCtx := next
		var stopNext context.CancelFunc
		next, stopNext = context.WithCancel(context.WithoutCancel(ctx))
		var wg sync.WaitGroup
		for _, c := range layer {
			wg.Add(1)
			g.Go(func() error {
				defer wg.Done()
				err := c.run(layerCtx)
				if err == nil && layerCtx.Err() == nil {
					err = errors.New("stopped on its own")
				}
				if err != nil {
					s.log.Error("component failed; shutting down", "component", c.name, "err", err)
					return fmt.Errorf("%s: %w", c.name, err)
				}
				return nil
			})
		}
		g.Go(func() error {
			wg.Wait()
			<-layerCtx.Done()
			stopNext()
			return nil
		})
	}
	return g.Wait()
}

// onStop is a component that only waits for the end and then runs stop.
func onStop(stop func() error) func(context.Context) error {
	return func(ctx context.Context) error {
		<-ctx.Done()
		return stop()
	}
}

// serveHTTP serves on ln until ctx ends, then lets in-flight requests
// finish (10 seconds at most).
func serveHTTP(srv *http.Server, ln net.Listener) func(context.Context) error {
	return func(ctx context.Context) error {
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error {
			var err error
			if srv.TLSConfig != nil {
				err = srv.ServeTLS(ln, "", "")
			} else {
				err = srv.Serve(ln)
			}
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return err
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
		return g.Wait()
	}
}

// tlsConfig loads the HTTP listener's certificate, or returns nil for
// plain HTTP.
func tlsConfig(certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// flushUsage stores the usage events still buffered (30 seconds at most).
func flushUsage(p *eventstore.UsagePublisher) func(context.Context) error {
	return onStop(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return p.Close(ctx)
	})
}

// follow runs a started event-store subscription as a component: it fails
// when delivery ends before ctx does. Subscriptions start before serve
// listens, so no event stored meanwhile is missed and start-up reads are
// loaded by the first request.
func follow(sub *eventstore.Subscription) func(context.Context) error {
	return func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			sub.Stop()
			return nil
		case <-sub.Done():
			if err := sub.Err(); err != nil {
				return err
			}
			return errors.New("subscription ended")
		}
	}
}

// keysSource adapts the event store to what the key-state follower reads.
type keysSource struct{ store *eventstore.Store }

func (s keysSource) LastSeq(ctx context.Context) (uint64, error) {
	return s.store.LastSeq(ctx, domain.StreamKeys)
}

func (s keysSource) Subscribe(ctx context.Context, fromSeq uint64, fn func(domain.Envelope) error) (keystate.Subscription, error) {
	return s.store.Subscribe(ctx, domain.StreamKeys, fromSeq, fn)
}

// startAlertEngine subscribes the rule engine to every new event of USAGE
// and KEYS and adds its periodic rules (reminders, a stuck sink), run once
// a minute.
func (m *Main) startAlertEngine(ctx context.Context, engine *alerts.Engine) error {
	bg := context.WithoutCancel(ctx)
	// USAGE is followed once per node: this subscription decodes each
	// event once for the alert engine, last used and the notary, from
	// where last used's start left off.
	usage, err := m.store.SubscribeMessages(bg, domain.StreamUsage, m.usageFrom, m.followUsage(bg, engine))
	if err != nil {
		return fmt.Errorf("alerts: subscribe %s: %w", domain.StreamUsage, err)
	}
	m.stack.add(layerConsumers, "alert engine: "+domain.StreamUsage, follow(usage))
	last, err := m.store.LastSeq(ctx, domain.StreamKeys)
	if err != nil {
		return fmt.Errorf("alerts: read %s position: %w", domain.StreamKeys, err)
	}
	keys, err := m.store.Subscribe(bg, domain.StreamKeys, last+1, func(env domain.Envelope) error {
		if env.Forged != nil {
			// The key-state projection refused it and raised
			// forged_event.
			engine.Pass(domain.StreamKeys, env.Seq)
			return nil
		}
		if err := engine.Observe(bg, env); err != nil {
			m.Logger.Error("alert engine", "err", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("alerts: subscribe %s: %w", domain.StreamKeys, err)
	}
	m.stack.add(layerConsumers, "alert engine: "+domain.StreamKeys, follow(keys))
	// ALERTS is watched for messages that no node wrote: they reach no
	// webhook and no listing, and raise forged_event here.
	lastAlert, err := m.store.LastSeq(ctx, domain.StreamAlerts)
	if err != nil {
		return fmt.Errorf("alerts: read %s position: %w", domain.StreamAlerts, err)
	}
	forgedAlerts, err := m.store.SubscribeMessages(bg, domain.StreamAlerts, lastAlert+1, func(sm eventstore.StoredMessage) error {
		if sm.Quarantined() {
			m.forged.message(domain.StreamAlerts, sm)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("alerts: subscribe %s: %w", domain.StreamAlerts, err)
	}
	m.stack.add(layerConsumers, "alert engine: "+domain.StreamAlerts, follow(forgedAlerts))
	m.stack.add(layerConsumers, "alert engine: tick", func(ctx context.Context) error {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case now := <-t.C:
				keys, _ := m.state.List(keystate.Filter{Status: "active", Now: now})
				lag, err := m.sink.TotalLag(ctx)
				if err != nil {
					lag = 0
				}
				if err := engine.Tick(ctx, now, keys, lag); err != nil {
					m.Logger.Error("alert engine tick", "err", err)
				}
			}
		}
	})
	return nil
}

// followUsage is what the node's one USAGE subscription does with each
// message: it offers it to the notary, then applies each event to last used
// (from where its snapshot left off) and to the alert engine (from what
// came after the start).
func (m *Main) followUsage(ctx context.Context, engine *alerts.Engine) func(eventstore.StoredMessage) error {
	return func(sm eventstore.StoredMessage) error {
		if m.notaryFeed != nil {
			nm := notary.Message{Seq: sm.Seq, Events: sm.Raw, Pending: sm.Pending, Quarantine: sm.Quarantine}
			if sm.PackErr == nil {
				// A pack that does not split is one leaf, which the
				// notary decodes itself, as when it reads the stream.
				nm.Envelopes, nm.EnvelopeErrs = sm.Events, sm.Errs
			}
			m.notaryFeed.Offer(nm)
		}
		if sm.Quarantined() {
			// Applied nowhere; alerted on once, when it is new (a
			// start replays the tail before usageLast for last used).
			if sm.Seq > m.usageLast {
				m.forged.message(domain.StreamUsage, sm)
				engine.Pass(domain.StreamUsage, sm.Seq)
			}
			return nil
		}
		for i, env := range sm.Events {
			if sm.Err(i) != nil {
				continue
			}
			// One decode of the event's data for both followers.
			ev, decodeErr := env.Decode()
			if decodeErr == nil {
				m.lastUsed.ApplyDecoded(env, ev)
			}
			if env.Seq <= m.usageLast {
				continue // replayed for last used; the engine saw it before
			}
			if err := engine.ObserveDecoded(ctx, env, ev, decodeErr); err != nil {
				m.Logger.Error("alert engine", "err", err)
			}
		}
		return nil
	}
}

// clickHouse keeps the managed local clickhouse-server running (restarted
// with back-off when it dies, see chlog.Supervisor), and at the end closes
// the audit log's connection and stops that server.
func clickHouse(ch *chlog.Store, local *chlog.Supervisor) func(context.Context) error {
	return func(ctx context.Context) error {
		var errs []error
		if local != nil {
			errs = append(errs, local.Run(ctx))
		} else {
			<-ctx.Done()
		}
		if ch != nil {
			errs = append(errs, ch.Close())
		}
		return errors.Join(errs...)
	}
}

// startLastUsed restores last used from its snapshot; the node's one USAGE
// subscription (the alert engine's) then replays the tail stored since and
// keeps it current, and a snapshot is saved every lastUsedEvery and at
// shutdown. A start reads the snapshot and that tail, never the whole of
// USAGE.
func (m *Main) startLastUsed(ctx context.Context) error {
	m.lastUsed = lastused.New()
	last, err := m.store.LastSeq(ctx, domain.StreamUsage)
	if err != nil {
		return fmt.Errorf("read USAGE position: %w", err)
	}
	m.usageLast, m.usageFrom = last, 1
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	seq, data, found, err := m.store.Snapshots().LoadSnapshot(lctx, lastused.SnapshotName)
	cancel()
	switch {
	case err != nil:
		m.Logger.Warn("load last-used snapshot; replaying USAGE from the start", "err", err)
	case found && seq <= last:
		if err := m.lastUsed.Restore(seq, data); err != nil {
			m.Logger.Warn("unusable last-used snapshot; replaying USAGE from the start", "err", err)
			m.lastUsed = lastused.New()
			break
		}
		m.usageFrom = seq + 1
		m.Logger.Info("last-used snapshot restored", "seq", seq, "tail", last-seq)
	}
	m.stack.add(layerKeyState, "last-used snapshots", func(ctx context.Context) error {
		t := time.NewTicker(lastUsedEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				m.saveLastUsed(ctx)
			case <-ctx.Done():
				m.saveLastUsed(context.WithoutCancel(ctx))
				return nil
			}
		}
	})
	return nil
}

// lastUsedEvery is how often last used is saved: at most this much of USAGE
// is replayed at the next start (plus what came after a kill -9).
const lastUsedEvery = 30 * time.Second

func (m *Main) saveLastUsed(ctx context.Context) {
	seq, data, changed, err := m.lastUsed.Snapshot()
	if err == nil && changed {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = m.store.Snapshots().SaveSnapshot(sctx, lastused.SnapshotName, seq, data)
		cancel()
		if err == nil {
			m.lastUsed.Saved(seq)
		}
	}
	if err != nil {
		// A failure only costs a longer replay at the next start.
		m.Logger.Warn("save last-used snapshot", "err", err)
	}
}

// clickHouseStart is the managed local ClickHouse being started in the
// background (chlog.Supervise).
type clickHouseStart struct {
	done  chan struct{}
	sup   *chlog.Supervisor
	err   error
	taken bool
}

func startClickHouse(ctx context.Context, dataDir, database string, log *slog.Logger) *clickHouseStart {
	c := &clickHouseStart{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.sup, c.err = chlog.SuperviseFor(ctx, dataDir, database, log)
	}()
	return c
}

// wait returns the started server, which the caller then owns and stops.
func (c *clickHouseStart) wait() (*chlog.Supervisor, error) {
	<-c.done
	c.taken = true
	return c.sup, c.err
}

// abandon stops the server if nobody took it: Run failed before the audit
// log was opened.
func (c *clickHouseStart) abandon() {
	<-c.done
	if c.taken || c.sup == nil {
		return
	}
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	_ = c.sup.Run(stopped)
}

// startAuditLog connects to ClickHouse (starting a local server when no
// address is given), applies the schema migrations and adds the sink that
// copies every stream into the audit log.
func (m *Main) startAuditLog(ctx context.Context) error {
	addr, user, password := m.ClickHouse, m.ClickHouseUser, m.ClickHousePassword
	var local *chlog.Supervisor
	if addr == "" {
		var err error
		if local, err = m.chStart.wait(); err != nil {
			return fmt.Errorf("start local ClickHouse: %w", err)
		}
		addr = local.Addr()
		user, password = local.Credentials()
		m.localCH = local
	}
	ch, err := chlog.Open(ctx, chlog.Config{Addr: addr, Database: m.ClickHouseDatabase, Username: user, Password: password}, m.Logger)
	m.stack.add(layerStorage, "clickhouse", clickHouse(ch, local))
	if local != nil {
		// The first layer to stop tells the supervisor that the node is
		// stopping: a clickhouse-server that exits from then on (a signal
		// to the whole process group reaches it too) is not restarted.
		m.stack.add(layerHTTP, "clickhouse stop notice", onStop(func() error { local.Stopping(); return nil }))
	}
	if err != nil {
		return fmt.Errorf("open ClickHouse log at %s: %w", addr, err)
	}
	m.ch = ch
	m.sink = chlog.NewSink(m.store.JetStream(), ch, chlog.SinkConfig{BatchWait: m.AuditBatchWait, Verdict: m.store.Verdict}, m.Logger)
	m.stack.add(layerConsumers, "audit sink", m.sink.Run)
	return nil
}

// startAlerts adds the rule engine and the webhooks that deliver its alerts.
func (m *Main) startAlerts(ctx context.Context) (*alerts.Engine, error) {
	cfg := alerts.Config{}
	if m.AlertRules != "" {
		f, err := os.Open(m.AlertRules)
		if err != nil {
			return nil, fmt.Errorf("--alert-rules: %w", err)
		}
		cfg, err = alerts.LoadConfig(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("--alert-rules: %w", err)
		}
	}
	engine := alerts.New(cfg, m.ch, m.store, m.Logger)
	if err := m.startAlertEngine(ctx, engine); err != nil {
		return nil, err
	}
	// Alerts the ALERTS stream refused are retried until it takes them.
	m.stack.add(layerConsumers, "alert retries", engine.Run)
	if len(m.Webhooks) == 0 {
		return engine, nil
	}
	secret := []byte(os.Getenv("KEYLEDGER_WEBHOOK_SECRET"))
	if m.WebhookSecretFile != "" {
		b, err := os.ReadFile(m.WebhookSecretFile)
		if err != nil {
			return nil, fmt.Errorf("--webhook-secret-file: %w", err)
		}
		secret = []byte(strings.TrimSpace(string(b)))
	}
	if len(secret) < 16 {
		return nil, errors.New("webhooks need an HMAC secret of at least 16 bytes in KEYLEDGER_WEBHOOK_SECRET or --webhook-secret-file")
	}
	var hooks []alerts.WebhookConfig
	for _, u := range m.Webhooks {
		hooks = append(hooks, alerts.WebhookConfig{URL: u, Secret: secret, MinSeverity: m.WebhookMinSev})
	}
	m.hooks = alerts.NewWebhooks(m.store.JetStream(), hooks, m.Logger)
	m.hooks.SetVerdict(func(subject string, data []byte, writer, signature string, storedAt time.Time, typ, actor string) error {
		_, err := m.store.Verdict(domain.StreamAlerts, subject, data, writer, signature, storedAt, 1, func(int) (string, string, bool) { return typ, actor, true })
		return err
	})
	// Validate names only a URL's scheme and host: the rest may carry tokens.
	if err := m.hooks.Validate(); err != nil {
		return nil, fmt.Errorf("--webhook: %w", err)
	}
	m.stack.add(layerConsumers, "webhooks", m.hooks.Run)
	return engine, nil
}

// startNotary adds the notary, which folds every stream into its Merkle
// tree and publishes signed checkpoints; a broken chain raises the
// critical alert and fails /readyz. At shutdown it flushes (a last
// checkpoint) while the consumers still run.
func (m *Main) startNotary(engine *alerts.Engine) error {
	if !m.Notary {
		return nil
	}
	path := m.NotaryKeyFile
	if path == "" {
		path = filepath.Join(m.DataDir, "notary.key")
	}
	key, err := notary.LoadOrCreateKey(path)
	if err != nil {
		return fmt.Errorf("notary key: %w", err)
	}
	m.notary = notary.New(m.store.JetStream(), m.store, key, notary.Config{
		Every: m.CheckpointEvery, Interval: m.CheckpointInterval,
		Feeds:   map[string]*notary.Feed{domain.StreamUsage: m.notaryFeed},
		Verdict: notaryVerdict(m.store),
		OnBroken: func(eventID, why string) {
			if err := engine.ChainBroken(context.Background(), time.Now(), eventID, why); err != nil {
				m.Logger.Error("raise chain-broken alert", "err", err)
			}
		},
	}, m.Logger)
	m.stack.add(layerConsumers, "notary", m.notary.Run)
	m.stack.add(layerNotaryFlush, "notary flush", onStop(func() error {
		m.notary.Flush(context.Background())
		return nil
	}))
	return nil
}

// notaryVerdict is the event store's verdict on a message the notary read
// itself.
func notaryVerdict(store *eventstore.Store) func(string, notary.Message, []domain.Envelope, []error) error {
	return func(stream string, nm notary.Message, envs []domain.Envelope, errs []error) error {
		_, err := store.Verdict(stream, nm.Subject, nm.Data, nm.Writer, nm.Signature, nm.Stored, len(envs), func(i int) (string, string, bool) {
			if errs != nil && errs[i] != nil {
				return "", "", false
			}
			return envs[i].Type, envs[i].Actor, true
		})
		return err
	}
}
