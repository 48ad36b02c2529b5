package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/notary"
)

// startLimitedNode runs the real server in-process with its managed
// ClickHouse and the given extra flags.
func startLimitedNode(t *testing.T, args ...string) (*Main, string) {
	t.Helper()
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{9, 9, 9})
	t.Setenv("KEYLEDGER_ROOT_TOKEN", root)
	m := &Main{Stdout: io.Discard}
	base := []string{"--data-dir", t.TempDir(), "--http-addr", "127.0.0.1:0", "--no-sync", "--audit-batch-wait", "100ms"}
	if err := m.ParseFlags(append(base, args...), io.Discard); err != nil {
		t.Fatal(err)
	}
	m.Logger = slog.New(slog.DiscardHandler)
	if err := m.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m, root
}

// rawRequest writes req on a fresh connection and returns the connection.
func rawConn(t *testing.T, m *Main) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedBy reads from c until the server closes it, and fails the test when
// it is still open after total.
func closedBy(t *testing.T, c net.Conn, total time.Duration) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(total))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection is still open after %s (read %q)", total, b)
	}
	return string(b)
}

// TestHTTPLimits: with short limits, a body trickled to /login is cut off,
// an idle keep-alive connection is closed, an oversized header is refused,
// and alert streams past their caps answer 429 — through the real server.
func TestHTTPLimits(t *testing.T) {
	m, root := startLimitedNode(t, "--http-read-timeout", "1s", "--http-idle-timeout", "1s",
		"--alert-streams-per-principal", "2", "--alert-streams", "3")

	t.Run("trickled body", func(t *testing.T) {
		c := rawConn(t, m)
		const length = 600
		fmt.Fprintf(c, "POST /login HTTP/1.1\r\nHost: keyledger\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n", length)
		// One byte at a time, as the attacker did, until the server
		// stops listening; the whole body is never sent.
		sent := 0
		for ; sent < length; sent++ {
			if _, err := c.Write([]byte("a")); err != nil {
				break
			}
			_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			var one [1]byte
			if n, err := c.Read(one[:]); n > 0 || errors.Is(err, io.EOF) {
				break
			}
		}
		if sent >= length {
			t.Fatalf("the server read all %d bytes of a body trickled over %d writes", length, sent)
		}
		_ = closedBy(t, c, 30*time.Second)
	})

	t.Run("idle keep-alive", func(t *testing.T) {
		c := rawConn(t, m)
		fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: keyledger\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("healthz: %v %v", res, err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		// The connection is kept alive, then closed while idle.
		_ = closedBy(t, c, 30*time.Second)
	})

	t.Run("header too large", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+m.Addr()+"/healthz", nil)
		req.Header.Set("X-Padding", strings.Repeat("p", 2*maxHeaderBytes))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("a %d-byte header: %d, want 431", 2*maxHeaderBytes, res.StatusCode)
		}
	})

	t.Run("alert streams", func(t *testing.T) {
		var auditor api.CreatedPrincipal
		b := call(t, m, "POST", "/v1/principals", root, map[string]any{"name": "watcher", "roles": []string{"auditor"}})
		if err := json.Unmarshal(b, &auditor); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		open := func(tok string) (*http.Response, error) {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+m.Addr()+"/v1/alerts/stream", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			return http.DefaultClient.Do(req)
		}
		want := func(tok string, status int, code string) {
			t.Helper()
			res, err := open(tok)
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != status {
				t.Fatalf("stream: %d, want %d", res.StatusCode, status)
			}
			if status != 200 {
				var p api.Problem
				_ = json.NewDecoder(res.Body).Decode(&p)
				res.Body.Close()
				if p.Code != code {
					t.Fatalf("stream refused with %q, want %q", p.Code, code)
				}
			}
		}
		want(root, 200, "")
		want(root, 200, "")
		want(root, 429, "too_many_streams") // the principal's cap
		want(auditor.Credential.Token, 200, "")
		want(auditor.Credential.Token, 429, "too_many_streams") // the node's cap
		cancel()
		// Closed streams give their places back.
		ctx, cancel = context.WithCancel(t.Context())
		defer cancel()
		checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			res, err := open(auditor.Credential.Token)
			if err != nil {
				return err
			}
			if res.StatusCode != 200 {
				res.Body.Close()
				return fmt.Errorf("stream after the others closed: %d", res.StatusCode)
			}
			return nil
		})
	})
}

