package eventstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// testLogger shows warnings and errors only: the embedded server's routine
// notices would drown the test output.
func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// MustOpenStore opens a store on an embedded server with its data in a
// fresh temporary directory, or as configured by opts, and closes it when
// the test ends.
func MustOpenStore(tb testing.TB, opts ...func(*eventstore.Config)) *eventstore.Store {
	tb.Helper()
	cfg := eventstore.Config{DataDir: tb.TempDir(), Logger: testLogger()}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := eventstore.Open(ctx, cfg)
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// MustOpenListening opens a store whose embedded server listens on a free
// port of 127.0.0.1, and returns it with the settings by which another
// store reaches it over TCP as a keyledger node, the way a node reaches an
// external cluster.
func MustOpenListening(tb testing.TB, opts ...func(*eventstore.Config)) (*eventstore.Store, func(*eventstore.Config)) {
	tb.Helper()
	s := MustOpenStore(tb, append([]func(*eventstore.Config){func(c *eventstore.Config) { c.Listen = "127.0.0.1:0" }}, opts...)...)
	return s, func(c *eventstore.Config) {
		c.URL = s.ClientURL()
		c.NkeySeedFile = eventstore.SeedFile(s.CredentialsDir(), eventstore.IdentityNode)
	}
}

// checkFor polls f every interval until it returns nil, failing the test
// with f's last error after total.
func checkFor(tb testing.TB, total, every time.Duration, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(total)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(every)
	}
	tb.Fatalf("condition not met after %s: %v", total, err)
}

func testCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func newKeyID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "k" + hex.EncodeToString(b[:])
}

var testTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func envelope(tb testing.TB, keyID string, ev domain.Event) domain.Envelope {
	tb.Helper()
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), keyID, ev, testTime, "tester", &domain.RequestContext{RequestID: "r1"})
	if err != nil {
		tb.Fatal(err)
	}
	return env
}

func created(tb testing.TB, keyID string) domain.Envelope {
	return envelope(tb, keyID, domain.KeyCreated{
		Owner: "alice", Name: "ci", Permissions: []string{"keys:read"}, LifetimeDays: 30,
		ExpiresAt: testTime.AddDate(0, 0, 30), SecretHash: "abc",
	})
}

func updated(tb testing.TB, keyID string, name string) domain.Envelope {
	return envelope(tb, keyID, domain.KeyUpdated{Name: &name})
}

func revoked(tb testing.TB, keyID string) domain.Envelope {
	return envelope(tb, keyID, domain.KeyRevoked{Reason: "leaked"})
}

func deleted(tb testing.TB, keyID string) domain.Envelope {
	return envelope(tb, keyID, domain.KeyDeleted{})
}

func used(tb testing.TB, keyID string) domain.Envelope {
	return envelope(tb, keyID, domain.KeyUsed{Code: "VALID", Service: "bench"})
}

func mustAppend(tb testing.TB, s *eventstore.Store, expected uint64, envs ...domain.Envelope) uint64 {
	tb.Helper()
	seq, err := s.Append(testCtx(tb), expected, envs)
	if err != nil {
		tb.Fatalf("append %s after %d: %v", envs[0].Type, expected, err)
	}
	return seq
}

func mustCount(tb testing.TB, s *eventstore.Store, stream string) uint64 {
	tb.Helper()
	n, err := s.CountEvents(testCtx(tb), stream)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

func isConflict(err error) bool {
	var e *domain.Error
	return errors.As(err, &e) && e.Code == domain.ECONFLICT && e.Reason == "version_conflict"
}

// rawMsg returns the stored bytes of the message at seq.
func rawMsg(tb testing.TB, s *eventstore.Store, stream string, seq uint64) *jetstream.RawStreamMsg {
	tb.Helper()
	ctx := testCtx(tb)
	st, err := s.JetStream().Stream(ctx, stream)
	if err != nil {
		tb.Fatal(err)
	}
	m, err := st.GetMsg(ctx, seq)
	if err != nil {
		tb.Fatalf("get %s seq %d: %v", stream, seq, err)
	}
	return m
}

// publishDirect stores env the way a first Append attempt would, bypassing
// the store, to stand in for an append whose ack was lost.
func publishDirect(tb testing.TB, s *eventstore.Store, env domain.Envelope) uint64 {
	tb.Helper()
	b, err := env.Marshal()
	if err != nil {
		tb.Fatal(err)
	}
	m := nats.NewMsg(env.Subject())
	m.Data = b
	m.Header.Set("Nats-Msg-Id", env.ID.String())
	ack, err := s.JetStream().PublishMsg(testCtx(tb), m)
	if err != nil {
		tb.Fatalf("publish %s: %v", env.Subject(), err)
	}
	return ack.Sequence
}

// collector gathers what a subscription delivers.
type collector struct {
	ch chan domain.Envelope
}

func newCollector() *collector { return &collector{ch: make(chan domain.Envelope, 10000)} }

func (c *collector) fn(env domain.Envelope) error {
	c.ch <- env
	return nil
}

// next returns the next n delivered events, failing after a timeout.
func (c *collector) next(tb testing.TB, n int) []domain.Envelope {
	tb.Helper()
	var out []domain.Envelope
	timeout := time.After(20 * time.Second)
	for len(out) < n {
		select {
		case env := <-c.ch:
			out = append(out, env)
		case <-timeout:
			tb.Fatalf("got %d of %d events", len(out), n)
		}
	}
	return out
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startCluster runs an in-process JetStream cluster of n servers and
// returns their client URLs once JetStream has a meta leader.
func startCluster(tb testing.TB, n int) []string {
	tb.Helper()
	ports := make([]int, n)
	var routes []string
	for i := range ports {
		ports[i] = freePort(tb)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	var urls []string
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   tb.TempDir(),
			NoSigs:     true,
			NoLog:      true,
			Cluster: server.ClusterOpts{
				Name: "keyledger-test",
				Host: "127.0.0.1",
				Port: ports[i],
			},
			Routes: server.RoutesFromStr(strings.Join(routes, ",")),
		}
		ns, err := server.NewServer(opts)
		if err != nil {
			tb.Fatal(err)
		}
		go ns.Start()
		tb.Cleanup(func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		})
		if !ns.ReadyForConnections(10 * time.Second) {
			tb.Fatalf("server %d not ready", i+1)
		}
		urls = append(urls, ns.ClientURL())
	}
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		tb.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	checkFor(tb, 30*time.Second, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err
	})
	return urls
}
