package eventstore

import (
	"context"
	"fmt"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
)

// ConnectOptions returns the nats.go options that connect as cfg says to an
// external server: its credentials (a .creds file, an nkey seed file, or a
// user and password; at most one), its TLS settings, and the inbox prefix
// of cfg.Identity that the deployment's permissions allow. keyledger nodes,
// `keyledger audit verify` and services all connect through it, so they
// connect the same way.
//
// Returns EINVALID for contradictory settings. Files are read when the
// connection is made, except the nkey seed, which is read here to learn
// its public key.
func ConnectOptions(cfg Config) ([]nats.Option, error) {
	identity := cfg.Identity
	if identity == "" {
		identity = IdentityNode
	}
	if _, ok := IdentityPermissions(identity); !ok {
		return nil, domain.Errorf(domain.EINVALID, "bad_nats_config", "unknown nats identity %q", identity)
	}
	given := 0
	for _, set := range []bool{cfg.CredsFile != "", cfg.NkeySeedFile != "", cfg.User != "" || cfg.Password != ""} {
		if set {
			given++
		}
	}
	if given > 1 {
		return nil, domain.Errorf(domain.EINVALID, "bad_nats_config", "give at most one of a nats creds file, an nkey seed file and a user")
	}
	if cfg.Password != "" && cfg.User == "" {
		return nil, domain.Errorf(domain.EINVALID, "bad_nats_config", "a nats password needs a user")
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, domain.Errorf(domain.EINVALID, "bad_nats_config", "a nats client certificate needs both its certificate and its key file")
	}
	opts := []nats.Option{nats.CustomInboxPrefix(InboxPrefix(identity))}
	switch {
	case cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	case cfg.NkeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NkeySeedFile)
		if err != nil {
			return nil, domain.Errorf(domain.EINVALID, "bad_nats_config", "nats nkey seed %s: %v", cfg.NkeySeedFile, err)
		}
		opts = append(opts, o)
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCAFile))
	}
	if cfg.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCertFile, cfg.TLSKeyFile))
	}
	return opts, nil
}

// Dial connects to the external server at cfg.URL with ConnectOptions(cfg)
// followed by extra. It gives up at ctx's deadline. Returns EINVALID
// without a URL or for contradictory settings.
func Dial(ctx context.Context, cfg Config, extra ...nats.Option) (*nats.Conn, error) {
	if cfg.URL == "" {
		return nil, domain.Errorf(domain.EINVALID, "bad_nats_config", "no nats url to connect to")
	}
	opts, err := ConnectOptions(cfg)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		opts = append(opts, nats.Timeout(max(time.Until(dl), time.Millisecond)))
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	nc, err := nats.Connect(cfg.URL, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect nats %s: %w", cfg.URL, err)
	}
	return nc, nil
}

// inProcessOptions connect to the embedded server without a network: as
// the node identity when the server asks for credentials.
func (s *Store) inProcessOptions() []nats.Option {
	opts := []nats.Option{nats.InProcessServer(s.ns), nats.CustomInboxPrefix(InboxPrefix(IdentityNode))}
	if kp := s.creds[IdentityNode]; kp != nil {
		pub, _ := kp.PublicKey() // Checked when the server took the key.
		opts = append(opts, nats.Nkey(pub, kp.Sign))
	}
	return opts
}

// Connect opens another connection to the store's server as the store's
// own identity: in-process to the embedded server, through cfg's URL and
// credentials to an external one. Close it before closing the store.
func (s *Store) Connect(ctx context.Context, extra ...nats.Option) (*nats.Conn, error) {
	if s.ns == nil {
		return Dial(ctx, s.cfg, extra...)
	}
	nc, err := nats.Connect("", append(s.inProcessOptions(), extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect nats in-process: %w", err)
	}
	return nc, nil
}
