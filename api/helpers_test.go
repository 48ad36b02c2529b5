package api_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
	"github.com/keyledger/keyledger/projections/command"
	"github.com/keyledger/keyledger/projections/keystate"
)

// harness is a whole keyledger node in one process: a real embedded NATS
// server, the key-state projection fed by a KEYS subscription, the usage
// publisher and the HTTP API on a loopback listener.
type harness struct {
	t     testing.TB
	store *eventstore.Store
	usage *eventstore.UsagePublisher
	state *keystate.Projection
	srv   *api.Server
	ts    *httptest.Server
	root  string
	logs  syncBuffer
	ch    *chlog.Store
	sink  *chlog.Sink
	// skew is added to the wall clock the server reads, so tests can
	// move past expiry dates and grace periods without waiting.
	skew atomic.Int64
}

func (h *harness) advance(d time.Duration) { h.skew.Add(int64(d)) }

type syncBuffer struct {
	mu  chan struct{}
	buf *bytes.Buffer
}

func (b syncBuffer) Write(p []byte) (int, error) {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}

// String reads the logs under the same lock the server writes them with.
func (b syncBuffer) String() string {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.String()
}

func mustStart(tb testing.TB) *harness {
	tb.Helper()
	return mustStartWith(tb, eventstore.Config{NoSync: true}, eventstore.UsageConfig{})
}

// mustStartWithLog starts a harness whose audit log is a fresh database on
// the test ClickHouse, fed by a running sink.
func mustStartWithLog(tb testing.TB) *harness {
	tb.Helper()
	ch := chlogtest.MustOpen(tb)
	h := mustStartWith(tb, eventstore.Config{NoSync: true}, eventstore.UsageConfig{}, func(c *api.Config) { c.Logs = ch })
	h.ch = ch
	h.sink = chlog.NewSink(h.store.JetStream(), ch, chlog.SinkConfig{BatchWait: 20 * time.Millisecond}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.sink.Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
	return h
}

// syncLog waits until the audit log holds every event stored in JetStream.
func (h *harness) syncLog() {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Events, not messages: a group commit packs many usage
		// events into one message.
		want := h.events(domain.StreamKeys) + h.events(domain.StreamUsage)
		got, err := h.ch.CountEvents(context.Background())
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("audit log has %d events, JetStream %d (err %v)", got, want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mustStartWith starts a harness with the given store and usage settings;
// DataDir and Logger are filled in.
func mustStartWith(tb testing.TB, cfg eventstore.Config, ucfg eventstore.UsageConfig, opts ...func(*api.Config)) *harness {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	logs := syncBuffer{mu: make(chan struct{}, 1), buf: &bytes.Buffer{}}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.DataDir, cfg.Logger = tb.TempDir(), logger
	store, err := eventstore.Open(ctx, cfg)
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	h := &harness{t: tb, store: store, state: keystate.New(), logs: logs}
	h.usage = eventstore.NewUsagePublisher(store, ucfg)
	sub, err := store.Subscribe(context.Background(), domain.StreamKeys, 1, func(e domain.Envelope) error {
		h.state.Apply(e)
		return nil
	})
	if err != nil {
		tb.Fatalf("subscribe: %v", err)
	}
	// The tests present many bad tokens from one address: the throttle
	// of failed authentications is tested on its own, with its budget.
	acfg := api.Config{Store: store, State: h.state, Usage: h.usage, Logger: logger, MaxActiveKeys: 20,
		Now:          func() time.Time { return time.Now().Add(time.Duration(h.skew.Load())) },
		AuthFailures: api.FailureLimits{Budget: 1 << 30}}
	for _, o := range opts {
		o(&acfg)
	}
	if acfg.Commands == nil {
		acfg.Commands = command.New(store, h.state, command.Config{Now: acfg.Now, NewID: acfg.NewID, MaxActiveKeys: acfg.MaxActiveKeys})
	}
	h.srv = api.New(acfg)
	h.ts = httptest.NewServer(h.srv)
	runCtx, stopRun := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); _ = h.srv.Run(runCtx) }()
	tb.Cleanup(func() {
		stopRun()
		<-ran
		h.ts.Close()
		_ = h.usage.Close(context.Background())
		sub.Stop()
		_ = store.Close()
	})
	if !noBootstrap {
		h.root, _, err = h.srv.Bootstrap(ctx, "")
		if err != nil {
			tb.Fatalf("bootstrap: %v", err)
		}
	}
	return h
}

// noBootstrap is set only while mustStartNoBootstrap builds its harness.
var noBootstrap bool

// mustStartNoBootstrap starts a node on an empty ledger without creating
// the super administrator.
func mustStartNoBootstrap(tb testing.TB) *harness {
	noBootstrap = true
	defer func() { noBootstrap = false }()
	return mustStart(tb)
}

type resp struct {
	status int
	body   []byte
	header http.Header
}

func (r resp) json(tb testing.TB, v any) {
	tb.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		tb.Fatalf("decode %s: %v", r.body, err)
	}
}

