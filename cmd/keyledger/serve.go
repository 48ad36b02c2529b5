package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/alerts"
	"github.com/keyledger/keyledger/projections/chlog"
	commands "github.com/keyledger/keyledger/projections/command"
	"github.com/keyledger/keyledger/projections/keystate"
	"github.com/keyledger/keyledger/projections/lastused"
	"github.com/keyledger/keyledger/projections/notary"
	"github.com/prometheus/client_golang/prometheus"
)

// Main is the server program: ParseFlags, Run, Close. The end-to-end tests
// drive the same type the binary runs.
type Main struct {
	Config

	Stdout io.Writer
	Logger *slog.Logger

	store    *eventstore.Store
	usage    *eventstore.UsagePublisher
	state    *keystate.Projection
	lastUsed *lastused.Projection
	ch       *chlog.Store
	localCH  *chlog.Supervisor
	meters   *meters
	sink     *chlog.Sink
	notary   *notary.Notary
	hooks    *alerts.Webhooks
	forged   forgedAlerts
	writers  *ledgerWriters
	commits  groupCommits
	// usageFrom is where the node's one USAGE subscription starts: after
	// last used's snapshot. usageLast is USAGE's last sequence at start:
	// the alert engine observes only what comes after it.
	usageFrom, usageLast uint64
	// notaryFeed carries that subscription's messages, decoded, to the
	// notary (nil without one), which then does not follow USAGE itself.
	notaryFeed *notary.Feed
	// chStart is the managed ClickHouse starting in the background.
	chStart *clickHouseStart
	ln      net.Listener
	stack   stack

	// stop ends the running stack; done is closed once it has returned err.
	stop     context.CancelFunc
	done     chan struct{}
	err      error
	closeOne sync.Once
}

