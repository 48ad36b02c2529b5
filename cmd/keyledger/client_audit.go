package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/notary"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	auditVerifyArgs     = "(--data-dir DIR | --nats-url URL) [--public-key FILE] [--trusted-writers FILE] [--clickhouse ADDR [--clickhouse-database DB] [--clickhouse-user USER] [--clickhouse-password-file FILE]]"
	auditProveArgs      = "--event-id ID [--output FILE]"
	auditCheckProofArgs = "--proof FILE --event FILE --public-key FILE"
)

var auditCommands = map[string]command{
	"verify":      {auditVerifyArgs, "recompute hashes, chains, Merkle trees and checkpoints; exit 1 naming the first event that does not match", runAuditVerify},
	"prove":       {auditProveArgs, "fetch the inclusion proof of an event", runAuditProve},
	"check-proof": {auditCheckProofArgs, "verify an inclusion proof offline with the event and the public key", runAuditCheckProof},
}

// auditFailure is a log that does not verify: exit code 1 with the reason.
type auditFailure struct{ f *notary.Failure }

func (e auditFailure) Error() string { return "audit_failed: " + e.f.Error() }

// auditQuarantined is a log that holds quarantined messages (each named on
// stdout): exit code 1.
type auditQuarantined struct{ q []notary.Quarantined }

func (e auditQuarantined) Error() string {
	return fmt.Sprintf("audit_failed: the log holds %d quarantined messages (forged events: applied nowhere, named above); the first is %s", len(e.q), e.q[0])
}

