package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
)

func parseConfig(args []string, env map[string]string) (Config, error) {
	var c Config
	err := c.parse(args, io.Discard, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	return c, err
}

// TestConfigRejectsMalformedEnvironment: a value that does not parse
// stops start-up with an error naming the variable, never silently
// falling back to the default.
func TestConfigRejectsMalformedEnvironment(t *testing.T) {
	tests := []struct {
		env  map[string]string
		args []string
		want string // in the error
	}{
		{map[string]string{"KEYLEDGER_REPLICAS": "abc"}, nil, "KEYLEDGER_REPLICAS"},
		{map[string]string{"KEYLEDGER_NO_SYNC": "maybe"}, nil, "KEYLEDGER_NO_SYNC"},
		{map[string]string{"KEYLEDGER_NOTARY": "yes please"}, nil, "KEYLEDGER_NOTARY"},
		{map[string]string{"KEYLEDGER_CHECKPOINT_INTERVAL": "soon"}, nil, "KEYLEDGER_CHECKPOINT_INTERVAL"},
		{map[string]string{"KEYLEDGER_CHECKPOINT_INTERVAL": "-5s"}, nil, "--checkpoint-interval"},
		{nil, []string{"--audit-batch-wait", "0s"}, "--audit-batch-wait"},
		{map[string]string{"KEYLEDGER_USAGE_BUFFER": "1.5"}, nil, "KEYLEDGER_USAGE_BUFFER"},
		{map[string]string{"KEYLEDGER_MAX_SINK_LAG": "-1"}, nil, "KEYLEDGER_MAX_SINK_LAG"},
		{nil, []string{"--max-sink-lag", "-1"}, "max-sink-lag"},
		{map[string]string{"KEYLEDGER_SNAPSHOT_EVERY": "-3"}, nil, "--snapshot-every"},
		{map[string]string{"KEYLEDGER_LOG_LEVEL": "loud"}, nil, "--log-level"},
		{map[string]string{"KEYLEDGER_WEBHOOK_MIN_SEVERITY": "urgent"}, nil, "--webhook-min-severity"},
		{map[string]string{"KEYLEDGER_WEBHOOKS": "https://a.example/h"}, nil, "KEYLEDGER_WEBHOOKS is now KEYLEDGER_WEBHOOK"},
		{map[string]string{"KEYLEDGER_TLS_CERT": "cert.pem"}, nil, "--tls-cert and --tls-key"},
		{nil, []string{"--tls-key", "key.pem"}, "--tls-cert and --tls-key"},
		{map[string]string{"KEYLEDGER_ROOT_TOKEN": "my-own-root-token"}, nil, "generate one with `keyledger token new`"},
		{map[string]string{"KEYLEDGER_REPLICAS": "abc", "KEYLEDGER_NO_SYNC": "maybe"}, nil, "KEYLEDGER_NO_SYNC"},
	}
	for _, tt := range tests {
		_, err := parseConfig(tt.args, tt.env)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("env %v args %q: got %v, want an error naming %s", tt.env, tt.args, err, tt.want)
		}
	}
	// Both malformed variables are named at once.
	_, err := parseConfig(nil, map[string]string{"KEYLEDGER_REPLICAS": "abc", "KEYLEDGER_NO_SYNC": "maybe"})
	if err == nil || !strings.Contains(err.Error(), "KEYLEDGER_REPLICAS") || !strings.Contains(err.Error(), "KEYLEDGER_NO_SYNC") {
		t.Errorf("two bad variables: %v", err)
	}
}

