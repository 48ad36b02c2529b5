package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
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
	natsFlags
	forged        forgedAlerts
	DataDir       string
	NATSURL       string
	HTTPAddr      string
	NoSync        bool
	Replicas      int
	AsyncUsage    bool
	UsageBuffer   int
	MaxActiveKeys int
	TrustProxy    bool
	SnapshotEvery int
	LogLevel      string
	// ClickHouse is host:port of an external ClickHouse; empty starts a
	// managed local clickhouse-server under the data dir.
	ClickHouse         string
	ClickHouseDatabase string
	ClickHouseUser     string
	// ClickHousePassword comes from KEYLEDGER_CLICKHOUSE_PASSWORD only.
	ClickHousePassword string
	MaxSinkLag         uint64
	// Notary signs checkpoints of the streams; one node of a deployment
	// should. The key comes from KEYLEDGER_NOTARY_KEY_FILE or
	// <data-dir>/notary.key.
	Notary             bool
	CheckpointEvery    int
	CheckpointInterval time.Duration
	// AlertRules is a JSON file of rule thresholds; empty keeps the defaults.
	AlertRules string
	// Webhooks receive every alert; the HMAC secret comes from
	// KEYLEDGER_WEBHOOK_SECRET or WebhookSecretFile, never a flag value.
	Webhooks          stringsFlag
	WebhookSecretFile string
	WebhookMinSev     string

	// WriterKeyFile holds the Ed25519 key this node signs every stored
	// message with (<data-dir>/writer.key by default); TrustedWriters is a
	// JSON file of the writer keys whose events are applied
	// (<data-dir>/trusted-writers.json by default).
	WriterKeyFile  string
	TrustedWriters string

	// RootToken comes from KEYLEDGER_ROOT_TOKEN only: secrets are never flags.
	RootToken string

	Stdout io.Writer
	Logger *slog.Logger

	store    *eventstore.Store
	usage    *eventstore.UsagePublisher
	sub      *eventstore.Subscription
	usedSub  *eventstore.Subscription
	state    *keystate.Projection
	lastUsed *lastused.Projection
	chLocal  *chlog.LocalServer
	ch       *chlog.Store
	sink     *chlog.Sink
	stopSink context.CancelFunc
	sinkDone chan struct{}
	engine   *alerts.Engine
	alertSub []*eventstore.Subscription
	stopTick context.CancelFunc
	tickDone chan struct{}
	notary   *notary.Notary
	stopNot  context.CancelFunc
	notDone  chan struct{}
	hooks    *alerts.Webhooks
	stopHook context.CancelFunc
	hookDone chan struct{}
	http     *http.Server
	ln       net.Listener
	snapWG   sync.WaitGroup
	closed   sync.Once
	closeErr error
	snapshot chan struct{}
}

// env returns the KEYLEDGER_* value for a flag name, or def.
func env(name, def string) string {
	if v, ok := os.LookupEnv("KEYLEDGER_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); ok {
		return v
	}
	return def
}

