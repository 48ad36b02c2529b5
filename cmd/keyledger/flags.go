package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
)

// Config is what `keyledger serve` is told: flags, each with a KEYLEDGER_*
// environment twin, and the secrets that only come from the environment.
type Config struct {
	natsFlags
	httpFlags
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
	// TLSCert and TLSKey, both or neither, serve HTTPS on HTTPAddr.
	TLSCert, TLSKey string
	// ClickHouse is host:port of an external ClickHouse; empty starts a
	// managed local clickhouse-server under the data dir.
	ClickHouse         string
	ClickHouseDatabase string
	ClickHouseUser     string
	// ClickHousePassword comes from KEYLEDGER_CLICKHOUSE_PASSWORD only.
	ClickHousePassword string
	MaxSinkLag         uint64
	// AuditBatchWait is how long the audit sink lets a batch fill.
	AuditBatchWait time.Duration
	// Notary signs checkpoints of the streams; one node of a deployment
	// should. Its key is NotaryKeyFile, else <data-dir>/notary.key.
	Notary             bool
	NotaryKeyFile      string
	CheckpointEvery    int
	CheckpointInterval time.Duration
	// AlertRules is a JSON file of rule thresholds; empty keeps the defaults.
	AlertRules string
	// Webhooks receive every alert; the HMAC secret comes from
	// KEYLEDGER_WEBHOOK_SECRET or WebhookSecretFile, never a flag value.
	Webhooks          []string
	WebhookSecretFile string
	WebhookMinSev     string

	// WriterKeyFile holds the Ed25519 key this node signs every stored
	// message with (<data-dir>/writer.key by default); TrustedWriters is a
	// JSON file of the writer keys whose events are applied
	// (<data-dir>/trusted-writers.json by default).
	WriterKeyFile  string
	TrustedWriters string
	// PProf is a loopback address for Go's profiler; empty turns it off.
	PProf string

	// RootToken comes from KEYLEDGER_ROOT_TOKEN only: secrets are never flags.
	RootToken string
}

