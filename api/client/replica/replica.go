// Package replica verifies keyledger keys inside a service, from a local
// replica of the key state that NATS pushes to it: no network round trip
// per request, and verification keeps working while the keyledger nodes
// are down as long as NATS is up.
//
// A Replica connects with the verifying service's own NATS credentials
// (identity "verifier": it may read KEYS and publish its usage, nothing
// else), follows the KEYS stream, refuses every event no trusted writer
// signed, and verifies with the server's own code (keystate.Verifier over
// a keystate.Projection). Every verification is recorded as a usage event
// on USAGE through the service's own subjects, in group commits.
//
// The verifier identity may not read the snapshot bucket, so a replica
// replays KEYS from its first event when it starts; KEYS holds lifecycle
// events only (usage lives apart), so this stays short.
package replica

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/api/client"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/keystate"
)

// Config configures a Replica.
type Config struct {
	// NATS says where the deployment's NATS is and how to authenticate:
	// URL, and the verifier's nkey seed (NkeySeedFile, the file
	// verifier.nk of `serve --nats-listen`'s credentials) or creds file,
	// and TLS. Identity defaults to eventstore.IdentityVerifier.
	NATS eventstore.Config
	// Writers are the trusted writers of KEYS events, as the nodes trust
	// them; or WritersFile, the nodes' trusted-writers.json. One of them
	// is required: an unchecked replica would obey anyone who can publish
	// to KEYS.
	Writers     *domain.Writers
	WritersFile string
	// Service is the actor recorded on this service's usage events: its
	// principal id or name.
	Service string
	// WriterKey signs the usage events this service publishes. The nodes
	// apply them only when its public key is a trusted writer of this
	// service (domain.Writer with Service set to Service); unsigned usage
	// is quarantined on a ledger that signs its events.
	WriterKey ed25519.PrivateKey
	// Usage tunes the usage publisher: durable by default (Verify returns
	// once the event is stored), or Async with a bounded buffer.
	Usage eventstore.UsageConfig
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// OnApply, when set, hears of every KEYS event once the replica has
	// applied (or refused) it, in stream order.
	OnApply func(domain.Envelope)
}

// Replica is a local, live copy of the key state with a verifier on it.
// It implements client.Verifier, so client.RequireKey can use it.
type Replica struct {
	cfg      Config
	log      *slog.Logger
	store    *eventstore.Store
	usage    *eventstore.UsagePublisher
	state    *keystate.Projection
	follower *keystate.Follower
	verifier *keystate.Verifier
	done     chan struct{}
	runErr   error
	cancel   context.CancelFunc
}

// Open connects, replays KEYS and returns once the replica holds every
// event the stream held when it started; it then follows new events until
// Close. Returns EINVALID for a configuration without trusted writers or
// with contradictory NATS settings.
func Open(ctx context.Context, cfg Config) (*Replica, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "keyledger-replica")
	if cfg.NATS.Identity == "" {
		cfg.NATS.Identity = eventstore.IdentityVerifier
	}
	if cfg.Service == "" {
		cfg.Service = "keyledger-replica"
	}
	if cfg.Writers == nil && cfg.WritersFile != "" {
		b, err := os.ReadFile(cfg.WritersFile)
		if err != nil {
			return nil, fmt.Errorf("trusted writers: %w", err)
		}
		w, err := domain.ParseWriters(b)
		if err != nil {
			return nil, domain.Errorf(domain.EINVALID, "bad_writers", "trusted writers %s: %v", cfg.WritersFile, err)
		}
		cfg.Writers = &w
	}
	if cfg.Writers == nil {
		return nil, domain.Errorf(domain.EINVALID, "no_writers", "a replica needs the trusted writers of KEYS (Writers or WritersFile)")
	}
	ncfg := cfg.NATS
	ncfg.Writers, ncfg.Logger = cfg.Writers, log
	if cfg.WriterKey != nil {
		ncfg.WriterKey = cfg.WriterKey
	}
	store, err := eventstore.Attach(ctx, ncfg)
	if err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	r := &Replica{cfg: cfg, log: log, store: store, state: keystate.New(), done: make(chan struct{})}
	r.state.OnForged(func(env domain.Envelope) {
		log.Error("refused a KEYS event no trusted writer signed", "seq", env.Seq, "type", env.Type, "key_id", env.KeyID, "why", env.Forged)
	})
	r.usage = eventstore.NewUsagePublisher(store, cfg.Usage)
	r.verifier = &keystate.Verifier{State: r.state, Usage: r.usage, Now: time.Now, NewID: func() uuid.UUID { return uuid.Must(uuid.NewV7()) }}
	r.follower = keystate.NewFollower(r.state, source{r}, noSnapshots{}, 0, log)
	if err := r.follower.Start(ctx); err != nil {
		_ = r.usage.Close(context.Background())
		_ = store.Close()
		return nil, fmt.Errorf("replica: %w", err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.runErr = r.follower.Run(rctx)
		if r.runErr != nil {
			log.Error("replica stopped following KEYS", "err", r.runErr)
		}
	}()
	log.Info("replica ready", "keys", r.state.Len(), "seq", r.state.Applied())
	return r, nil
}