// TestFailedAuthenticationThrottle: past its budget an address is answered
// 429 too_many_failures with Retry-After, a valid token is never throttled,
// an unknown key and a wrong secret answer alike, and the failures past the
// budget are stored as one THROTTLED summary with their count.
func TestFailedAuthenticationThrottle(t *testing.T) {
	m, root := startLimitedNode(t, "--auth-failure-budget", "5", "--auth-failure-window", "3s")
	unknown := domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{1})
	tok, _ := domain.ParseToken(root)
	wrong := domain.FormatToken(tok.KeyID, domain.Secret{2})
	status := func(token string) (int, api.Problem, http.Header) {
		req, _ := httpNewRequest("GET", "http://"+m.Addr()+"/v1/me", token)
		res, err := httpDo(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var p api.Problem
		_ = json.NewDecoder(res.Body).Decode(&p)
		return res.StatusCode, p, res.Header
	}
	for i, token := range []string{unknown, wrong, unknown, wrong, "klk_nonsense"} {
		st, p, _ := status(token)
		want := "token_invalid"
		if i == 4 {
			want = "token_malformed"
		}
		if st != 401 || p.Code != want {
			t.Fatalf("failure %d: %d %s, want 401 %s", i+1, st, p.Code, want)
		}
	}
	const over = 40
	for i := range over {
		st, p, h := status([]string{unknown, wrong}[i%2])
		if st != 429 || p.Code != "too_many_failures" || h.Get("Retry-After") == "" {
			t.Fatalf("failure past the budget: %d %s Retry-After %q", st, p.Code, h.Get("Retry-After"))
		}
		if i == over/2 {
			// Valid traffic is never throttled.
			if st, p, _ := status(root); st != 200 {
				t.Fatalf("a valid token from the throttled address: %d %s", st, p.Code)
			}
		}
	}
	// The 40 are one summary event in the log, with their count and the
	// two key ids they presented.
	ctx := t.Context()
	checkFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		b, err := callStatus(m, "/v1/logs?outcome=THROTTLED", root)
		if err != nil {
			return err
		}
		var page struct {
			Events []api.LogEntry `json:"events"`
		}
		if err := json.Unmarshal(b, &page); err != nil {
			return err
		}
		if len(page.Events) != 1 || page.Events[0].SourceIP != "127.0.0.1" {
			return fmt.Errorf("THROTTLED events %+v, want one from 127.0.0.1", page.Events)
		}
		var env domain.Envelope
		if _, err := m.ch.Search(ctx, chlog.Query{Outcomes: []string{domain.OutcomeThrottled}, Limit: 10}, func(r chlog.Row) error {
			env, err = domain.UnmarshalEnvelope([]byte(r.Raw))
			return err
		}); err != nil {
			return err
		}
		ev, err := env.Decode()
		if err != nil {
			return err
		}
		d := ev.(domain.KeyDenied)
		if d.Code != domain.OutcomeThrottled || d.Count != over || len(d.KeyIDs) != 2 {
			return fmt.Errorf("summary %+v, want count %d and 2 key ids", d, over)
		}
		return nil
	})
}

// TestFailedAuthenticationCost sends 10,000 failed authentications from one
// address with the default budget and window, and measures what they added
// to JetStream (every stream's bytes) and to ClickHouse (the audit table's
// active parts on disk). KEYLEDGER_TEST_FAILURES changes how many.
func TestFailedAuthenticationCost(t *testing.T) {
	n := 10000
	if v := os.Getenv("KEYLEDGER_TEST_FAILURES"); v != "" {
		fmt.Sscan(v, &n)
	}
	m, _ := startLimitedNode(t, "--audit-batch-wait", "1s")
	ctx := t.Context()
	jsBytes := func() uint64 {
		var sum uint64
		var per []string
		defer func() { t.Logf("JetStream bytes: %s", strings.Join(per, ", ")) }()
		for _, s := range append(notary.Streams[:len(notary.Streams):len(notary.Streams)], domain.StreamCheckpoints) {
			st, err := m.store.JetStream().Stream(ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			sum += info.State.Bytes
			per = append(per, fmt.Sprintf("%s %d (%d messages)", s, info.State.Bytes, info.State.Msgs))
		}
		return sum
	}
	chBytes := func() uint64 {
		var b uint64
		if err := m.ch.Conn().QueryRow(ctx, `SELECT toUInt64(sum(bytes_on_disk)) FROM system.parts WHERE database = ? AND table = 'audit_log' AND active`, m.ch.Database()).Scan(&b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	synced := func() error {
		if lag, err := m.sink.TotalLag(ctx); err != nil || lag > 0 {
			return fmt.Errorf("audit sink lags %d (%v)", lag, err)
		}
		return nil
	}
	checkFor(t, 30*time.Second, 50*time.Millisecond, synced)
	js0, ch0 := jsBytes(), chBytes()

	bad := domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{3})
	var codes sync.Map
	var sent atomic.Int64
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	for range 8 {
		wg.Go(func() {
			for sent.Add(1) <= int64(n) {
				req, _ := httpNewRequest("GET", "http://"+m.Addr()+"/v1/me", bad)
				res, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				c, _ := codes.LoadOrStore(res.StatusCode, new(atomic.Int64))
				c.(*atomic.Int64).Add(1)
			}
		})
	}
	wg.Wait()
	// The summary is stored when the address's window ends. The test
	// asks the log store directly: every authenticated API call is
	// itself recorded.
	checkFor(t, 2*time.Minute, 100*time.Millisecond, func() error {
		found := 0
		if _, err := m.ch.Search(ctx, chlog.Query{Outcomes: []string{domain.OutcomeThrottled}, Limit: 10}, func(chlog.Row) error {
			found++
			return nil
		}); err != nil {
			return err
		}
		if found == 0 {
			return errors.New("no THROTTLED summary yet")
		}
		return synced()
	})
	js1, ch1 := jsBytes(), chBytes()
	got := map[int]int64{}
	codes.Range(func(k, v any) bool { got[k.(int)] = v.(*atomic.Int64).Load(); return true })
	t.Logf("%d failed authentications from one address: answers %v; JetStream +%d bytes, ClickHouse +%d bytes, total %d bytes",
		n, got, js1-js0, int64(ch1)-int64(ch0), js1-js0+ch1-ch0)
	if total := js1 - js0 + ch1 - ch0; n == 10000 && total > 100<<10 {
		t.Errorf("10,000 failed authentications cost %d bytes, want at most %d", total, 100<<10)
	}
}
