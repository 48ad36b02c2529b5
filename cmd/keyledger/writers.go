package main

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/notary"
)

// trustFileName is where a node keeps its trusted writers when no
// --trusted-writers file is given.
const trustFileName = "trusted-writers.json"

// loadWriters returns the node's writer key (keyFile, or
// <data-dir>/writer.key, created on first start with mode 0600) and the
// writers whose events the node applies: trustFile, or
// <data-dir>/trusted-writers.json, which the first start writes with the
// node's own key. The node's own key is always trusted unless the file
// lists it (as retired, for a rotation). A ledger that already held events
// when the trust file was first written (one from before keyledger signed
// its events) has them accepted unsigned up to that moment.
func loadWriters(dataDir, keyFile, trustFile string, now time.Time) (ed25519.PrivateKey, domain.Writers, error) {
	if keyFile == "" {
		keyFile = filepath.Join(dataDir, "writer.key")
	}
	key, err := notary.LoadOrCreateKey(keyFile)
	if err != nil {
		return nil, domain.Writers{}, fmt.Errorf("writer key: %w", err)
	}
	own := domain.WriterID(key.Public().(ed25519.PublicKey))
	if trustFile != "" {
		b, err := os.ReadFile(trustFile)
		if err != nil {
			return nil, domain.Writers{}, fmt.Errorf("--trusted-writers: %w", err)
		}
		w, err := domain.ParseWriters(b)
		if err != nil {
			return nil, domain.Writers{}, fmt.Errorf("--trusted-writers %s: %w", trustFile, err)
		}
		return key, w.Trust(own, "this node"), nil
	}
	path := filepath.Join(dataDir, trustFileName)
	b, err := os.ReadFile(path)
	if err == nil {
		w, err := domain.ParseWriters(b)
		if err != nil {
			return nil, domain.Writers{}, fmt.Errorf("%s: %w", path, err)
		}
		return key, w.Trust(own, "this node"), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, domain.Writers{}, fmt.Errorf("trusted writers: %w", err)
	}
	w := domain.Writers{}.Trust(own, "this node")
	if entries, err := os.ReadDir(filepath.Join(dataDir, "nats")); err == nil && len(entries) > 0 {
		w.UnsignedBefore = now.UTC()
	}
	out, _ := json.MarshalIndent(w, "", "  ")
	if err := os.WriteFile(path, append(out, '\n'), 0o600); err != nil {
		return nil, domain.Writers{}, fmt.Errorf("write trusted writers: %w", err)
	}
	return key, w, nil
}

// readTrustedWriters returns the writers audit verify checks signatures
// against: trustFile, else the data dir's own trust file; nil when there is
// neither (a ledger from before keyledger signed its events).
func readTrustedWriters(dataDir, trustFile string) (*domain.Writers, error) {
	path := trustFile
	if path == "" {
		if dataDir == "" {
			return nil, nil
		}
		path = filepath.Join(dataDir, trustFileName)
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && trustFile == "" {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("trusted writers: %w", err)
	}
	w, err := domain.ParseWriters(b)
	if err != nil {
		return nil, fmt.Errorf("trusted writers %s: %w", path, err)
	}
	return &w, nil
}