func runAuditVerify(ctx context.Context, g *globals, name string, args []string) error {
	var dataDir, natsURL, pubFile, chAddr, chDB, chUser, chPasswordFile, trustedWriters string
	var nf natsFlags
	fs := g.flags(name)
	nf.register(fs, false)
	fs.StringVar(&dataDir, "data-dir", "", "data dir of a stopped node (offline verification)")
	fs.StringVar(&natsURL, "nats-url", "", "NATS of a running deployment")
	fs.StringVar(&pubFile, "public-key", "", "notary public key (base64, or the JSON of /v1/audit/public-key); default: derived from <data-dir>/notary.key")
	fs.StringVar(&chAddr, "clickhouse", "", "also compare every row of this ClickHouse log")
	fs.StringVar(&chDB, "clickhouse-database", chlog.DefaultDatabase, "database of the ClickHouse log")
	fs.StringVar(&chUser, "clickhouse-user", "default", "ClickHouse user (a node's managed ClickHouse: keyledger)")
	fs.StringVar(&chPasswordFile, "clickhouse-password-file", "", "file holding the ClickHouse password (a node's managed ClickHouse: <data-dir>/clickhouse/password); else KEYLEDGER_CLICKHOUSE_PASSWORD")
	fs.StringVar(&trustedWriters, "trusted-writers", "", "JSON file of the trusted writer keys; every event must carry a signature of one (default: <data-dir>/trusted-writers.json)")
	if _, err := g.parseCommand(fs, args, auditVerifyArgs, 0); err != nil {
		return err
	}
	if (dataDir == "") == (natsURL == "") {
		return usageError{"usage: keyledger audit verify: give exactly one of --data-dir and --nats-url"}
	}
	pub, err := loadPublicKey(pubFile, dataDir)
	if err != nil {
		return err
	}
	var js jetstream.JetStream
	if natsURL != "" {
		// A plain connection, not eventstore.Open: verifying must not
		// create or update the deployment's streams, and a reviewer's
		// credentials may well be read-only.
		ncfg := eventstore.Config{URL: natsURL, Identity: eventstore.IdentityAuditor}
		if err := nf.apply(&ncfg); err != nil {
			return usageError{err.Error()}
		}
		nc, err := eventstore.Dial(ctx, ncfg, nats.Name("keyledger-audit-verify"))
		if err != nil {
			return &apiError{Code: "unreachable", Detail: err.Error()}
		}
		defer nc.Close()
		if js, err = jetstream.New(nc); err != nil {
			return &apiError{Code: "unreachable", Detail: err.Error()}
		}
	} else {
		nats := filepath.Join(dataDir, "nats")
		if _, err := os.Stat(nats); err != nil {
			return &apiError{Code: "no_ledger", Detail: fmt.Sprintf("%s holds no keyledger data: %v", dataDir, err)}
		}
		store, err := eventstore.Open(ctx, eventstore.Config{DataDir: nats, Logger: slog.New(slog.DiscardHandler)})
		if errors.Is(err, eventstore.ErrDataDirInUse) {
			// Opening a second server beside the node would corrupt its files.
			return &apiError{Code: "node_running", Detail: fmt.Sprintf(
				"a keyledger node is running on %s: stop it first, or verify it live with --nats-url and --public-key", dataDir)}
		}
		if err != nil {
			return &apiError{Code: "unreachable", Detail: err.Error()}
		}
		defer store.Close()
		js = store.JetStream()
	}
	opt := notary.VerifyOptions{Progress: func(stream string, n uint64) {
		fmt.Fprintf(g.stderr, "verified %d events of %s\n", n, stream)
	}}
	if opt.Writers, err = readTrustedWriters(dataDir, trustedWriters); err != nil {
		return &apiError{Code: "bad_trusted_writers", Detail: err.Error()}
	}
	if chAddr != "" {
		password := g.getenv("KEYLEDGER_CLICKHOUSE_PASSWORD")
		if chPasswordFile != "" {
			b, err := os.ReadFile(chPasswordFile)
			if err != nil {
				return usageError{fmt.Sprintf("--clickhouse-password-file: %v", err)}
			}
			password = strings.TrimSpace(string(b))
		}
		ch, err := chlog.Open(ctx, chlog.Config{Addr: chAddr, Database: chDB, Username: chUser, Password: password}, nil)
		if err != nil {
			return &apiError{Code: "unreachable", Detail: err.Error()}
		}
		defer ch.Close()
		opt.Rows = notary.LogRows(ch)
		// A running deployment's sink trails JetStream a little: its tail
		// is lag, not a missing row.
		opt.Live = natsURL != ""
	}
	start := time.Now()
	sum, fail, err := notary.Verify(ctx, js, pub, opt)
	if err != nil {
		return &apiError{Code: "verify_error", Detail: err.Error()}
	}
	for _, q := range sum.Quarantined {
		fmt.Fprintf(g.stdout, "QUARANTINED: %s\n", q)
	}
	if fail != nil {
		return auditFailure{fail}
	}
	if len(sum.Quarantined) > 0 {
		return auditQuarantined{sum.Quarantined}
	}
	var parts []string
	for _, s := range notary.Streams {
		parts = append(parts, fmt.Sprintf("%s %d", s, sum.Events[s]))
	}
	fmt.Fprintf(g.stdout, "OK: %s events, %d checkpoints", strings.Join(parts, ", "), sum.Checkpoints)
	if chAddr != "" {
		fmt.Fprintf(g.stdout, ", %d ClickHouse rows", sum.Rows)
		if sum.Lagging > 0 {
			fmt.Fprintf(g.stdout, " (%d newest events not in ClickHouse yet)", sum.Lagging)
		}
	}
	fmt.Fprintf(g.stdout, " verified in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// loadPublicKey reads a public key file, or derives the key from a data
// dir's notary key.
func loadPublicKey(file, dataDir string) (ed25519.PublicKey, error) {
	if file == "" {
		if dataDir == "" {
			return nil, usageError{"usage: --public-key FILE is needed with --nats-url"}
		}
		path := filepath.Join(dataDir, "notary.key")
		if _, err := os.Stat(path); err != nil {
			return nil, &apiError{Code: "no_key", Detail: fmt.Sprintf("no notary key in %s: give --public-key", dataDir)}
		}
		k, err := notary.LoadOrCreateKey(path)
		if err != nil {
			return nil, &apiError{Code: "no_key", Detail: err.Error()}
		}
		return k.Public().(ed25519.PublicKey), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, &apiError{Code: "no_key", Detail: err.Error()}
	}
	var v api.PublicKeyView
	if json.Unmarshal(b, &v) == nil && v.PublicKey != "" {
		b = []byte(v.PublicKey)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, &apiError{Code: "bad_key", Detail: file + " is not an Ed25519 public key"}
	}
	return ed25519.PublicKey(raw), nil
}

func runAuditProve(ctx context.Context, g *globals, name string, args []string) error {
	var id, output string
	fs := g.flags(name)
	fs.StringVar(&id, "event-id", "", "the event to prove")
	fs.StringVar(&output, "output", "", "write the proof to this file")
	if _, err := g.parseCommand(fs, args, auditProveArgs, 0); err != nil {
		return err
	}
	if id == "" {
		return usageError{"usage: keyledger audit prove --event-id ID"}
	}
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	raw, err := c.do(ctx, "GET", "/v1/audit/proof", url.Values{"event_id": {id}}, nil, nil)
	if err != nil {
		return err
	}
	if output == "" {
		return g.printJSON(raw)
	}
	return os.WriteFile(output, raw, 0o644)
}

func runAuditCheckProof(ctx context.Context, g *globals, name string, args []string) error {
	var proofFile, eventFile, pubFile string
	fs := g.flags(name)
	fs.StringVar(&proofFile, "proof", "", "proof JSON from keyledger audit prove")
	fs.StringVar(&eventFile, "event", "", "the event's stored bytes: its JSON exactly as stored (for an event of a pack, its own line; the raw column of its audit-log row)")
	fs.StringVar(&pubFile, "public-key", "", "notary public key (base64, or the JSON of /v1/audit/public-key)")
	if _, err := g.parseCommand(fs, args, auditCheckProofArgs, 0); err != nil {
		return err
	}
	if proofFile == "" || eventFile == "" || pubFile == "" {
		return usageError{"usage: keyledger audit check-proof " + auditCheckProofArgs}
	}
	pub, err := loadPublicKey(pubFile, "")
	if err != nil {
		return err
	}
	var pv api.ProofView
	b, err := os.ReadFile(proofFile)
	if err == nil {
		err = json.Unmarshal(b, &pv)
	}
	if err != nil {
		return &apiError{Code: "bad_proof", Detail: err.Error()}
	}
	event, err := readAll(eventFile)
	if err != nil {
		return err
	}
	p := notary.Proof{Stream: pv.Stream, Seq: pv.Seq, Index: pv.Index, EventID: pv.EventID, Hashes: pv.Hashes}
	p.Checkpoint.Stream, p.Checkpoint.Size, p.Checkpoint.Root = pv.Checkpoint.Stream, pv.Checkpoint.Size, pv.Checkpoint.Root
	p.Checkpoint.At, p.Checkpoint.KeyID, p.Checkpoint.Sig = pv.Checkpoint.At, pv.Checkpoint.KeyID, pv.Checkpoint.Signature
	if err := notary.CheckProof(p, event, pub); err != nil {
		return &apiError{Code: "proof_failed", Detail: err.Error()}
	}
	fmt.Fprintf(g.stdout, "OK: event %s is %s entry %d (message %d) of the tree of %d signed at %s\n", pv.EventID, pv.Stream, pv.Index+1, pv.Seq,
		pv.Checkpoint.Size, pv.Checkpoint.At.Format(time.RFC3339))
	return nil
}

func readAll(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, &apiError{Code: "bad_event", Detail: err.Error()}
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, &apiError{Code: "bad_event", Detail: err.Error()}
	}
	return b, nil
}
