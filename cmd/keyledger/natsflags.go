package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

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

// register adds the NATS flags to fs, each with its KEYLEDGER_* twin;
// listen is offered only to serve.
func (n *natsFlags) register(fs *flag.FlagSet, listen bool) {
	if listen {
		fs.StringVar(&n.NATSListen, "nats-listen", env("nats-listen", ""), "host:port where the embedded NATS server accepts other processes; every identity then needs the nkey seed written under <data-dir>/nats/credentials (KEYLEDGER_NATS_LISTEN)")
	}
	fs.StringVar(&n.NATSCreds, "nats-creds", env("nats-creds", ""), "NATS .creds file for an external server (KEYLEDGER_NATS_CREDS)")
	fs.StringVar(&n.NATSNkey, "nats-nkey", env("nats-nkey", ""), "file holding an nkey seed for an external server (KEYLEDGER_NATS_NKEY)")
	fs.StringVar(&n.NATSUser, "nats-user", env("nats-user", ""), "NATS user; the password comes from KEYLEDGER_NATS_PASSWORD or --nats-password-file (KEYLEDGER_NATS_USER)")
	fs.StringVar(&n.NATSPassFile, "nats-password-file", env("nats-password-file", ""), "file holding the NATS user's password (KEYLEDGER_NATS_PASSWORD_FILE)")
	fs.StringVar(&n.NATSTLSCA, "nats-tls-ca", env("nats-tls-ca", ""), "CA file to verify the NATS server by (KEYLEDGER_NATS_TLS_CA)")
	fs.StringVar(&n.NATSTLSCert, "nats-tls-cert", env("nats-tls-cert", ""), "client certificate for NATS (KEYLEDGER_NATS_TLS_CERT)")
	fs.StringVar(&n.NATSTLSKey, "nats-tls-key", env("nats-tls-key", ""), "client certificate key for NATS (KEYLEDGER_NATS_TLS_KEY)")
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
