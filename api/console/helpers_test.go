package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
	"github.com/keyledger/keyledger/projections/command"
	"github.com/keyledger/keyledger/projections/keystate"
)

// node is a whole keyledger node in one process: a real embedded NATS
// server, the key-state projection, the usage publisher, the command path
// and the HTTP API with its console on a loopback listener; with a log, a
// fresh database on the test ClickHouse fed by a running sink.
type node struct {
	t     testing.TB
	store *eventstore.Store
	state *keystate.Projection
	ts    *httptest.Server
	root  string
	logs  *lockedBuffer
	ch    *chlog.Store
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func mustStartNode(tb testing.TB, withLog bool) *node {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n := &node{t: tb, logs: &lockedBuffer{}, state: keystate.New()}
	logger := slog.New(slog.NewJSONHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := eventstore.Open(ctx, eventstore.Config{NoSync: true, DataDir: tb.TempDir(), Logger: logger})
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	n.store = store
	usage := eventstore.NewUsagePublisher(store, eventstore.UsageConfig{})
	sub, err := store.Subscribe(context.Background(), domain.StreamKeys, 1, func(e domain.Envelope) error {
		n.state.Apply(e)
		return nil
	})
	if err != nil {
		tb.Fatalf("subscribe: %v", err)
	}
	cfg := api.Config{Store: store, State: n.state, Usage: usage, Logger: logger, MaxActiveKeys: 50}
	cfg.Commands = command.New(store, n.state, command.Config{MaxActiveKeys: cfg.MaxActiveKeys})
	stopSink := func() {}
	if withLog {
		n.ch = chlogtest.MustOpen(tb)
		cfg.Logs = n.ch
		sink := chlog.NewSink(store.JetStream(), n.ch, chlog.SinkConfig{BatchWait: 20 * time.Millisecond}, nil)
		sctx, scancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = sink.Run(sctx) }()
		stopSink = func() { scancel(); <-done }
	}
	srv := api.New(cfg)
	n.ts = httptest.NewServer(srv)
	runCtx, stopRun := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); _ = srv.Run(runCtx) }()
	tb.Cleanup(func() {
		stopRun()
		<-ran
		n.ts.Close()
		stopSink()
		_ = usage.Close(context.Background())
		sub.Stop()
		_ = store.Close()
	})
	n.root, _, err = srv.Bootstrap(ctx, "")
	if err != nil {
		tb.Fatalf("bootstrap: %v", err)
	}
	return n
}

// syncLog waits until the audit log holds every event stored in JetStream
// (events, not messages: a group commit packs many usage events into one).
func (n *node) syncLog() {
	n.t.Helper()
	checkFor(n.t, 30*time.Second, func() error {
		k, err := n.store.CountEvents(context.Background(), domain.StreamKeys)
		if err != nil {
			return err
		}
		u, err := n.store.CountEvents(context.Background(), domain.StreamUsage)
		if err != nil {
			return err
		}
		got, err := n.ch.CountEvents(context.Background())
		if err != nil {
			return err
		}
		if got != k+u {
			return errorf("audit log has %d events, JetStream %d", got, k+u)
		}
		return nil
	})
}

type stringError string

func (e stringError) Error() string { return string(e) }

func errorf(format string, a ...any) error {
	return stringError(strings.TrimSpace(sprintf(format, a...)))
}

// checkFor polls fn until it returns nil or total passes.
func checkFor(tb testing.TB, total time.Duration, fn func() error) {
	tb.Helper()
	deadline := time.Now().Add(total)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("still failing after %s: %v", total, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// apiDo sends a JSON API request with a bearer token.
func (n *node) apiDo(method, path, token string, body any, out any) int {
	n.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, n.ts.URL+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := n.ts.Client().Do(req)
	if err != nil {
		n.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if out != nil && res.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			n.t.Fatalf("decode %s: %v", b, err)
		}
	}
	return res.StatusCode
}

// principal creates a principal and returns its id and first token.
func (n *node) principal(name, email string, roles ...string) (string, string) {
	n.t.Helper()
	var cp api.CreatedPrincipal
	if st := n.apiDo("POST", "/v1/principals", n.root, map[string]any{"name": name, "email": email, "roles": roles}, &cp); st != http.StatusCreated {
		n.t.Fatalf("create principal: %d", st)
	}
	return cp.ID, cp.Credential.Token
}

func (n *node) createKey(token, name string) api.CreatedKey {
	n.t.Helper()
	var k api.CreatedKey
	if st := n.apiDo("POST", "/v1/keys", token, map[string]any{"name": name}, &k); st != http.StatusCreated {
		n.t.Fatalf("create key: %d", st)
	}
	return k
}

// browserless is a cookie-keeping HTTP client that does not follow
// redirects, for the console's own protocol tests.
type browserless struct {
	t *testing.T
	n *node
	c *http.Client
}

func newBrowserless(t *testing.T, n *node) *browserless {
	jar, _ := cookiejar.New(nil)
	return &browserless{t: t, n: n, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browserless) get(path string) (*http.Response, string) {
	b.t.Helper()
	res, err := b.c.Get(b.n.ts.URL + path)
	if err != nil {
		b.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res, string(body)
}

func (b *browserless) post(path string, form url.Values) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest("POST", b.n.ts.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", b.n.ts.URL)
	res, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res, string(body)
}

var csrfRE = regexp.MustCompile(`name="_csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF field in page:\n%s", page)
	}
	return m[1]
}

// signIn signs in with token and returns the session's CSRF token.
func (b *browserless) signIn(token string) string {
	b.t.Helper()
	_, page := b.get("/login")
	res, body := b.post("/login", url.Values{"_csrf": {csrfOf(b.t, page)}, "token": {token}})
	if res.StatusCode != http.StatusSeeOther {
		b.t.Fatalf("sign in: %d %s", res.StatusCode, body)
	}
	_, page = b.get("/")
	return csrfOf(b.t, page)
}
