// Package eventstore keeps keyledger's events in NATS JetStream: an
// embedded server or an external one, the ledger streams, appends with
// optimistic concurrency, loading one aggregate, replay and live
// subscriptions, group-committed usage events and projection snapshots.
package eventstore

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Config says where the events live.
type Config struct {
	// DataDir holds the embedded server's JetStream files. Unused with URL.
	DataDir string
	// URL of an external NATS server or cluster; empty starts an embedded
	// server.
	URL string
	// NoSync turns off the embedded server's fsync after every write. By
	// default an acknowledged event survives a power cut.
	NoSync bool
	// Replicas of every stream; 1 when zero. Use 3 on a 3-node cluster.
	Replicas int
	// Logger receives the store's and the embedded server's logs;
	// slog.Default() when nil.
	Logger *slog.Logger
	// Timeout bounds each request to the server (one publish, one read);
	// 5s when zero. A publish that times out is retried.
	Timeout time.Duration
	// WriterKey signs every message the store writes; nil writes them
	// unsigned.
	WriterKey ed25519.PrivateKey
	// Writers, when set, are the writers whose messages subscriptions
	// deliver as trusted: every other event reaches the subscriber with
	// Forged set. Nil checks nothing.
	Writers *domain.Writers

	// Listen, in embedded mode, opens a TCP listener at "host:port" (port
	// 0 picks a free one) for other processes: services, alert
	// pipelines, auditors, more nodes. Every connection must then
	// authenticate as one of the identities whose nkey seeds Open
	// generates under DataDir/credentials (see CredentialsDir). Empty, the
	// default, opens no listener at all: only this process can reach the
	// server. Not allowed with URL.
	Listen string

	// Credentials for the external server at URL: at most one of a .creds
	// file, an nkey seed file, or a user and password.
	CredsFile    string
	NkeySeedFile string
	User         string
	// Password goes with User. Read it from the environment or a file,
	// never from a command-line flag.
	Password string
	// Identity is the deployment identity the credentials belong to
	// (IdentityNode when empty). Connections use its inbox prefix, the only
	// one its permissions let it subscribe to.
	Identity string

	// TLS to the external server: a CA file to verify it by, and a client
	// certificate and key when it asks for one. Any of them turns TLS on.
	TLSCAFile   string
	TLSCertFile string
	TLSKeyFile  string
}

// Stream subjects. The wildcard after the aggregate id matches every event
// type of that aggregate, which is the filter of its concurrency check.
var streamSubjects = map[string][]string{
	domain.StreamKeys:   {"keyledger.keys.>", "keyledger.principals.>", "keyledger.roles.>", "keyledger.writer.>"},
	domain.StreamUsage:  {"keyledger.usage.>"},
	domain.StreamAlerts: {"keyledger.alerts.>"},
	// Checkpoints are signed tree heads of the other streams; a stream of
	// their own keeps them out of the trees they sign.
	domain.StreamCheckpoints: {"keyledger.checkpoints.>"},
}

// snapshotBucket is the object store bucket of projection snapshots.
const snapshotBucket = "keyledger-snapshots"

// dedupeWindow is how long the server remembers Msg-Ids. It only has to
// outlast a client's retries; after it, a retried lifecycle append is
// still caught by its version check.
const dedupeWindow = 2 * time.Minute

// Store is keyledger's event store on JetStream. It is safe for concurrent
// use.
type Store struct {
	cfg    Config
	log    *slog.Logger
	ns     *server.Server // nil with an external server
	creds  credentials    // the embedded server's identities; nil without a listener
	unlock func()         // releases the data dir lock of the embedded server
	nc     *nats.Conn
	js     jetstream.JetStream
	pub    publisher
	atomic bool // the streams accept atomic batches (nats-server ≥ 2.12)
	signer *signer
	// writers are the trusted writers every reader checks messages
	// against (Verdict); nil checks only their content.
	writers atomic.Pointer[domain.Writers]

	appends   *committer
	snapshots *SnapshotStore
	// gate refuses writes at once while the embedded server cannot write
	// to its disk; disk restarts JetStream when there is room again. Both
	// nil with an external server.
	gate *writeGate
	disk *diskSupervisor

	mu     sync.Mutex
	closed bool
	subs   map[*Subscription]struct{}
}

