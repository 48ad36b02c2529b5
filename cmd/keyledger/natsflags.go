package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyledger/keyledger/eventstore"
)

// natsFlags say how a keyledger program reaches NATS: the embedded
// server's optional listener, or an external server's credentials and TLS.
// Secrets come from files or the environment, never from a flag's value.
type natsFlags struct {
	NATSListen   string
	NATSCreds    string
	NATSNkey     string
	NATSUser     string
	NATSPassword string // KEYLEDGER_NATS_PASSWORD or --nats-password-file
	NATSPassFile string
	NATSTLSCA    string
	NATSTLSCert  string
	NATSTLSKey   string
}

// register adds the NATS flags to fs (serve gives each its KEYLEDGER_*
// twin); listen is offered only to serve.
func (n *natsFlags) register(fs *flag.FlagSet, listen bool) {
	if listen {
		fs.StringVar(&n.NATSListen, "nats-listen", "", "host:port where the embedded NATS server accepts other processes; every identity then needs the nkey seed written under <data-dir>/nats/credentials")
	}
	fs.StringVar(&n.NATSCreds, "nats-creds", "", "NATS .creds file for an external server")
	fs.StringVar(&n.NATSNkey, "nats-nkey", "", "file holding an nkey seed for an external server")
	fs.StringVar(&n.NATSUser, "nats-user", "", "NATS user; the password comes from KEYLEDGER_NATS_PASSWORD or --nats-password-file")
	fs.StringVar(&n.NATSPassFile, "nats-password-file", "", "file holding the NATS user's password")
	fs.StringVar(&n.NATSTLSCA, "nats-tls-ca", "", "CA file to verify the NATS server by")
	fs.StringVar(&n.NATSTLSCert, "nats-tls-cert", "", "client certificate for NATS")
	fs.StringVar(&n.NATSTLSKey, "nats-tls-key", "", "client certificate key for NATS")
}

// storeConfig is the event store configuration of serve: where the events
// live, how to reach NATS, and the writer key and trusted writers.
func (m *Main) storeConfig() (eventstore.Config, error) {
	key, writers, err := loadWriters(m.DataDir, m.WriterKeyFile, m.TrustedWriters, time.Now())
	if err != nil {
		return eventstore.Config{}, err
	}
	cfg := eventstore.Config{
		DataDir: filepath.Join(m.DataDir, "nats"), URL: m.NATSURL, NoSync: m.NoSync, Replicas: m.Replicas, Logger: m.Logger,
		WriterKey: key, Writers: &writers,
	}
	return cfg, m.natsFlags.apply(&cfg)
}

// apply copies the flags into an event store configuration, reading the
// password from its file or the environment.
func (n *natsFlags) apply(cfg *eventstore.Config) error {
	cfg.Listen, cfg.CredsFile, cfg.NkeySeedFile, cfg.User = n.NATSListen, n.NATSCreds, n.NATSNkey, n.NATSUser
	cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = n.NATSTLSCA, n.NATSTLSCert, n.NATSTLSKey
	cfg.Password = os.Getenv("KEYLEDGER_NATS_PASSWORD")
	if n.NATSPassFile != "" {
		b, err := os.ReadFile(n.NATSPassFile)
		if err != nil {
			return fmt.Errorf("--nats-password-file: %w", err)
		}
		cfg.Password = strings.TrimSpace(string(b))
	}
	return nil
}