func (r resp) problemCode(tb testing.TB) string {
	tb.Helper()
	var p api.Problem
	r.json(tb, &p)
	return p.Code
}

// do sends a request; body may be a string (sent verbatim) or a value to
// encode as JSON.
func (h *harness) do(method, path, token string, body any) resp {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, h.ts.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := h.ts.Client().Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, body: b, header: res.Header}
}

// principal creates a principal with roles through the API and returns its
// id and first credential.
func (h *harness) principal(name string, roles ...string) (string, string) {
	h.t.Helper()
	r := h.do("POST", "/v1/principals", h.root, map[string]any{"name": name, "roles": roles})
	if r.status != http.StatusCreated {
		h.t.Fatalf("create principal: %d %s", r.status, r.body)
	}
	var cp api.CreatedPrincipal
	r.json(h.t, &cp)
	return cp.ID, cp.Credential.Token
}

// mintKey creates a key for any owner directly through the event store, as
// test setup for owners that may not create keys through the API.
func (h *harness) mintKey(owner string, perms ...string) (string, string) {
	h.t.Helper()
	id := uuid.Must(uuid.NewV7())
	var secret domain.Secret
	_, _ = rand.Read(secret[:])
	envs, err := domain.Decide(domain.Key{}, domain.CreateKey{
		Meta: domain.Meta{Actor: "test"}, KeyID: id.String(), Owner: owner, Name: "minted",
		Permissions: perms, SecretHash: domain.HashSecret(secret),
	}, time.Now(), uuid.New)
	if err != nil {
		h.t.Fatal(err)
	}
	h.commit(0, envs)
	return id.String(), domain.FormatToken(id, secret)
}

func (h *harness) commit(expected uint64, envs []domain.Envelope) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seq, err := h.store.Append(ctx, expected, envs)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.state.WaitFor(ctx, seq); err != nil {
		h.t.Fatal(err)
	}
}

// disable disables a key directly through the event store.
func (h *harness) disable(id string) {
	h.t.Helper()
	k, _ := h.state.Key(id)
	envs, err := domain.Decide(k, domain.DisableKey{Meta: domain.Meta{Actor: "test"}}, time.Now(), uuid.New)
	if err != nil {
		h.t.Fatal(err)
	}
	h.commit(k.Version, envs)
}

func (h *harness) count(stream string) uint64 {
	h.t.Helper()
	n, err := h.store.Count(context.Background(), stream)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

// events returns how many events stream holds, a pack counting as the
// events in it.
func (h *harness) events(stream string) uint64 {
	h.t.Helper()
	n, err := h.store.CountEvents(context.Background(), stream)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

func (h *harness) verify(token, perm, ip, caller string) api.VerifyResponse {
	h.t.Helper()
	r := h.do("POST", "/v1/verify", caller, map[string]string{"token": token, "permission": perm, "ip": ip})
	if r.status != http.StatusOK {
		h.t.Fatalf("verify: %d %s", r.status, r.body)
	}
	var v api.VerifyResponse
	r.json(h.t, &v)
	return v
}

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}