// envName is the environment twin of a flag: --max-sink-lag is
// KEYLEDGER_MAX_SINK_LAG.
func envName(flagName string) string {
	return "KEYLEDGER_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// renamedEnv are environment names keyledger once read. Setting one is an
// error rather than silently ignored: an alert receiver that quietly stops
// receiving is worse than a node that does not start.
var renamedEnv = map[string]string{
	"KEYLEDGER_WEBHOOKS": "KEYLEDGER_WEBHOOK",
}

// flagSet declares every flag of serve into c.
func (c *Config) flagSet(stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("keyledger serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.DataDir, "data-dir", "./data", "directory for the embedded NATS store, snapshots of derived data and the root token")
	fs.StringVar(&c.NATSURL, "nats-url", "", "external NATS server URL; empty starts an embedded server")
	fs.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:8080", "HTTP listen address")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate (chain) file: serve HTTPS instead of HTTP; needs --tls-key")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key file of --tls-cert")
	fs.IntVar(&c.Replicas, "replicas", 1, "replicas of every stream on an external NATS cluster (3 on a 3-node cluster)")
	fs.BoolVar(&c.NoSync, "no-sync", false, "do not fsync every write of the embedded server: faster, but a power cut can lose acknowledged events")
	fs.BoolVar(&c.AsyncUsage, "async-usage", false, "answer verifications before their usage event is stored, from a bounded buffer")
	fs.IntVar(&c.UsageBuffer, "usage-buffer", 10000, "size of the asynchronous usage buffer")
	fs.IntVar(&c.MaxActiveKeys, "max-active-keys", domain.DefaultMaxActiveKeys, "default plan limit of active keys per principal")
	fs.BoolVar(&c.TrustProxy, "trust-proxy", false, "take client addresses from X-Forwarded-For")
	fs.IntVar(&c.SnapshotEvery, "snapshot-every", 10000, "events between key-state snapshots (0: only at shutdown)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.ClickHouse, "clickhouse", "", "host:port of ClickHouse's native protocol; empty starts a local clickhouse-server under the data dir")
	fs.StringVar(&c.ClickHouseDatabase, "clickhouse-database", chlog.DefaultDatabase, "ClickHouse database of the audit log")
	fs.StringVar(&c.ClickHouseUser, "clickhouse-user", "default", "ClickHouse user; the password comes from KEYLEDGER_CLICKHOUSE_PASSWORD")
	fs.DurationVar(&c.AuditBatchWait, "audit-batch-wait", time.Second, "longest an event waits for its audit-log insert to fill (fewer, larger ClickHouse inserts cost ClickHouse less)")
	fs.Uint64Var(&c.MaxSinkLag, "max-sink-lag", 100000, "messages the audit log may trail JetStream by before /readyz fails (a pack of usage events is one)")
	fs.BoolVar(&c.Notary, "notary", true, "fold the streams into Merkle trees and publish signed checkpoints; run it on one node")
	fs.StringVar(&c.NotaryKeyFile, "notary-key-file", "", "the notary's Ed25519 key, created when missing (default <data-dir>/notary.key)")
	fs.IntVar(&c.CheckpointEvery, "checkpoint-every", 1000, "events between checkpoints of a stream")
	fs.DurationVar(&c.CheckpointInterval, "checkpoint-interval", 10*time.Second, "longest time between checkpoints of a stream that grew")
	fs.StringVar(&c.AlertRules, "alert-rules", "", "JSON file of alert rule thresholds")
	fs.Var(listFlag{&c.Webhooks}, "webhook", "URL that receives every alert as a signed POST (repeatable, or comma-separated)")
	fs.StringVar(&c.WebhookSecretFile, "webhook-secret-file", "", "file holding the webhooks' HMAC secret; else KEYLEDGER_WEBHOOK_SECRET")
	fs.StringVar(&c.WebhookMinSev, "webhook-min-severity", domain.SeverityLow, "lowest severity sent to webhooks: low, medium, high or critical")
	c.natsFlags.register(fs, true)
	c.httpFlags.register(fs)
	fs.StringVar(&c.PProf, "pprof", "", "loopback host:port serving Go's profiler (net/http/pprof); empty: off")
	fs.StringVar(&c.WriterKeyFile, "writer-key-file", "", "Ed25519 key this node signs its events with, created when missing (default <data-dir>/writer.key)")
	fs.StringVar(&c.TrustedWriters, "trusted-writers", "", "JSON file of the writer keys whose events are applied (default <data-dir>/trusted-writers.json)")
	// Every flag's help names its twin, so the two never drift apart.
	fs.VisitAll(func(f *flag.Flag) { f.Usage += " (" + envName(f.Name) + ")" })
	return fs
}

// parse reads args, then the environment twin of every flag the command
// line did not give (flags win), then the environment-only secrets, and
// checks the result. getenv is os.LookupEnv; tests replace it.
func (c *Config) parse(args []string, stderr io.Writer, getenv func(string) (string, bool)) error {
	fs := c.flagSet(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	for _, old := range slices.Sorted(maps.Keys(renamedEnv)) {
		if _, ok := getenv(old); ok {
			errs = append(errs, fmt.Errorf("%s is now %s (comma-separated)", old, renamedEnv[old]))
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		v, ok := getenv(name)
		if !ok || given[f.Name] {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: want %s for --%s", name, v, valueKind(f), f.Name))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.RootToken, _ = getenv("KEYLEDGER_ROOT_TOKEN")
	c.ClickHousePassword, _ = getenv("KEYLEDGER_CLICKHOUSE_PASSWORD")
	return c.validate()
}

// validate checks what the flag types alone cannot.
func (c *Config) validate() error {
	var lvl slog.Level
	switch {
	case lvl.UnmarshalText([]byte(c.LogLevel)) != nil:
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", c.LogLevel)
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return errors.New("--tls-cert and --tls-key go together: give both or neither")
	case c.Replicas < 1:
		return fmt.Errorf("--replicas %d: at least 1", c.Replicas)
	case c.UsageBuffer < 1:
		return fmt.Errorf("--usage-buffer %d: at least 1", c.UsageBuffer)
	case c.MaxActiveKeys < 1:
		return fmt.Errorf("--max-active-keys %d: at least 1", c.MaxActiveKeys)
	case c.SnapshotEvery < 0:
		return fmt.Errorf("--snapshot-every %d: must not be negative", c.SnapshotEvery)
	case c.CheckpointEvery < 1:
		return fmt.Errorf("--checkpoint-every %d: at least 1", c.CheckpointEvery)
	case c.CheckpointInterval <= 0:
		return fmt.Errorf("--checkpoint-interval %v: must be positive", c.CheckpointInterval)
	case c.AuditBatchWait <= 0 || c.AuditBatchWait > time.Minute:
		return fmt.Errorf("--audit-batch-wait %v: between 0 and 1m", c.AuditBatchWait)
	case !slices.Contains(domain.Severities, c.WebhookMinSev):
		return fmt.Errorf("--webhook-min-severity %q: use low, medium, high or critical", c.WebhookMinSev)
	}
	if c.RootToken != "" {
		if _, err := domain.ParseToken(c.RootToken); err != nil {
			return errors.New("KEYLEDGER_ROOT_TOKEN: malformed token; generate one with `keyledger token new`")
		}
	}
	return nil
}

// valueKind says what a flag's value must look like; the flag package's
// own parse errors say only "parse error".
func valueKind(f *flag.Flag) string {
	switch typ, _ := flag.UnquoteUsage(f); typ {
	case "":
		return "true or false"
	case "int":
		return "an integer"
	case "uint":
		return "a non-negative integer"
	case "duration":
		return "a duration like 10s or 1m30s"
	default:
		return "a " + typ
	}
}

// ParseFlags reads the serve command line and environment into m.Config
// and sets up the logger.
func (m *Main) ParseFlags(args []string, stderr io.Writer) error {
	if err := m.Config.parse(args, stderr, os.LookupEnv); err != nil {
		return err
	}
	if m.Logger == nil {
		var lvl slog.Level
		_ = lvl.UnmarshalText([]byte(m.LogLevel)) // validate checked it
		m.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	}
	return nil
}

// listFlag is the one repeatable flag: --permission a --permission b or
// --permission a,b (and KEYLEDGER_WEBHOOK=a,b for serve's --webhook).
type listFlag struct{ l *[]string }

func (f listFlag) String() string {
	if f.l == nil {
		return ""
	}
	return strings.Join(*f.l, ",")
}

func (f listFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*f.l = append(*f.l, p)
		}
	}
	return nil
}