func envBool(name string, def bool) bool {
	if v, err := strconv.ParseBool(env(name, strconv.FormatBool(def))); err == nil {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(env(name, strconv.Itoa(def))); err == nil {
		return v
	}
	return def
}

// ParseFlags reads flags, each with a KEYLEDGER_* environment equivalent
// (flags win).
func (m *Main) ParseFlags(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("keyledger serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&m.DataDir, "data-dir", env("data-dir", "./data"), "directory for the embedded NATS store, snapshots of derived data and the root token (KEYLEDGER_DATA_DIR)")
	fs.StringVar(&m.NATSURL, "nats-url", env("nats-url", ""), "external NATS server URL; empty starts an embedded server (KEYLEDGER_NATS_URL)")
	fs.StringVar(&m.HTTPAddr, "http-addr", env("http-addr", "127.0.0.1:8080"), "HTTP listen address (KEYLEDGER_HTTP_ADDR)")
	fs.IntVar(&m.Replicas, "replicas", envInt("replicas", 1), "replicas of every stream on an external NATS cluster (3 on a 3-node cluster) (KEYLEDGER_REPLICAS)")
	fs.BoolVar(&m.NoSync, "no-sync", envBool("no-sync", false), "do not fsync every write of the embedded server: faster, but a power cut can lose acknowledged events (KEYLEDGER_NO_SYNC)")
	fs.BoolVar(&m.AsyncUsage, "async-usage", envBool("async-usage", false), "answer verifications before their usage event is stored, from a bounded buffer (KEYLEDGER_ASYNC_USAGE)")
	fs.IntVar(&m.UsageBuffer, "usage-buffer", envInt("usage-buffer", 10000), "size of the asynchronous usage buffer (KEYLEDGER_USAGE_BUFFER)")
	fs.IntVar(&m.MaxActiveKeys, "max-active-keys", envInt("max-active-keys", domain.DefaultMaxActiveKeys), "default plan limit of active keys per principal (KEYLEDGER_MAX_ACTIVE_KEYS)")
	fs.BoolVar(&m.TrustProxy, "trust-proxy", envBool("trust-proxy", false), "take client addresses from X-Forwarded-For (KEYLEDGER_TRUST_PROXY)")
	fs.IntVar(&m.SnapshotEvery, "snapshot-every", envInt("snapshot-every", 10000), "events between key-state snapshots (KEYLEDGER_SNAPSHOT_EVERY)")
	fs.StringVar(&m.LogLevel, "log-level", env("log-level", "info"), "debug, info, warn or error (KEYLEDGER_LOG_LEVEL)")
	fs.StringVar(&m.ClickHouse, "clickhouse", env("clickhouse", ""), "host:port of ClickHouse's native protocol; empty starts a local clickhouse-server under the data dir (KEYLEDGER_CLICKHOUSE)")
	fs.StringVar(&m.ClickHouseDatabase, "clickhouse-database", env("clickhouse-database", chlog.DefaultDatabase), "ClickHouse database of the audit log (KEYLEDGER_CLICKHOUSE_DATABASE)")
	fs.StringVar(&m.ClickHouseUser, "clickhouse-user", env("clickhouse-user", "default"), "ClickHouse user; the password comes from KEYLEDGER_CLICKHOUSE_PASSWORD (KEYLEDGER_CLICKHOUSE_USER)")
	fs.BoolVar(&m.Notary, "notary", envBool("notary", true), "fold the streams into Merkle trees and publish signed checkpoints; run it on one node (KEYLEDGER_NOTARY)")
	fs.IntVar(&m.CheckpointEvery, "checkpoint-every", envInt("checkpoint-every", 1000), "events between checkpoints of a stream (KEYLEDGER_CHECKPOINT_EVERY)")
	fs.DurationVar(&m.CheckpointInterval, "checkpoint-interval", 10*time.Second, "longest time between checkpoints of a stream that grew")
	fs.StringVar(&m.AlertRules, "alert-rules", env("alert-rules", ""), "JSON file of alert rule thresholds (KEYLEDGER_ALERT_RULES)")
	if v := env("webhooks", ""); v != "" {
		for _, u := range strings.Split(v, ",") {
			if u = strings.TrimSpace(u); u != "" {
				m.Webhooks = append(m.Webhooks, u)
			}
		}
	}
	fs.Var(&m.Webhooks, "webhook", "URL that receives every alert as a signed POST; repeatable (KEYLEDGER_WEBHOOKS, comma-separated)")
	fs.StringVar(&m.WebhookSecretFile, "webhook-secret-file", env("webhook-secret-file", ""), "file holding the webhooks' HMAC secret; else KEYLEDGER_WEBHOOK_SECRET (KEYLEDGER_WEBHOOK_SECRET_FILE)")
	fs.StringVar(&m.WebhookMinSev, "webhook-min-severity", env("webhook-min-severity", domain.SeverityLow), "lowest severity sent to webhooks (KEYLEDGER_WEBHOOK_MIN_SEVERITY)")
	fs.Uint64Var(&m.MaxSinkLag, "max-sink-lag", uint64(envInt("max-sink-lag", 100000)), "events the audit log may trail JetStream by before /readyz fails (KEYLEDGER_MAX_SINK_LAG)")
	m.natsFlags.register(fs, true)
	fs.StringVar(&m.WriterKeyFile, "writer-key-file", env("writer-key-file", ""), "Ed25519 key this node signs its events with; created on first start (default <data-dir>/writer.key) (KEYLEDGER_WRITER_KEY_FILE)")
	fs.StringVar(&m.TrustedWriters, "trusted-writers", env("trusted-writers", ""), "JSON file of the writer keys whose events are applied (default <data-dir>/trusted-writers.json) (KEYLEDGER_TRUSTED_WRITERS)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	m.RootToken = os.Getenv("KEYLEDGER_ROOT_TOKEN")
	m.ClickHousePassword = os.Getenv("KEYLEDGER_CLICKHOUSE_PASSWORD")
	if m.Logger == nil {
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(m.LogLevel)); err != nil {
			return fmt.Errorf("--log-level: %w", err)
		}
		m.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	}
	return nil
}

// Run starts the store, rebuilds the projections, bootstraps the super
// administrator on an empty ledger and starts serving. It returns once the
// server is listening; Close stops it.
func (m *Main) Run(ctx context.Context) (err error) {
	if m.Stdout == nil {
		m.Stdout = os.Stdout
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	log := m.Logger
	if err := os.MkdirAll(m.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	writerKey, writers, err := loadWriters(m.DataDir, m.WriterKeyFile, m.TrustedWriters, time.Now())
	if err != nil {
		return err
	}
	scfg := eventstore.Config{
		DataDir: filepath.Join(m.DataDir, "nats"), URL: m.NATSURL, NoSync: m.NoSync, Replicas: m.Replicas, Logger: log,
		WriterKey: writerKey, Writers: &writers,
	}
	if err := m.natsFlags.apply(&scfg); err != nil {
		return err
	}
	m.store, err = eventstore.Open(ctx, scfg)
	if err != nil {
		return fmt.Errorf("open event store: %w", err)
	}
	m.usage = eventstore.NewUsagePublisher(m.store, eventstore.UsageConfig{Async: m.AsyncUsage, BufferSize: m.UsageBuffer})
	m.state = keystate.New()
	m.forged.log = log
	m.state.OnForged(m.forged.refused)
	if err := m.startProjection(ctx); err != nil {
		return err
	}

	if err := m.startLastUsed(ctx); err != nil {
		return err
	}
	if err := m.startAuditLog(ctx); err != nil {
		return err
	}
	if err := m.startAlerts(ctx); err != nil {
		return err
	}
	m.forged.start(m.engine)

	if err := m.startNotary(ctx); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	var auditor api.Auditor
	if m.notary != nil {
		auditor = m.notary
	}
	srv := api.New(api.Config{
		Store: m.store, State: m.state,
		Commands: commands.New(m.store, m.state, commands.Config{MaxActiveKeys: m.MaxActiveKeys}), Usage: m.usage, Logger: log, Metrics: reg,
		MaxActiveKeys: m.MaxActiveKeys, TrustProxy: m.TrustProxy, LastUsed: m.lastUsed, Logs: m.ch,
		Alerts: alertFeed{m.store}, Audit: auditor,
		Ready: []api.ReadyCheck{m.projectionReady, m.sinkReady, m.auditReady},
	})
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyledger_usage_buffer_depth", Help: "Usage events waiting to be stored."},
			func() float64 { return float64(m.usage.Depth()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyledger_keystate_applied_seq", Help: "Last KEYS sequence applied by the key-state projection."},
			func() float64 { return float64(m.state.Applied()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyledger_keys", Help: "Keys in the key-state projection."},
			func() float64 { return float64(m.state.Len()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_forged_events_total", Help: "KEYS events refused because no trusted writer signed them."},
			func() float64 { return float64(m.state.Forged()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyledger_audit_sink_lag", Help: "Events stored in JetStream but not yet in the ClickHouse log."},
			func() float64 {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				lag, err := m.sink.TotalLag(ctx)
				if err != nil {
					return -1
				}
				return float64(lag)
			}),
	)

	if m.hooks != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyledger_webhook_pending", Help: "Alerts not yet accepted by every webhook receiver."},
			func() float64 {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				return float64(m.hooks.Stats(ctx).Pending)
			}))
	}

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
	m.http = &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		if err := m.http.Serve(m.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	}()
	natsAt := m.store.ClientURL()
	if natsAt == "" {
		natsAt = "in-process only"
	}
	log.Info("keyledger serving", "addr", m.Addr(), "nats", natsAt, "nats_credentials", m.store.CredentialsDir(), "writer", m.store.WriterID(), "data_dir", m.DataDir,
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

const snapshotName = "keystate"

// startProjection restores the last key-state snapshot, replays the tail of
// KEYS and waits until it has caught up with the stream as it was at start.
func (m *Main) startProjection(ctx context.Context) error {
	log := m.Logger
	snaps := m.store.Snapshots()
	if seq, data, found, err := snaps.LoadSnapshot(ctx, snapshotName); err != nil {
		log.Warn("load key-state snapshot; replaying from the start", "err", err)
	} else if found {
		if err := m.state.Restore(data); err != nil {
			log.Warn("unusable key-state snapshot; replaying from the start", "err", err)
			m.state = keystate.New()
			m.state.OnForged(m.forged.refused)
		} else {
			log.Info("key-state snapshot restored", "seq", seq, "keys", m.state.Len())
		}
	}
	last, err := m.store.LastSeq(ctx, domain.StreamKeys)
	if err != nil {
		return fmt.Errorf("read KEYS position: %w", err)
	}
	m.snapshot = make(chan struct{}, 1)
	var since int
	m.sub, err = m.store.Subscribe(context.WithoutCancel(ctx), domain.StreamKeys, m.state.Applied()+1, func(env domain.Envelope) error {
		m.state.Apply(env)
		if since++; m.SnapshotEvery > 0 && since >= m.SnapshotEvery {
			since = 0
			select {
			case m.snapshot <- struct{}{}:
			default:
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("subscribe KEYS: %w", err)
	}
	m.snapWG.Add(1)
	go func() {
		defer m.snapWG.Done()
		for range m.snapshot {
			m.saveSnapshot(context.Background())
		}
	}()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := m.state.WaitFor(wctx, last); err != nil {
		return fmt.Errorf("replay KEYS: %w", err)
	}
	return nil
}

func (m *Main) saveSnapshot(ctx context.Context) {
	seq, data, err := m.state.Snapshot()
	if err == nil {
		err = m.store.Snapshots().SaveSnapshot(ctx, snapshotName, seq, data)
	}
	if err != nil {
		m.Logger.Warn("save key-state snapshot", "err", err)
		return
	}
	m.Logger.Debug("key-state snapshot saved", "seq", seq, "bytes", len(data))
}

// startLastUsed folds the last successful use of every key from USAGE:
// only the newest "used" event of each key is read at start.
func (m *Main) startLastUsed(ctx context.Context) error {
	m.lastUsed = lastused.New()
	sub, err := m.store.SubscribeLastPerSubject(context.WithoutCancel(ctx), domain.StreamUsage, "keyledger.usage.*.used", func(env domain.Envelope) error {
		m.lastUsed.Apply(env)
		return nil
	})
	if err != nil {
		return fmt.Errorf("subscribe USAGE: %w", err)
	}
	m.usedSub = sub
	return nil
}

// startAuditLog connects to ClickHouse (starting a local server when no
// address is given), applies the schema migrations and starts the sink
// that copies every stream into the audit log.
func (m *Main) startAuditLog(ctx context.Context) error {
	addr := m.ClickHouse
	if addr == "" {
		local, err := chlog.StartLocal(ctx, m.DataDir, m.Logger)
		if err != nil {
			return fmt.Errorf("start local ClickHouse: %w", err)
		}
		m.chLocal = local
		addr = local.Addr()
	}
	ch, err := chlog.Open(ctx, chlog.Config{Addr: addr, Database: m.ClickHouseDatabase, Username: m.ClickHouseUser, Password: m.ClickHousePassword}, m.Logger)
	if err != nil {
		return fmt.Errorf("open ClickHouse log at %s: %w", addr, err)
	}
	m.ch = ch
	m.sink = chlog.NewSink(m.store.JetStream(), ch, chlog.SinkConfig{}, m.Logger)
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.stopSink, m.sinkDone = cancel, make(chan struct{})
	go func() {
		defer close(m.sinkDone)
		_ = m.sink.Run(sctx)
	}()
	return nil
}

// startAlerts runs the rule engine on every new event of USAGE and KEYS,
// and its periodic rules (reminders, a stuck sink) once a minute.
func (m *Main) startAlerts(ctx context.Context) error {
	cfg := alerts.Config{}
	if m.AlertRules != "" {
		f, err := os.Open(m.AlertRules)
		if err != nil {
			return fmt.Errorf("--alert-rules: %w", err)
		}
		cfg, err = alerts.LoadConfig(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	m.engine = alerts.New(cfg, m.ch, m.store, m.Logger)
	if err := m.startWebhooks(ctx); err != nil {
		return err
	}
	bg := context.WithoutCancel(ctx)
	for _, stream := range []string{domain.StreamUsage, domain.StreamKeys} {
		last, err := m.store.LastSeq(ctx, stream)
		if err != nil {
			return fmt.Errorf("alerts: read %s position: %w", stream, err)
		}
		sub, err := m.store.Subscribe(bg, stream, last+1, func(env domain.Envelope) error {
			if err := m.engine.Observe(bg, env); err != nil {
				m.Logger.Error("alert engine", "err", err)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("alerts: subscribe %s: %w", stream, err)
		}
		m.alertSub = append(m.alertSub, sub)
	}
	tctx, cancel := context.WithCancel(bg)
	m.stopTick, m.tickDone = cancel, make(chan struct{})
	go func() {
		defer close(m.tickDone)
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-tctx.Done():
				return
			case now := <-t.C:
				keys, _ := m.state.List(keystate.Filter{Status: "active", Now: now})
				lag, err := m.sink.TotalLag(tctx)
				if err != nil {
					lag = 0
				}
				if err := m.engine.Tick(tctx, now, keys, lag); err != nil {
					m.Logger.Error("alert engine tick", "err", err)
				}
			}
		}
	}()
	return nil
}

// startNotary folds every stream into its Merkle tree and publishes signed
// checkpoints; a broken chain raises the critical alert and fails /readyz.
func (m *Main) startNotary(ctx context.Context) error {
	if !m.Notary {
		return nil
	}
	path := os.Getenv("KEYLEDGER_NOTARY_KEY_FILE")
	if path == "" {
		path = filepath.Join(m.DataDir, "notary.key")
	}
	key, err := notary.LoadOrCreateKey(path)
	if err != nil {
		return err
	}
	m.notary = notary.New(m.store.JetStream(), m.store, key, notary.Config{
		Every: m.CheckpointEvery, Interval: m.CheckpointInterval,
		OnBroken: func(eventID, why string) {
			if err := m.engine.ChainBroken(context.Background(), time.Now(), eventID, why); err != nil {
				m.Logger.Error("raise chain-broken alert", "err", err)
			}
		},
	}, m.Logger)
	nctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.stopNot, m.notDone = cancel, make(chan struct{})
	go func() {
		defer close(m.notDone)
		_ = m.notary.Run(nctx)
	}()
	return nil
}

// auditReady fails once the notary has seen an event that does not verify.
func (m *Main) auditReady(context.Context) error {
	if m.notary == nil {
		return nil
	}
	if why := m.notary.Broken(); why != "" {
		return fmt.Errorf("audit chain broken: %s", why)
	}
	return nil
}

// startWebhooks delivers alerts to the configured receivers.
func (m *Main) startWebhooks(ctx context.Context) error {
	if len(m.Webhooks) == 0 {
		return nil
	}
	secret := []byte(os.Getenv("KEYLEDGER_WEBHOOK_SECRET"))
	if m.WebhookSecretFile != "" {
		b, err := os.ReadFile(m.WebhookSecretFile)
		if err != nil {
			return fmt.Errorf("--webhook-secret-file: %w", err)
		}
		secret = []byte(strings.TrimSpace(string(b)))
	}
	if len(secret) < 16 {
		return errors.New("webhooks need an HMAC secret of at least 16 bytes in KEYLEDGER_WEBHOOK_SECRET or --webhook-secret-file")
	}
	if !slices.Contains(domain.Severities, m.WebhookMinSev) {
		return fmt.Errorf("--webhook-min-severity %q: use low, medium, high or critical", m.WebhookMinSev)
	}
	var hooks []alerts.WebhookConfig
	for _, u := range m.Webhooks {
		hooks = append(hooks, alerts.WebhookConfig{URL: u, Secret: secret, MinSeverity: m.WebhookMinSev})
	}
	m.hooks = alerts.NewWebhooks(m.store.JetStream(), hooks, m.Logger)
	// Validate names only a URL's scheme and host: the rest may carry tokens.
	if err := m.hooks.Validate(); err != nil {
		return fmt.Errorf("--webhook: %w", err)
	}
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.stopHook, m.hookDone = cancel, make(chan struct{})
	go func() {
		defer close(m.hookDone)
		if err := m.hooks.Run(hctx); err != nil {
			m.Logger.Error("webhooks stopped", "err", err)
		}
	}()
	return nil
}

// stringsFlag is a repeatable string flag.
type stringsFlag []string

func (f *stringsFlag) String() string     { return strings.Join(*f, ",") }
func (f *stringsFlag) Set(v string) error { *f = append(*f, v); return nil }

// alertFeed tails the ALERTS stream for the API's alert stream.
type alertFeed struct{ store *eventstore.Store }

func (f alertFeed) TailAlerts(ctx context.Context, fn func(domain.Envelope) error) error {
	last, err := f.store.LastSeq(ctx, domain.StreamAlerts)
	if err != nil {
		return err
	}
	sub, err := f.store.Subscribe(ctx, domain.StreamAlerts, last+1, fn)
	if err != nil {
		return err
	}
	<-sub.Done()
	return sub.Err()
}

// sinkReady fails when the audit log trails JetStream by more than
// --max-sink-lag events.
func (m *Main) sinkReady(ctx context.Context) error {
	lag, err := m.sink.TotalLag(ctx)
	if err != nil {
		return fmt.Errorf("audit sink: %w", err)
	}
	if lag > m.MaxSinkLag {
		return fmt.Errorf("audit log %d events behind JetStream (limit %d)", lag, m.MaxSinkLag)
	}
	return nil
}

// projectionReady fails while the key-state projection is behind KEYS.
func (m *Main) projectionReady(ctx context.Context) error {
	last, err := m.store.LastSeq(ctx, domain.StreamKeys)
	if err != nil {
		return fmt.Errorf("event store: %w", err)
	}
	if applied := m.state.Applied(); applied < last {
		return fmt.Errorf("key-state projection at %d of %d", applied, last)
	}
	return nil
}

// Addr returns the address the HTTP server listens on.
func (m *Main) Addr() string {
	if m.ln == nil {
		return ""
	}
	return m.ln.Addr().String()
}

// Close stops serving, lets in-flight requests finish, flushes pending
// usage events, saves a snapshot and stops the store.
func (m *Main) Close() error {
	m.closed.Do(func() { m.closeErr = m.close() })
	return m.closeErr
}

func (m *Main) close() error {
	var errs []error
	if m.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errs = append(errs, m.http.Shutdown(ctx))
		cancel()
	}
	if m.usage != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		errs = append(errs, m.usage.Close(ctx))
		cancel()
	}
	if m.stopNot != nil {
		m.notary.Flush(context.Background())
		m.stopNot()
		<-m.notDone
	}
	if m.stopHook != nil {
		m.stopHook()
		<-m.hookDone
	}
	if m.stopTick != nil {
		m.stopTick()
		<-m.tickDone
	}
	for _, sub := range m.alertSub {
		sub.Stop()
	}
	if m.stopSink != nil {
		m.stopSink()
		<-m.sinkDone
	}
	if m.ch != nil {
		errs = append(errs, m.ch.Close())
	}
	if m.chLocal != nil {
		errs = append(errs, m.chLocal.Stop())
	}
	if m.usedSub != nil {
		m.usedSub.Stop()
	}
	if m.sub != nil {
		m.sub.Stop()
		close(m.snapshot)
		m.snapWG.Wait()
		if m.state != nil && m.state.Applied() > 0 {
			m.saveSnapshot(context.Background())
		}
	}
	if m.store != nil {
		errs = append(errs, m.store.Close())
	}
	return errors.Join(errs...)
}
