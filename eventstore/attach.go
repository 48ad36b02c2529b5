package eventstore

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Attach connects to the streams of a running deployment at cfg.URL
// without creating or changing anything, for identities that may not:
// a verifying service (IdentityVerifier) reads KEYS and publishes its
// usage through the Store's Subscribe, LastSeq and a UsagePublisher. It
// needs to read KEYS' stream info (every reading identity may), which
// tells whether the streams take atomic batches. Snapshots() is nil.
//
// Returns EINVALID without a URL or for contradictory settings.
func Attach(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.URL == "" {
		return nil, domain.Errorf(domain.EINVALID, "bad_nats_config", "no nats url to attach to")
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
	nc, err := Dial(ctx, cfg,
		nats.Name("keyledger-"+cfg.Identity),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				s.log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { s.log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) { s.log.Warn("nats async error", "err", err) }),
	)
	if err != nil {
		return nil, err
	}
	s.nc = nc
	s.pub = publisher{nc: nc, timeout: cfg.Timeout}
	if s.js, err = jetstream.New(nc); err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	ictx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	st, err := s.js.Stream(ictx, domain.StreamKeys)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("attach: stream info %s: %w", domain.StreamKeys, err)
	}
	// The node creates every ledger stream with the same setting.
	s.atomic = st.CachedInfo().Config.AllowAtomicPublish && serverAtLeast(nc.ConnectedServerVersion(), 2, 12)
	s.appends = newCommitter(s.batchPolicy(), s.log, maxAtomicBatch)
	return s, nil
}
