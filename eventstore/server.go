package eventstore

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats-server/v2/server"
)

// startEmbedded starts an in-process NATS server with JetStream whose data
// lives under cfg.DataDir. By default it opens no listener: the only way in
// is an in-process connection of this process, so nothing else on the
// machine can publish to the ledger. With cfg.Listen it listens there and
// every connection, in-process ones included, must authenticate as one of
// the identities in creds (generated under the data dir on first start).
func startEmbedded(ctx context.Context, cfg Config, log *slog.Logger) (*server.Server, credentials, error) {
	if cfg.DataDir == "" {
		return nil, nil, fmt.Errorf("start nats: embedded mode needs a data dir")
	}
	opts := &server.Options{
		ServerName: "keyledger",
		DontListen: true,
		JetStream:  true,
		StoreDir:   jetstreamDir(cfg.DataDir),
		// An acknowledged event must survive a power cut, so every write
		// is fsynced unless the operator explicitly trades that away.
		SyncAlways: !cfg.NoSync,
		// The embedding process owns signal handling.
		NoSigs: true,
	}
	// Left to itself the server caps its store at 75% of the space free
	// when JetStream starts (and again at each restart after a full
	// disk): a ledger that grew past that refuses every write with
	// "insufficient resources" for good, with the disk far from full.
	// The only limit is the disk itself, whose filling keyledger detects
	// and recovers from (recover.go).
	if err := os.MkdirAll(opts.StoreDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("start nats: %w", err)
	}
	if size := fsSize(opts.StoreDir); size > 0 {
		opts.JetStreamMaxStore = size
	}
	var creds credentials
	if cfg.Listen != "" {
		host, port, err := listenAddr(cfg.Listen)
		if err != nil {
			return nil, nil, err
		}
		if creds, err = loadOrCreateCredentials(credentialsDir(cfg.DataDir)); err != nil {
			return nil, nil, fmt.Errorf("start nats: %w", err)
		}
		if opts.Nkeys, err = creds.nkeyUsers(); err != nil {
			return nil, nil, fmt.Errorf("start nats: %w", err)
		}
		opts.DontListen, opts.Host, opts.Port = false, host, port
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("start nats: %w", err)
	}
	ns.SetLoggerV2(serverLogger{log}, false, false, false)
	go ns.Start()

	// ReadyForConnections polls internally; bound it by the caller's
	// context as well as by a generous ceiling for slow disks.
	wait := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	if !ns.ReadyForConnections(wait) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, nil, fmt.Errorf("start nats: server not ready after %s", wait)
	}
	return ns, creds, nil
}

// listenAddr splits a "host:port" listen address; port 0 picks a free
// port.
func listenAddr(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, domain.Errorf(domain.EINVALID, "bad_nats_listen", "nats listen address %q: %v", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, domain.Errorf(domain.EINVALID, "bad_nats_listen", "nats listen address %q: bad port", addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// serverLogger forwards the embedded server's log lines to slog. The
// server's notices (start-up banner, leader changes) are routine, so they
// go out at debug level; warnings and errors keep their level.
type serverLogger struct{ log *slog.Logger }

func (l serverLogger) Noticef(format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...), "component", "nats")
}

func (l serverLogger) Warnf(format string, v ...any) {
	l.log.Warn(fmt.Sprintf(format, v...), "component", "nats")
}

// Fatalf does not exit: the embedding process decides how to react to a
// broken server, and Open or the next publish surfaces the failure.
func (l serverLogger) Fatalf(format string, v ...any) {
	l.log.Error(fmt.Sprintf(format, v...), "component", "nats", "fatal", true)
}

func (l serverLogger) Errorf(format string, v ...any) {
	l.log.Error(fmt.Sprintf(format, v...), "component", "nats")
}

func (l serverLogger) Debugf(format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...), "component", "nats")
}

func (l serverLogger) Tracef(format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...), "component", "nats", "trace", true)
}