// source is KEYS as the follower reads it.
type source struct{ r *Replica }

func (s source) LastSeq(ctx context.Context) (uint64, error) {
	return s.r.store.LastSeq(ctx, domain.StreamKeys)
}

// Subscribe follows KEYS. The trusted writers live there too
// (writer.trusted, writer.retired): each accepted one changes the set the
// store checks the next messages against, as on the nodes.
func (s source) Subscribe(ctx context.Context, fromSeq uint64, fn func(domain.Envelope) error) (keystate.Subscription, error) {
	on := s.r.cfg.OnApply
	return s.r.store.Subscribe(ctx, domain.StreamKeys, fromSeq, func(env domain.Envelope) error {
		if env.Forged == nil && env.Kind() == domain.KindWriter {
			if w := s.r.store.Writers(); w != nil {
				s.r.store.SetWriters(w.Apply(env))
			}
		}
		err := fn(env)
		if on != nil {
			on(env)
		}
		return err
	})
}

// noSnapshots is the snapshot store of an identity that may not read the
// nodes' snapshots: there never is one, and saving one is skipped.
type noSnapshots struct{}

func (noSnapshots) LoadSnapshot(context.Context, string) (uint64, []byte, bool, error) {
	return 0, nil, false, nil
}
func (noSnapshots) SaveSnapshot(context.Context, string, uint64, []byte) error { return nil }

// Request is one verification, for VerifyRequest.
type Request = keystate.Request

// Result is the outcome of VerifyRequest.
type Result = keystate.Result

// VerifyRequest verifies in-process and records the verification as a
// usage event (durably, unless Usage.Async). The error is non-nil only
// when the event could not be recorded; then fail closed.
func (r *Replica) VerifyRequest(ctx context.Context, req Request) (Result, error) {
	if req.Actor == "" {
		req.Actor = r.cfg.Service
	}
	return r.verifier.Verify(ctx, req)
}

// Check computes the outcome of req now, without recording it: the hot
// path of VerifyRequest. Use it only where the usage is published some
// other way (POST /v1/usage); otherwise the log misses the verification.
func (r *Replica) Check(req Request) Result {
	return r.verifier.Check(req, time.Now())
}

// Verify implements client.Verifier: the same answer POST /v1/verify
// gives, computed locally.
func (r *Replica) Verify(ctx context.Context, req client.VerifyRequest) (client.Verification, error) {
	var addr netip.Addr
	if req.IP != "" {
		a, err := netip.ParseAddr(strings.TrimSpace(req.IP))
		if err != nil || a.Zone() != "" {
			return client.Verification{}, domain.Errorf(domain.EINVALID, "invalid_ip", "ip %q is not an IP address", req.IP)
		}
		addr = a.Unmap()
	}
	res, err := r.VerifyRequest(ctx, Request{Token: req.Token, Permission: req.Permission, IP: addr})
	if err != nil {
		return client.Verification{}, err
	}
	out := api.VerifyResponse{Valid: res.Valid(), Code: res.Code, EventID: res.EventID.String()}
	if res.Found && res.Code != domain.OutcomeInvalidSecret {
		out.KeyID, out.Owner = res.Key.ID, res.Key.Owner
		if res.Valid() {
			out.Permissions = res.Permissions()
			if !res.Key.ExpiresAt.IsZero() {
				t := res.Key.ExpiresAt
				out.ExpiresAt = &t
			}
		}
	}
	return out, nil
}

// Key returns the replica's copy of a key.
func (r *Replica) Key(id string) (domain.Key, bool) { return r.state.Key(id) }

// Applied is the KEYS sequence the replica has applied.
func (r *Replica) Applied() uint64 { return r.state.Applied() }

// WaitFor blocks until the replica has applied KEYS up to seq.
func (r *Replica) WaitFor(ctx context.Context, seq uint64) error { return r.state.WaitFor(ctx, seq) }

// Forged is how many KEYS events the replica refused as not signed by a
// trusted writer.
func (r *Replica) Forged() uint64 { return r.state.Forged() }

// Usage returns the usage publisher's counters.
func (r *Replica) Usage() eventstore.UsageStats { return r.usage.Stats() }

// Err is why the replica stopped following KEYS, once it has; nil while
// it follows.
func (r *Replica) Err() error {
	select {
	case <-r.done:
		if r.runErr == nil {
			return errors.New("replica closed")
		}
		return r.runErr
	default:
		return nil
	}
}

// Close stops following KEYS, stores the usage events still pending (until
// ctx ends) and disconnects.
func (r *Replica) Close(ctx context.Context) error {
	r.cancel()
	<-r.done
	err := r.usage.Close(ctx)
	if cerr := r.store.Close(); err == nil {
		err = cerr
	}
	return err
}