// Open connects to (or starts) the NATS server, then creates or updates the
// streams and the snapshot bucket. Calling it again on the same server is
// harmless.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Store{cfg: cfg, log: log.With("component", "eventstore"), signer: newSigner(cfg.WriterKey)}
	if cfg.Writers != nil {
		s.SetWriters(*cfg.Writers)
	}

	var opts []nats.Option
	if cfg.URL == "" {
		unlock, err := lockDataDir(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		ns, creds, err := startEmbedded(ctx, cfg, log)
		if err != nil {
			unlock()
			return nil, err
		}
		s.ns, s.creds, s.unlock = ns, creds, unlock
		s.gate = newWriteGate()
		opts = s.inProcessOptions()
		if cfg.Listen != "" {
			s.log.Info("nats listening; every connection must authenticate",
				"url", s.ClientURL(), "credentials", s.CredentialsDir())
		}
	} else {
		if cfg.Listen != "" {
			return nil, domain.Errorf(domain.EINVALID, "bad_nats_config", "a nats listen address is for the embedded server, not with an external url")
		}
		var err error
		if opts, err = ConnectOptions(cfg); err != nil {
			return nil, err
		}
	}
	nc, err := nats.Connect(cfg.URL, append(opts,
		nats.Name("keyledger"),
		nats.MaxReconnects(-1),
		// While the connection is down a publish fails at once instead of
		// waiting in a buffer: an append or a verification is retried
		// for a moment and then answered 503, rather than holding its
		// caller for the whole request timeout, and nothing the caller
		// was refused is sent behind its back once NATS is back.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				s.log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			url := nc.ConnectedUrlRedacted()
			if s.ns != nil {
				url = "in-process"
			}
			s.log.Info("nats reconnected", "url", url)
		}),
		// Asynchronous errors (a slow consumer, a write on a dropped
		// connection) go to the log instead of nats.go's stderr printer.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				s.log.Warn("nats async error", "subject", sub.Subject, "err", err)
				return
			}
			s.log.Warn("nats async error", "err", err)
		}),
	)...)
	if err != nil {
		s.shutdownServer()
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	s.nc = nc
	s.pub = publisher{nc: nc, timeout: cfg.Timeout, gate: s.gate}
	if s.js, err = jetstream.New(nc); err != nil {
		s.closeConn()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if err := s.setup(ctx); err != nil {
		s.closeConn()
		return nil, err
	}
	s.appends = newCommitter(s.batchPolicy(), s.log, maxAtomicBatch)
	if s.ns != nil {
		s.superviseDisk()
	}
	return s, nil
}

// batchPolicy returns how to publish to the store's streams.
func (s *Store) batchPolicy() batchPolicy {
	minBatch := 16
	if s.cfg.Replicas > 1 {
		minBatch = 2
	}
	return batchPolicy{pub: s.pub, useBatch: s.atomic, minBatch: minBatch}
}

// setup creates or updates the streams and the snapshot bucket.
func (s *Store) setup(ctx context.Context) error {
	wantAtomic := serverAtLeast(s.nc.ConnectedServerVersion(), 2, 12)
	s.atomic = wantAtomic
	for _, name := range ledgerStreams {
		cfg := ledgerStream(name, s.cfg.Replicas, wantAtomic)
		st, err := createOrUpdateStream(ctx, s.js, cfg)
		if err != nil {
			return fmt.Errorf("create stream %s: %w", name, err)
		}
		// A server that does not know the setting drops it silently.
		if !st.CachedInfo().Config.AllowAtomicPublish {
			s.atomic = false
		}
	}
	if !s.atomic {
		s.log.Warn("server has no atomic batch publish: multi-event appends are not atomic and usage events are not group-committed",
			"server_version", s.nc.ConnectedServerVersion())
	}
	obs, err := s.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      snapshotBucket,
		Description: "keyledger projection snapshots (derived data)",
		Storage:     jetstream.FileStorage,
		Replicas:    s.cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("create snapshot bucket: %w", err)
	}
	s.snapshots = &SnapshotStore{obs: obs}
	return nil
}

// createOrUpdateStream retries while a fresh cluster is still electing its
// meta leader, which shows up as a timeout or a 503.
func createOrUpdateStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	for attempt := 1; ; attempt++ {
		st, err := js.CreateOrUpdateStream(ctx, cfg)
		if err == nil || attempt >= 10 || !(transient(err) || errors.Is(err, jetstream.ErrJetStreamNotEnabled)) {
			return st, err
		}
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return nil, err
		}
	}
}

// ledgerStream returns the configuration of a ledger stream: events are
// never removed, so no limit may ever discard one, and nobody may delete
// or purge them.
func ledgerStream(name string, replicas int, atomicBatch bool) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:               name,
		Description:        "keyledger " + strings.ToLower(name) + " events",
		Subjects:           streamSubjects[name],
		Storage:            jetstream.FileStorage,
		Retention:          jetstream.LimitsPolicy,
		MaxMsgs:            -1,
		MaxBytes:           -1,
		MaxAge:             0,
		MaxMsgsPerSubject:  -1,
		MaxMsgSize:         -1,
		Discard:            jetstream.DiscardNew,
		DenyDelete:         true,
		DenyPurge:          true,
		Duplicates:         dedupeWindow,
		AllowDirect:        true,
		AllowAtomicPublish: atomicBatch,
		Replicas:           replicas,
	}
}

