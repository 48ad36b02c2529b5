package eventstore

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startEmbedded starts an in-process NATS server with JetStream whose data
// lives under dataDir. It listens on 127.0.0.1 with a random port so that
// other processes (and tests of the external-URL mode) can reach it, and so
// that two instances on one machine never fight over a fixed port.
func startEmbedded(ctx context.Context, cfg Config, log *slog.Logger) (*server.Server, error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("start nats: embedded mode needs a data dir")
	}
	opts := &server.Options{
		ServerName: "keyledger",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   filepath.Join(cfg.DataDir, "jetstream"),
		// An acknowledged event must survive a power cut, so every write
		// is fsynced unless the operator explicitly trades that away.
		SyncAlways: !cfg.NoSync,
		// The embedding process owns signal handling.
		NoSigs: true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
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
		return nil, fmt.Errorf("start nats: server not ready after %s", wait)
	}
	return ns, nil
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