// TestConfigEveryFlagHasAnEnvironmentTwin sets each flag through its
// KEYLEDGER_* variable and sees the value arrive, and checks that a flag
// on the command line wins.
func TestConfigEveryFlagHasAnEnvironmentTwin(t *testing.T) {
	var c Config
	fs := c.flagSet(io.Discard)
	values := map[string]string{"bool": "true", "int": "7", "uint": "7", "duration": "7s", "string": "x.example:7", "value": "https://x.example/7"}
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		name := envName(f.Name)
		if !strings.Contains(f.Usage, "("+name+")") {
			t.Errorf("--%s: help does not name %s", f.Name, name)
		}
		typ, _ := flag.UnquoteUsage(f)
		v := values[typ]
		if typ == "" {
			v = boolString(f.DefValue == "false")
		}
		if v == "" {
			v = values["string"]
		}
		if f.Name == "log-level" {
			v = "debug"
		}
		if f.Name == "webhook-min-severity" {
			v = "high"
		}
		env := map[string]string{name: v}
		if f.Name == "tls-cert" || f.Name == "tls-key" {
			env = map[string]string{"KEYLEDGER_TLS_CERT": v, "KEYLEDGER_TLS_KEY": v}
		}
		got, err := parseConfig(nil, env)
		if err != nil {
			t.Errorf("%s=%s: %v", name, v, err)
			return
		}
		var want Config
		wfs := want.flagSet(io.Discard)
		for k, v := range env {
			_ = wfs.Set(strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, "KEYLEDGER_")), "_", "-"), v)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s=%s: got %+v, want %+v", name, v, got, want)
		}
	})
	if n < 25 {
		t.Errorf("only %d flags", n)
	}
	c, err := parseConfig([]string{"--replicas", "3", "--webhook", "https://flag.example/h"},
		map[string]string{"KEYLEDGER_REPLICAS": "5", "KEYLEDGER_WEBHOOK": "https://a.example/h, https://b.example/h", "KEYLEDGER_NOTARY": "false"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Replicas != 3 || !slices.Equal(c.Webhooks, []string{"https://flag.example/h"}) || c.Notary {
		t.Errorf("flags must win over the environment: %+v", c)
	}
	c, err = parseConfig(nil, map[string]string{"KEYLEDGER_WEBHOOK": "https://a.example/h, https://b.example/h"})
	if err != nil || !slices.Equal(c.Webhooks, []string{"https://a.example/h", "https://b.example/h"}) {
		t.Errorf("KEYLEDGER_WEBHOOK is comma-separated: %v %q", err, c.Webhooks)
	}
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// TestTokenNew prints tokens that parse and that serve accepts as
// KEYLEDGER_ROOT_TOKEN.
func TestTokenNew(t *testing.T) {
	seen := map[string]bool{}
	for range 3 {
		var out, errb strings.Builder
		if code := Run(context.Background(), []string{"token", "new"}, nil, &out, &errb); code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
		tok := strings.TrimSuffix(out.String(), "\n")
		if _, err := domain.ParseToken(tok); err != nil {
			t.Fatalf("%q: %v", tok, err)
		}
		if _, err := parseConfig(nil, map[string]string{"KEYLEDGER_ROOT_TOKEN": tok}); err != nil {
			t.Fatalf("KEYLEDGER_ROOT_TOKEN=%s: %v", tok, err)
		}
		if seen[tok] {
			t.Fatalf("token %s printed twice", tok)
		}
		seen[tok] = true
	}
	if code := Run(context.Background(), []string{"token"}, nil, io.Discard, io.Discard); code != 2 {
		t.Errorf("token without new: exit %d, want 2", code)
	}
}

// TestStackStopsInLayerOrder: components stop layer by layer, after the
// end of the context or after the first failure, which run returns.
func TestStackStopsInLayerOrder(t *testing.T) {
	for _, fail := range []bool{false, true} {
		var (
			mu      sync.Mutex
			stopped []int
		)
		s := stack{log: slog.New(slog.DiscardHandler)}
		started := make(chan struct{}, layerCount*2)
		for layer := range layerCount {
			for range 2 {
				s.add(layer, "test", func(ctx context.Context) error {
					started <- struct{}{}
					<-ctx.Done()
					mu.Lock()
					stopped = append(stopped, layer)
					mu.Unlock()
					return nil
				})
			}
		}
		boom := errors.New("boom")
		failNow := make(chan struct{})
		if fail {
			s.add(layerConsumers, "failing", func(ctx context.Context) error {
				<-failNow
				return boom
			})
		}
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- s.run(ctx) }()
		for range layerCount * 2 {
			<-started
		}
		if fail {
			close(failNow)
		} else {
			cancel()
		}
		err := <-errc
		cancel()
		if fail != errors.Is(err, boom) {
			t.Errorf("fail=%v: run returned %v", fail, err)
		}
		if !slices.IsSorted(stopped) || len(stopped) != layerCount*2 {
			t.Errorf("fail=%v: layers stopped in the order %v", fail, stopped)
		}
	}
	// A component that returns while its context is live is a failure too.
	s := stack{log: slog.New(slog.DiscardHandler)}
	s.add(layerStorage, "quitter", func(context.Context) error { return nil })
	if err := s.run(context.Background()); err == nil || !strings.Contains(err.Error(), "quitter: stopped on its own") {
		t.Errorf("quitter: %v", err)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their files and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "keyledger test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pool
}

// TestServeTLS: with --tls-cert and --tls-key the HTTP listener speaks
// HTTPS only.
func TestServeTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	m := &Main{Stdout: io.Discard, Logger: slog.New(slog.DiscardHandler)}
	if err := m.ParseFlags([]string{"--data-dir", t.TempDir(), "--http-addr", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile}, io.Discard); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.Run(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	}()
	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	res, err := trusting.Get("https://" + m.Addr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK || res.TLS == nil {
		t.Fatalf("GET /healthz over TLS: %d, TLS %v", res.StatusCode, res.TLS != nil)
	}
	plain := &http.Client{Timeout: 10 * time.Second}
	if res, err := plain.Get("http://" + m.Addr() + "/healthz"); err == nil {
		res.Body.Close()
		if res.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP got /healthz from a TLS listener")
		}
	}
}

// TestServeRejectsBadTLSFiles stops before opening anything.
func TestServeRejectsBadTLSFiles(t *testing.T) {
	m := &Main{Stdout: io.Discard, Logger: slog.New(slog.DiscardHandler)}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	if err := m.ParseFlags([]string{"--data-dir", t.TempDir(), "--tls-cert", missing, "--tls-key", missing}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Fatalf("Run: %v", err)
	}
}

// TestFailedStartStopsItsClickHouse breaks the event store of a node whose
// managed ClickHouse starts in the background meanwhile: Run fails, and
// the ClickHouse it started is stopped with it, so the data dir is free
// for the next start.
func TestFailedStartStopsItsClickHouse(t *testing.T) {
	dir := t.TempDir()
	// The embedded server's store cannot be made where a file is.
	must(t, os.WriteFile(filepath.Join(dir, "nats"), []byte("not a directory"), 0o600))
	m := &Main{Stdout: io.Discard}
	must(t, m.ParseFlags([]string{"--data-dir", dir, "--http-addr", "127.0.0.1:0"}, io.Discard))
	m.Logger = slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Run(ctx); err == nil || !strings.Contains(err.Error(), "event store") {
		m.Close()
		t.Fatalf("Run on a broken event store: %v, want its error", err)
	}
	if m.chStart == nil {
		t.Fatal("no ClickHouse was started in the background")
	}
	// It had started: the next start on the same dir gets it.
	if _, err := m.chStart.wait(); err != nil {
		t.Fatalf("the background ClickHouse did not start: %v", err)
	}
	local, err := chlog.StartLocal(ctx, dir, m.Logger)
	if err != nil {
		t.Fatalf("the failed start left its ClickHouse running: %v", err)
	}
	must(t, local.Stop())
}