// Run opens the event store, rebuilds the projections, bootstraps the
// super administrator on an empty ledger, starts every component in the
// background and returns once the server is listening. Close stops it;
// Done says when it stopped on its own.
func (m *Main) Run(ctx context.Context) (err error) {
	if m.Stdout == nil {
		m.Stdout = os.Stdout
	}
	log := m.Logger
	m.stack.log = log
	defer func() {
		if err != nil {
			// Stop, in order, whatever was started.
			cctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = m.stack.run(cctx)
		}
	}()
	if err := os.MkdirAll(m.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	tlsCfg, err := tlsConfig(m.TLSCert, m.TLSKey)
	if err != nil {
		return err
	}
	scfg, err := m.storeConfig()
	if err != nil {
		return err
	}
	if m.ClickHouse == "" {
		// The managed ClickHouse starts while the event store opens and
		// key state is restored: on a large log its start takes seconds
		// that need not add to the node's.
		m.chStart = startClickHouse(ctx, m.DataDir, m.ClickHouseDatabase, m.Logger)
		defer func() {
			if err != nil {
				m.chStart.abandon()
			}
		}()
	}
	if m.store, err = eventstore.Open(ctx, scfg); err != nil {
		return fmt.Errorf("open event store: %w", err)
	}
	m.stack.add(layerStorage, "event store", onStop(m.store.Close))

	if err := m.startWriters(ctx); err != nil {
		return err
	}
	m.state, m.forged.log = keystate.New(), log
	m.state.OnForged(m.forged.refused)
	keys := keystate.NewFollower(m.state, keysSource{m.store}, m.store.Snapshots(), m.SnapshotEvery, log)
	if err := keys.Start(ctx); err != nil {
		return err
	}
	m.stack.add(layerKeyState, "key-state projection", keys.Run)

	m.usage = eventstore.NewUsagePublisher(m.store, eventstore.UsageConfig{Async: m.AsyncUsage, BufferSize: m.UsageBuffer, OnCommit: m.commits.observe})
	m.stack.add(layerUsage, "usage publisher", flushUsage(m.usage))

	if err := m.startLastUsed(ctx); err != nil {
		return err
	}

	if err := m.startAuditLog(ctx); err != nil {
		return err
	}
	if m.Notary {
		m.notaryFeed = notary.NewFeed()
	}
	engine, err := m.startAlerts(ctx)
	if err != nil {
		return err
	}
	m.forged.start(engine)
	if err := m.startNotary(engine); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	m.meters = newMeters()
	acfg := api.Config{
		Store: m.store, State: m.state, Usage: meteredUsage{m.usage, m.meters}, Logger: log, Metrics: reg, Writers: m.writers,
		Commands:      commands.New(meteredStore{m.store, m.meters}, m.state, commands.Config{MaxActiveKeys: m.MaxActiveKeys}),
		MaxActiveKeys: m.MaxActiveKeys, TrustProxy: m.TrustProxy, LastUsed: m.lastUsed, Logs: m.ch,
		Alerts: alertFeed{m.store}, Audit: m.auditor(),
		Checks: m.readyChecks(),
	}
	m.httpFlags.apiLimits(&acfg)
	srv := api.New(acfg)
	m.registerMetrics(reg)

	tok, created, err := srv.Bootstrap(ctx, m.RootToken)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	if created {
		if err := m.announceRoot(tok); err != nil {
			return err
		}
	} else if m.RootToken != "" {
		log.Warn("KEYLEDGER_ROOT_TOKEN is ignored: this ledger already has a super administrator")
	}

	m.ln, err = net.Listen("tcp", m.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	m.stack.add(layerHTTP, "http", serveHTTP(m.httpServer(srv, tlsCfg), m.ln))
	// Alert streams and failure summaries; it stores the last summaries
	// before the usage publisher stops.
	m.stack.add(layerHTTP, "api", srv.Run)
	if err := m.startPProf(); err != nil {
		return err
	}

	gctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	m.stop, m.done = stop, make(chan struct{})
	go func() {
		defer close(m.done)
		m.err = m.stack.run(gctx)
	}()
	log.Info("keyledger serving", "addr", m.Addr(), "tls", tlsCfg != nil, "nats", cmp.Or(m.store.ClientURL(), "in-process only"),
		"nats_credentials", m.store.CredentialsDir(), "writer", m.store.WriterID(), "data_dir", m.DataDir,
		"keys", m.state.Len(), "applied_seq", m.state.Applied(), "async_usage", m.AsyncUsage)
	return nil
}

// announceRoot prints a generated root token once and keeps it in a file
// only its owner can read. A token given by KEYLEDGER_ROOT_TOKEN is
// neither printed nor written.
func (m *Main) announceRoot(tok string) error {
	if m.RootToken != "" {
		m.Logger.Info("super administrator created with the root token from KEYLEDGER_ROOT_TOKEN")
		return nil
	}
	path := filepath.Join(m.DataDir, "root.token")
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return fmt.Errorf("write root token: %w", err)
	}
	fmt.Fprintf(m.Stdout, "Super administrator created. Root token (shown once, also in %s):\n%s\n", path, tok)
	m.Logger.Info("super administrator created; root token written", "path", path)
	return nil
}

// Addr returns the address the HTTP server listens on.
func (m *Main) Addr() string {
	if m.ln == nil {
		return ""
	}
	return m.ln.Addr().String()
}

// Done is closed when the server has stopped: after Close, or on its own
// when a component failed (Close then returns why).
func (m *Main) Done() <-chan struct{} { return m.done }

// Close stops the components in order — HTTP, the usage buffer, the
// consumers (the notary flushes first), the key-state projection (saving
// its snapshot), then ClickHouse and the event store — and returns the
// first component failure, if any.
func (m *Main) Close() error {
	m.closeOne.Do(func() {
		if m.stop != nil {
			m.stop()
			<-m.done
		}
	})
	return m.err
}

func (m *Main) auditor() api.Auditor {
	if m.notary == nil {
		return nil
	}
	return m.notary
}