// serverAtLeast reports whether a "major.minor.patch" version is at least
// major.minor.
func serverAtLeast(version string, major, minor int) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || (ma == major && mi >= minor)
}

// Close stops the subscriptions and the group commit, closes the
// connection and, in embedded mode, shuts the server down and waits until
// it has stopped. Close usage publishers first: their pending events need
// the connection.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	subs := make([]*Subscription, 0, len(s.subs))
	for sub := range s.subs {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	for _, sub := range subs {
		sub.Stop()
	}
	if s.appends != nil {
		s.appends.close()
	}
	if s.disk != nil {
		s.disk.close()
	}
	s.closeConn()
	return nil
}

func (s *Store) closeConn() {
	if s.nc != nil {
		// Flush what was published before closing; errors here only
		// mean the server is already gone.
		_ = s.nc.FlushTimeout(time.Second)
		s.nc.Close()
	}
	s.shutdownServer()
}

func (s *Store) shutdownServer() {
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
		s.unlock()
	}
}

// ClientURL is the URL other processes use to reach the server: the
// external server's, or the embedded server's listener. It is empty for an
// embedded server without a listener, which only this process can reach
// (through Connect). A password in the URL is masked, so it may be logged.
func (s *Store) ClientURL() string {
	if s.ns != nil {
		if s.ns.Addr() == nil {
			return ""
		}
		return s.ns.ClientURL()
	}
	return s.nc.ConnectedUrlRedacted()
}

// CredentialsDir is the directory of the embedded server's nkey seed files,
// one per identity (SeedFile names them), when it listens; empty
// otherwise. Hand each seed file only to what acts as its identity.
func (s *Store) CredentialsDir() string {
	if s.creds == nil {
		return ""
	}
	return credentialsDir(s.cfg.DataDir)
}

// Conn is the store's NATS connection.
func (s *Store) Conn() *nats.Conn { return s.nc }

// JetStream is the store's JetStream context.
func (s *Store) JetStream() jetstream.JetStream { return s.js }

// AtomicBatch reports whether the server accepted atomic batch publishing
// on the streams (nats-server 2.12 or later).
func (s *Store) AtomicBatch() bool { return s.atomic }

// Snapshots returns the projection snapshot store.
func (s *Store) Snapshots() *SnapshotStore { return s.snapshots }

// LastSeq returns the sequence of the last message stored in stream, 0 when
// it is empty.
func (s *Store) LastSeq(ctx context.Context, stream string) (uint64, error) {
	st, err := s.streamState(ctx, stream)
	if err != nil {
		return 0, err
	}
	return st.LastSeq, nil
}

// Count returns how many messages stream holds.
func (s *Store) Count(ctx context.Context, stream string) (uint64, error) {
	st, err := s.streamState(ctx, stream)
	if err != nil {
		return 0, err
	}
	return st.Msgs, nil
}

func (s *Store) streamState(ctx context.Context, stream string) (jetstream.StreamState, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	st, err := s.js.Stream(ctx, stream)
	if err != nil {
		return jetstream.StreamState{}, fmt.Errorf("stream info %s: %w", stream, err)
	}
	return st.CachedInfo().State, nil
}

// CountEvents returns how many events stream holds: its messages, where a
// pack of usage events counts as the events it holds. It reads every
// message's headers, so it costs a pass over the stream.
func (s *Store) CountEvents(ctx context.Context, stream string) (uint64, error) {
	st, err := s.streamState(ctx, stream)
	if err != nil || st.Msgs == 0 {
		return 0, err
	}
	cons, err := s.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{HeadersOnly: true})
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", stream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2000))
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", stream, err)
	}
	defer it.Stop()
	var n uint64
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return 0, fmt.Errorf("count %s: %w", stream, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return 0, fmt.Errorf("count %s: %w", stream, err)
		}
		k := uint64(1)
		if c := msg.Headers().Get(domain.HdrEvents); c != "" {
			if v, err := strconv.ParseUint(c, 10, 32); err == nil && v > 0 {
				k = v
			}
		}
		n += k
		// Read up to the last sequence the stream reported, not until
		// nothing is pending: the ordered consumer may run on a replica
		// of a clustered stream that has not yet stored the newest
		// messages, and its NumPending then says 0 too early.
		if md.Sequence.Stream >= st.LastSeq {
			return n, nil
		}
	}
}
