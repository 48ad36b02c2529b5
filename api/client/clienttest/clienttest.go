// Package clienttest runs a real keyledger deployment in one process for
// the tests of package client and its replica: an embedded NATS server
// that listens on loopback with the deployment's credentials, and a
// keyledger node (event store connection, key-state projection, usage
// publisher, HTTP API) that connects to it like any external node, so a
// test can stop the node while NATS stays up.
package clienttest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/command"
	"github.com/keyledger/keyledger/projections/keystate"
)

// Deployment is NATS plus at most one running node.
type Deployment struct {
	tb       testing.TB
	NATS     *eventstore.Store
	URL      string // the NATS listener
	CredsDir string
	Writers  domain.Writers
	key      ed25519.PrivateKey
	Node     *Node
	// Root is the super administrator's token.
	Root string
	// skew is added to the clock the node reads, so tests can move past
	// expiry dates.
	skew atomic.Int64
}

// Advance moves the node's clock forward by dur.
func (d *Deployment) Advance(dur time.Duration) { d.skew.Add(int64(dur)) }

func (d *Deployment) now() time.Time { return time.Now().Add(time.Duration(d.skew.Load())) }

// Node is one keyledger node.
type Node struct {
	Store *eventstore.Store
	State *keystate.Projection
	Usage *eventstore.UsagePublisher
	Srv   *api.Server
	HTTP  *httptest.Server
	sub   *eventstore.Subscription
}

// Logger is where the deployment logs: nowhere, unless KEYLEDGER_TEST_LOG
// is set.
func Logger() *slog.Logger {
	if os.Getenv("KEYLEDGER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Start starts NATS and a node, and bootstraps the super administrator.
// Everything stops when the test ends.
func Start(tb testing.TB) *Deployment {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	d := &Deployment{tb: tb, key: key}
	d.Writers = domain.Writers{}.Trust(domain.WriterID(key.Public().(ed25519.PublicKey)), "test-node")
	d.NATS, err = eventstore.Open(ctx, eventstore.Config{DataDir: tb.TempDir(), NoSync: true, Listen: "127.0.0.1:0", Logger: Logger(), WriterKey: key})
	if err != nil {
		tb.Fatalf("open nats: %v", err)
	}
	tb.Cleanup(func() { _ = d.NATS.Close() })
	d.URL, d.CredsDir = d.NATS.ClientURL(), d.NATS.CredentialsDir()
	d.StartNode()
	tok, _, err := d.Node.Srv.Bootstrap(ctx, "")
	if err != nil {
		tb.Fatalf("bootstrap: %v", err)
	}
	d.Root = tok
	return d
}

// VerifierNATS is the NATS configuration of a verifying service.
func (d *Deployment) VerifierNATS() eventstore.Config {
	return eventstore.Config{URL: d.URL, NkeySeedFile: eventstore.SeedFile(d.CredsDir, eventstore.IdentityVerifier), Identity: eventstore.IdentityVerifier}
}

// StartNode starts a node on the deployment's NATS (stopped with the
// test, or by StopNode).
func (d *Deployment) StartNode() *Node {
	tb := d.tb
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := eventstore.Open(ctx, eventstore.Config{
		URL: d.URL, NkeySeedFile: eventstore.SeedFile(d.CredsDir, eventstore.IdentityNode),
		WriterKey: d.key, Writers: &d.Writers, Logger: Logger(),
	})
	if err != nil {
		tb.Fatalf("open node store: %v", err)
	}
	n := &Node{Store: store, State: keystate.New()}
	n.Usage = eventstore.NewUsagePublisher(store, eventstore.UsageConfig{})
	last, err := store.LastSeq(ctx, domain.StreamKeys)
	if err != nil {
		tb.Fatal(err)
	}
	n.sub, err = store.Subscribe(context.Background(), domain.StreamKeys, 1, func(e domain.Envelope) error {
		n.State.Apply(e)
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := n.State.WaitFor(ctx, last); err != nil {
		tb.Fatal(err)
	}
	n.Srv = api.New(api.Config{Store: store, State: n.State, Usage: n.Usage, Logger: Logger(), Now: d.now,
		Commands: command.New(store, n.State, command.Config{Now: d.now})})
	n.HTTP = httptest.NewServer(n.Srv)
	d.Node = n
	tb.Cleanup(n.stop)
	return n
}

// StopNode stops the running node; NATS stays up.
func (d *Deployment) StopNode() {
	d.Node.stop()
	d.Node = nil
}

func (n *Node) stop() {
	if n.HTTP == nil {
		return
	}
	n.HTTP.Close()
	n.HTTP = nil
	_ = n.Usage.Close(context.Background())
	n.sub.Stop()
	_ = n.Store.Close()
}
