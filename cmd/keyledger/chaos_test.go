package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// chaosLong makes the fault suite run each phase for longer under load;
// `make chaos` sets it. Without it the suite is the short version that
// `make test` runs.
var chaosLong = flag.Bool("chaos.long", false, "run the fault suite's long version (make chaos)")

// chaosPhase is how long the load runs before, during and after a fault.
func chaosPhase() time.Duration {
	if *chaosLong {
		return 30 * time.Second
	}
	return 3 * time.Second
}

// chaosNode is one keyledger serve process of the fault suite, restartable
// on its data dir. Its URL changes at each start (it listens on port 0).
type chaosNode struct {
	t       *testing.T
	dir     string
	env     []string
	srv     atomic.Pointer[e2eServer]
	natsURL string
	// external is set when the node uses a NATS server of the test's
	// rather than its embedded one.
	external bool
}

func startChaosNode(t *testing.T, dir string, env ...string) *chaosNode {
	return startChaosNodeOn(t, dir, "", env...)
}

// startChaosNodeOn starts a node on the external NATS at natsURL (its
// credentials given in env), or on its embedded server, listening, when
// natsURL is empty. Audit verify reaches NATS at natsURL as the auditor
// whose seed is under <dir>/nats/credentials, where the embedded server
// keeps it; a test with an external server writes it there.
func startChaosNodeOn(t *testing.T, dir, natsURL string, env ...string) *chaosNode {
	n := &chaosNode{t: t, dir: dir, natsURL: natsURL, external: natsURL != ""}
	if n.external {
		n.env = append(env, "KEYLEDGER_NATS_URL="+natsURL)
	} else {
		n.env = append(env, "KEYLEDGER_NATS_LISTEN=127.0.0.1:0")
	}
	n.start()
	t.Cleanup(func() {
		if t.Failed() {
			var warn []string
			for _, l := range strings.Split(n.srv.Load().stderr.String(), "\n") {
				if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
					warn = append(warn, l)
				}
			}
			t.Logf("the node's last warnings:\n%s", strings.Join(warn[max(0, len(warn)-40):], "\n"))
			if s := n.srv.Load(); os.Getenv("KEYLEDGER_CHAOS_DUMP") != "" {
				_ = s.cmd.Process.Signal(syscall.SIGQUIT)
				<-s.exited
				_ = os.WriteFile(os.Getenv("KEYLEDGER_CHAOS_DUMP"), []byte(s.stderr.String()), 0o600)
			}
		}
	})
	return n
}

func (n *chaosNode) start() {
	n.t.Helper()
	s := startE2EServer(n.t, n.dir, n.env...)
	var line struct {
		NATS string `json:"nats"`
	}
	logLine(s.stderr.String(), "keyledger serving", &line)
	if !n.external {
		n.natsURL = line.NATS
	}
	n.srv.Store(s)
}

func (n *chaosNode) url() string { return n.srv.Load().url }

// kill sends SIGKILL to keyledger and waits until it and the
// clickhouse-server it managed are gone (the kernel stops that child with
// SIGTERM when keyledger dies).
func (n *chaosNode) kill() {
	n.t.Helper()
	s := n.srv.Load()
	ch := clickhousePID(n.dir)
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		n.t.Fatal(err)
	}
	<-s.exited
	if ch != 0 {
		checkFor(n.t, time.Minute, 20*time.Millisecond, func() error {
			if syscall.Kill(ch, 0) == nil {
				return fmt.Errorf("clickhouse-server %d still running", ch)
			}
			return nil
		})
	}
}

// clickhousePID returns the pid of the clickhouse-server whose
// configuration is under dir, or 0.
func clickhousePID(dir string) int {
	want := "--config-file=" + filepath.Join(dir, "clickhouse", "config.xml")
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && slicesContains(bytes.Split(b, []byte{0}), want) {
			return pid
		}
	}
	return 0
}

func slicesContains(parts [][]byte, s string) bool {
	for _, p := range parts {
		if string(p) == s {
			return true
		}
	}
	return false
}

// call sends one request to the node and returns the status (0 when no
// answer came) and the body.
func (n *chaosNode) call(token, method, path string, body any) (int, []byte) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, n.url()+path, rd)
	if err != nil {
		return 0, nil
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := chaosClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, nil
	}
	return res.StatusCode, b
}

var chaosClient = &http.Client{Timeout: 30 * time.Second}

// chaosLoad is a steady, bounded mixed load of verifications and lifecycle
// commands, and the record of everything the node acknowledged.
type chaosLoad struct {
	node        *chaosNode
	admin, veri string // a key-admin's token and a verifier's

	mu       sync.Mutex
	tokens   []string          // keys' tokens, for verifications
	keyOf    map[string]string // token → key id
	status   map[string]string // key id → status after the last acked command
	acked    map[string]int    // key id → lifecycle commands acknowledged
	verified map[string]bool   // event ids of answered verifications
	failed   int               // requests answered with an error or not at all
	byStatus map[int]int       // failed requests by status (0: no answer)
	sent     int
}

func newChaosLoad(n *chaosNode, admin, verifier string) *chaosLoad {
	return &chaosLoad{node: n, admin: admin, veri: verifier, keyOf: map[string]string{}, status: map[string]string{},
		acked: map[string]int{}, verified: map[string]bool{}, byStatus: map[int]int{}}
}

// run sends requests from two workers, one every few milliseconds each,
// until stop is closed, and at most max requests in all.
func (l *chaosLoad) run(stop <-chan struct{}, max int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			tick := time.NewTicker(4 * time.Millisecond)
			defer tick.Stop()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				l.mu.Lock()
				if l.sent >= max {
					l.mu.Unlock()
					return
				}
				l.sent++
				l.mu.Unlock()
				l.one(rng)
			}
		})
	}
	return &wg
}

func (l *chaosLoad) one(rng *rand.Rand) {
	l.mu.Lock()
	nkeys := len(l.tokens)
	var tok, id string
	if nkeys > 0 {
		tok = l.tokens[rng.IntN(nkeys)]
		id = l.keyOf[tok]
	}
	st := l.status[id]
	l.mu.Unlock()
	switch r := rng.IntN(100); {
	case nkeys < 5 || r < 5:
		status, b := l.node.call(l.admin, "POST", "/v1/keys", map[string]any{"name": "chaos", "permissions": []string{"orders.read"}})
		var k api.CreatedKey
		if status != http.StatusCreated || json.Unmarshal(b, &k) != nil {
			l.fail(status)
			return
		}
		l.created(k)
	case r < 12 && st != "":
		action := "disable"
		if st == string(domain.StatusDisabled) {
			action = "enable"
		}
		status, b := l.node.call(l.admin, "POST", "/v1/keys/"+id+"/"+action, nil)
		var k api.KeyView
		if status != http.StatusOK || json.Unmarshal(b, &k) != nil {
			// A conflict with the other worker (409) is an honest
			// refusal; it is counted apart from the rest.
			l.fail(status)
			return
		}
		l.mu.Lock()
		l.status[id] = string(k.Status)
		l.acked[id]++
		l.mu.Unlock()
	default:
		if rng.IntN(10) == 0 {
			tok = "klk_chaos-not-a-token"
		}
		status, b := l.node.call(l.veri, "POST", "/v1/verify", map[string]string{"token": tok, "permission": "orders.read"})
		var v api.VerifyResponse
		if status != http.StatusOK || json.Unmarshal(b, &v) != nil || v.EventID == "" {
			l.fail(status)
			return
		}
		l.mu.Lock()
		l.verified[v.EventID] = true
		l.mu.Unlock()
	}
}

// created records a key the node acknowledged creating.
func (l *chaosLoad) created(k api.CreatedKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tokens = append(l.tokens, k.Token)
	l.keyOf[k.Token] = k.KeyID
	l.status[k.KeyID] = string(k.Status)
	l.acked[k.KeyID]++
}

func (l *chaosLoad) fail(status int) {
	l.mu.Lock()
	l.failed++
	l.byStatus[status]++
	l.mu.Unlock()
	// A node that is down is not hammered: the load stays steady.
	<-time.After(20 * time.Millisecond)
}

// counts returns acknowledged commands, answered verifications and failed
// requests so far.
func (l *chaosLoad) counts() (commands, verifications, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.acked {
		commands += n
	}
	return commands, len(l.verified), l.failed
}

// chaosResult is one row of the fault suite's table.
type chaosResult struct {
	// PhaseAnswered and PhaseFailed count the requests of the fault's
	// own phase: answered, and refused or not answered at all (keyledger
	// down).
	PhaseAnswered, PhaseFailed int
	FailedBy                   string
	// Redelivered counts stored rows that repeat an event (re-delivered
	// batches, harmless: merged away, never shown to a reviewer).
	Redelivered                int
	Fault                      string
	Commands, Verifications    int
	Failed                     int
	Found, Lost, DupRows       int
	Recover                    time.Duration
	KeysChecked, AuditVerifyOK bool
}

// check waits for the audit log to catch up and proves that every
// acknowledged command and answered verification is in the log exactly
// once, that each key's state equals a replay of its events, and that
// `keyledger audit verify` passes against JetStream and ClickHouse.
func (l *chaosLoad) check(t *testing.T, chAddr, database string, res *chaosResult) {
	t.Helper()
	n := l.node
	began := time.Now()
	defer func() { t.Logf("%s: checked in %s", res.Fault, time.Since(began).Round(time.Millisecond)) }()
	checkFor(t, 2*time.Minute, 50*time.Millisecond, func() error {
		_, err := sinkLag(n)
		return err
	})
	t.Logf("%s: sink caught up after %s", res.Fault, time.Since(began).Round(time.Millisecond))
	ctx := context.Background()
	// A node's managed ClickHouse is reached with its generated
	// credentials.
	chCfg := chlogtest.ConfigFor(chAddr, database)
	chArgs := []string{"--clickhouse", chAddr, "--clickhouse-database", database}
	if pwFile := filepath.Join(n.dir, "clickhouse", chlog.PasswordFile); fileExists(pwFile) {
		pw, err := os.ReadFile(pwFile)
		must(t, err)
		chCfg.Username, chCfg.Password = chlog.LocalUser, strings.TrimSpace(string(pw))
		chArgs = append(chArgs, "--clickhouse-user", chlog.LocalUser, "--clickhouse-password-file", pwFile)
	}
	st, err := chlog.Open(ctx, chCfg, chlogtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Rows are counted twice: as a reviewer sees them (FINAL, which is
	// what the searches' LIMIT 1 BY also gives), where a duplicate is a
	// failure, and as stored, where a batch re-delivered after a crash
	// leaves a second copy until ClickHouse merges the parts.
	var stored, unique uint64
	must(t, st.Conn().QueryRow(ctx, `SELECT count() FROM `+chlog.Table).Scan(&stored))
	must(t, st.Conn().QueryRow(ctx, `SELECT uniqExact(event_id) FROM `+chlog.Table).Scan(&unique))
	res.Redelivered = int(stored - unique)
	rows, err := st.Conn().Query(ctx, `SELECT event_id, key_id, stream, count() FROM `+chlog.Table+` FINAL GROUP BY event_id, key_id, stream`)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]uint64{}
	perKey := map[string]int{}
	for rows.Next() {
		var id, key, stream string
		var c uint64
		if err := rows.Scan(&id, &key, &stream, &c); err != nil {
			t.Fatal(err)
		}
		seen[id] += c
		if stream == domain.StreamKeys {
			perKey[key]++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	res.Commands, res.Verifications, res.Failed = 0, len(l.verified), l.failed
	for id := range l.verified {
		if seen[id] == 0 {
			res.Lost++
		} else {
			res.Found++
		}
	}
	for key, acked := range l.acked {
		res.Commands += acked
		// A command whose answer was lost in a crash may be stored
		// too, so a key may have more events than acknowledged commands,
		// never fewer.
		if perKey[key] < acked {
			res.Lost += acked - perKey[key]
		}
		res.Found += min(perKey[key], acked)
	}
	for _, c := range seen {
		if c > 1 {
			res.DupRows += int(c - 1)
		}
	}
	// Key state equals a replay: what the node answers for each key is
	// what folding its stored events gives.
	for key := range l.acked {
		l.checkReplayLocked(t, key)
	}
	res.KeysChecked = true
	t.Logf("%s: log and replay checked after %s", res.Fault, time.Since(began).Round(time.Millisecond))
	// audit verify recomputes every chain, the Merkle trees and compares
	// every ClickHouse row, live over NATS as the auditor.
	pub := filepath.Join(t.TempDir(), "notary.pub.json")
	status, b := n.call(l.admin, "GET", "/v1/audit/public-key", nil)
	if status != http.StatusOK {
		t.Fatalf("public key: %d %s", status, b)
	}
	must(t, os.WriteFile(pub, b, 0o600))
	cmd := exec.Command(e2eCLIBin, "audit", "verify", "--nats-url", n.natsURL,
		"--nats-nkey", eventstore.SeedFile(filepath.Join(n.dir, "nats", "credentials"), eventstore.IdentityAuditor),
		"--trusted-writers", filepath.Join(n.dir, "trusted-writers.json"), "--public-key", pub)
	cmd.Args = append(cmd.Args, chArgs...)
	cmd.Env = e2eEnv()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "OK") {
		t.Fatalf("audit verify after %s: %v\n%s", res.Fault, err, out)
	}
	res.AuditVerifyOK = true
	if res.Lost != 0 || res.DupRows != 0 {
		t.Errorf("%s: %d acknowledged commands or answered verifications are not in the audit log, %d are there twice", res.Fault, res.Lost, res.DupRows)
	}
}

func (l *chaosLoad) checkReplayLocked(t *testing.T, key string) {
	t.Helper()
	status, b := l.node.call(l.admin, "GET", "/v1/keys/"+key+"/events", nil)
	if status != http.StatusOK {
		t.Fatalf("events of %s: %d %s", key, status, b)
	}
	var evs struct {
		Events []api.EventView `json:"events"`
	}
	must(t, json.Unmarshal(b, &evs))
	want, wantVersion := domain.StatusActive, uint64(0)
	for _, e := range evs.Events {
		switch e.Type {
		case domain.TypeKeyDisabled:
			want = domain.StatusDisabled
		case domain.TypeKeyEnabled, domain.TypeKeyCreated:
			want = domain.StatusActive
		}
		wantVersion = e.Seq
	}
	var k api.KeyView
	status, b = l.node.call(l.admin, "GET", "/v1/keys/"+key, nil)
	if status != http.StatusOK || json.Unmarshal(b, &k) != nil {
		t.Fatalf("key %s: %d %s", key, status, b)
	}
	if k.Status != want || k.Version != wantVersion {
		t.Errorf("key %s: the node says %s at version %d; a replay of its %d events says %s at %d", key, k.Status, k.Version, len(evs.Events), want, wantVersion)
	}
	if s := l.status[key]; s != "" && s != string(k.Status) && l.acked[key] == len(evs.Events) {
		t.Errorf("key %s: last acknowledged status %s, the node says %s", key, s, k.Status)
	}
}

// scrape parses the node's /metrics with the Prometheus text parser.
func scrape(n *chaosNode) (map[string]*dto.MetricFamily, error) {
	res, err := chaosClient.Get(n.url() + "/metrics")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	return p.TextToMetricFamilies(res.Body)
}

// sum adds up every sample of a counter, gauge or histogram count.
func sum(fams map[string]*dto.MetricFamily, name string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	var v float64
	for _, m := range f.Metric {
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Histogram != nil:
			v += float64(m.Histogram.GetSampleCount())
		}
	}
	return v, true
}

// operatorMetrics are the families an operator runs on; each must be
// exposed by a fresh node (the webhook families only with --webhook).
var operatorMetrics = []string{
	"go_goroutines", "go_memstats_heap_alloc_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes",
	"keyledger_usage_publish_failures_total",
	"keyledger_events_appended_total", "keyledger_append_failures_total", "keyledger_forged_events_total",
	"keyledger_audit_sink_events_total", "keyledger_audit_sink_inserts_total", "keyledger_audit_sink_insert_errors_total",
	"keyledger_audit_sink_lag", "keyledger_audit_sink_ack_pending", "keyledger_audit_sink_seq", "keyledger_stream_last_seq",
	"keyledger_clickhouse_up", "keyledger_clickhouse_restarts_total", "keyledger_usage_buffer_depth",
	"keyledger_keystate_applied_seq", "keyledger_keys",
	"keyledger_usage_group_commit_events", "keyledger_usage_group_commit_duration_seconds",
	"keyledger_alerts_raised_total", "keyledger_alerts_suppressed_total", "keyledger_alerts_pending",
	"keyledger_notary_fed_messages_total", "keyledger_notary_read_messages_total",
}

// servedMetrics are the families that appear with the first request they
// count.
var servedMetrics = []string{
	"keyledger_http_requests_total", "keyledger_http_request_duration_seconds", "keyledger_verifications_total",
	"keyledger_verification_duration_seconds", "keyledger_usage_publish_duration_seconds", "keyledger_usage_events_published_total",
}

// checkMoved fails unless each family's sum grew from before to after.
func checkMoved(t *testing.T, before, after map[string]*dto.MetricFamily, names ...string) {
	t.Helper()
	for _, name := range names {
		b, _ := sum(before, name)
		a, ok := sum(after, name)
		if !ok || a <= b {
			t.Errorf("%s did not move: %v then %v", name, b, a)
		}
	}
}

// perStream returns a gauge's value by its stream label.
func perStream(fams map[string]*dto.MetricFamily, name string) map[string]float64 {
	out := map[string]float64{}
	if f, ok := fams[name]; ok {
		for _, m := range f.Metric {
			for _, lp := range m.Label {
				if lp.GetName() == "stream" {
					out[lp.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}

func sinkLag(n *chaosNode) (float64, error) {
	fams, err := scrape(n)
	if err != nil {
		return 0, err
	}
	lag, ok := sum(fams, "keyledger_audit_sink_lag")
	if !ok || len(fams["keyledger_audit_sink_lag"].Metric) < 2 {
		return 0, errors.New("no sink lag yet")
	}
	if lag != 0 {
		var per []string
		for _, m := range fams["keyledger_audit_sink_lag"].Metric {
			per = append(per, fmt.Sprintf("%s=%v", m.Label[0].GetValue(), m.Gauge.GetValue()))
		}
		for _, m := range fams["keyledger_audit_sink_ack_pending"].Metric {
			per = append(per, fmt.Sprintf("ack pending %s=%v", m.Label[0].GetValue(), m.Gauge.GetValue()))
		}
		return lag, fmt.Errorf("audit sink %v events behind (%s)", lag, strings.Join(per, " "))
	}
	return lag, nil
}

// readiness returns the status code and body of /readyz?check=...
func readiness(n *chaosNode, check string) (int, api.Readiness) {
	path := "/readyz"
	if check != "" {
		path += "?check=" + check
	}
	status, b := n.call("", "GET", path, nil)
	var r api.Readiness
	_ = json.Unmarshal(b, &r)
	return status, r
}

// chaosSetup creates the load's principals: the root token is given, a
// verifier is created.
func chaosSetup(t *testing.T, n *chaosNode, root string) *chaosLoad {
	t.Helper()
	status, b := n.call(root, "POST", "/v1/roles", map[string]any{"name": "orders", "permissions": []string{"orders.read"}})
	if status != http.StatusCreated {
		t.Fatalf("role: %d %s", status, b)
	}
	var v, admin api.CreatedPrincipal
	status, b = n.call(root, "POST", "/v1/principals", map[string]any{"name": "gateway", "roles": []string{"verifier"}})
	if status != http.StatusCreated || json.Unmarshal(b, &v) != nil {
		t.Fatalf("verifier: %d %s", status, b)
	}
	status, b = n.call(root, "POST", "/v1/principals", map[string]any{"name": "alice", "roles": []string{"key-admin", "orders"}})
	if status != http.StatusCreated || json.Unmarshal(b, &admin) != nil {
		t.Fatalf("key-admin: %d %s", status, b)
	}
	return newChaosLoad(n, admin.Credential.Token, v.Credential.Token)
}

// underLoad runs the load for a phase, calls fault, then keeps the load on
// for another phase, and returns the time from when fault says the fault
// happened (or ended, for a fault that lasts) until recovered() first
// returned nil.
func underLoad(t *testing.T, l *chaosLoad, res *chaosResult, fault func() time.Time, recovered func() error) time.Duration {
	t.Helper()
	c0, v0, f0 := l.counts()
	l.mu.Lock()
	s0 := maps.Clone(l.byStatus)
	l.mu.Unlock()
	defer func() {
		c1, v1, f1 := l.counts()
		res.PhaseAnswered, res.PhaseFailed = c1-c0+v1-v0, f1-f0
		l.mu.Lock()
		defer l.mu.Unlock()
		var parts []string
		for _, st := range slices.Sorted(maps.Keys(l.byStatus)) {
			if d := l.byStatus[st] - s0[st]; d > 0 {
				name := strconv.Itoa(st)
				if st == 0 {
					name = "no answer"
				}
				parts = append(parts, fmt.Sprintf("%d %s", d, name))
			}
		}
		res.FailedBy = strings.Join(parts, ", ")
	}()
	stop := make(chan struct{})
	wg := l.run(stop, 1_000_000)
	waitFor(chaosPhase())
	start := fault()
	checkFor(t, 2*time.Minute, 10*time.Millisecond, recovered)
	took := time.Since(start)
	t.Logf("recovered %s after the fault", took.Round(time.Millisecond))
	waitFor(chaosPhase())
	close(stop)
	wg.Wait()
	return took
}

// waitFor lets the load run for d: the load is the point, not a condition
// to poll for.
func waitFor(d time.Duration) { <-time.After(d) }

func logChaosTable(t *testing.T, rows []chaosResult) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n| fault | phase: answered / failed (by status) | commands acked (all so far) | verifications answered (all so far) | found in log | lost | duplicated rows | re-delivered rows | time to recover | replay = state | audit verify |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d / %d (%s) | %d | %d | %d | %d | %d | %d | %s | %v | %v |\n", r.Fault, r.PhaseAnswered, r.PhaseFailed, r.FailedBy, r.Commands, r.Verifications, r.Found, r.Lost, r.DupRows,
			r.Redelivered, r.Recover.Round(time.Millisecond), r.KeysChecked, r.AuditVerifyOK)
	}
	t.Log(b.String())
}

// TestChaosManagedClickHouse runs one node with its managed ClickHouse
// under load and kills, one at a time, keyledger itself and its
// clickhouse-server with SIGKILL.
func TestChaosManagedClickHouse(t *testing.T) {
	if testing.Short() {
		t.Skip("fault suite: builds and runs the binary")
	}
	dir := t.TempDir()
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), randomSecret(t))
	n := startChaosNode(t, dir, "KEYLEDGER_ROOT_TOKEN="+root)
	fresh, err := scrape(n)
	must(t, err)
	for _, name := range operatorMetrics {
		if _, ok := fresh[name]; !ok {
			t.Errorf("a fresh node does not expose %s", name)
		}
	}
	if up, _ := sum(fresh, "keyledger_clickhouse_up"); up != 1 {
		t.Errorf("keyledger_clickhouse_up = %v on a fresh node", up)
	}
	l := chaosSetup(t, n, root)
	chAddr := func() string {
		b, err := os.ReadFile(filepath.Join(dir, "clickhouse", "ports"))
		must(t, err)
		return "127.0.0.1:" + strings.Fields(string(b))[0]
	}
	var table []chaosResult

	// kill -9 of keyledger: it is started again on its data dir.
	r := chaosResult{Fault: "kill -9 keyledger"}
	r.Recover = underLoad(t, l, &r, func() time.Time {
		at := time.Now()
		n.kill()
		n.start()
		return at
	}, func() error {
		if s, _ := readiness(n, ""); s != http.StatusOK {
			return fmt.Errorf("readyz %d", s)
		}
		return nil
	})
	l.check(t, chAddr(), chlog.DefaultDatabase, &r)
	table = append(table, r)

	// kill -9 of the managed clickhouse-server, held down until the node
	// has shown the outage: readyz reports the audit log, /v1/logs
	// answers 503, keyledger_clickhouse_up is 0 and an insert of the
	// sink failed (verifications go on meanwhile). The supervisor restarts
	// the server only where the audit log's connections dial, the ports
	// saved in <dir>/clickhouse/ports; while that file names no port the
	// restarts fail, so the outage lasts as long as the test needs, not as
	// long as a restart happens to take. Then the file is put back and the
	// supervisor brings the server back.
	r = chaosResult{Fault: "kill -9 clickhouse-server"}
	before, err := scrape(n)
	must(t, err)
	r.Recover = underLoad(t, l, &r, func() time.Time {
		portsFile := filepath.Join(dir, "clickhouse", "ports")
		saved, err := os.ReadFile(portsFile)
		must(t, err)
		pid := clickhousePID(dir)
		if pid == 0 {
			t.Fatal("no managed clickhouse-server")
		}
		must(t, os.WriteFile(portsFile, []byte("0 0\n"), 0o640))
		must(t, syscall.Kill(pid, syscall.SIGKILL))
		errs0, _ := sum(before, "keyledger_audit_sink_insert_errors_total")
		var sawDegraded, saw503, sawDown, sawInsertError bool
		checkFor(t, 2*time.Minute, 20*time.Millisecond, func() error {
			if s, rd := readiness(n, ""); s == http.StatusOK && rd.Status == "degraded" && rd.Checks["audit_log"] != "ok" {
				sawDegraded = true
			}
			if fams, err := scrape(n); err == nil {
				if up, ok := sum(fams, "keyledger_clickhouse_up"); ok && up == 0 {
					sawDown = true
				}
				if errs, _ := sum(fams, "keyledger_audit_sink_insert_errors_total"); errs > errs0 {
					sawInsertError = true
				}
			}
			if s, b := n.call(root, "GET", "/v1/logs?limit=1", nil); s == http.StatusServiceUnavailable {
				var p api.Problem
				if json.Unmarshal(b, &p) == nil && p.Code == "audit_log_unavailable" {
					saw503 = true
				}
			}
			if !sawDegraded || !saw503 || !sawDown || !sawInsertError {
				return fmt.Errorf("while clickhouse is down: seen degraded %v, 503 %v, clickhouse_up 0 %v, a failed insert %v", sawDegraded, saw503, sawDown, sawInsertError)
			}
			return nil
		})
		if s, _ := readiness(n, "audit_log"); s == http.StatusOK {
			t.Errorf("readyz?check=audit_log answers 200 while clickhouse is held down")
		}
		must(t, os.WriteFile(portsFile, saved, 0o640))
		return time.Now()
	}, func() error {
		if s, rd := readiness(n, "audit_log"); s != http.StatusOK {
			return fmt.Errorf("audit_log check %d %v", s, rd.Checks)
		}
		return nil
	})
	l.check(t, chAddr(), chlog.DefaultDatabase, &r)
	if s, b := n.call(root, "GET", "/v1/logs?limit=1", nil); s != http.StatusOK {
		t.Errorf("/v1/logs after recovery: %d %s", s, b)
	}
	// Every family of what happened moved: the load's requests, the
	// ClickHouse outage, the restart and the sink's retries.
	after, err := scrape(n)
	must(t, err)
	for _, name := range append(operatorMetrics, servedMetrics...) {
		if _, ok := after[name]; !ok {
			t.Errorf("a node under load does not expose %s", name)
		}
	}
	checkMoved(t, before, after, "keyledger_http_requests_total", "keyledger_http_request_duration_seconds",
		"keyledger_verifications_total", "keyledger_verification_duration_seconds", "keyledger_usage_publish_duration_seconds",
		"keyledger_usage_events_published_total", "keyledger_events_appended_total",
		"keyledger_usage_group_commit_events", "keyledger_usage_group_commit_duration_seconds", "keyledger_audit_sink_events_total", "keyledger_audit_sink_inserts_total",
		"keyledger_audit_sink_insert_errors_total", "keyledger_clickhouse_restarts_total", "keyledger_keystate_applied_seq",
		"keyledger_notary_fed_messages_total", "process_cpu_seconds_total")
	if up, _ := sum(after, "keyledger_clickhouse_up"); up != 1 {
		t.Errorf("keyledger_clickhouse_up = %v after the restart", up)
	}
	table = append(table, r)
	logChaosTable(t, table)
}

// TestChaosSlowClickHouse runs a node whose ClickHouse is behind a TCP
// proxy that delays every chunk for a while.
func TestChaosSlowClickHouse(t *testing.T) {
	if testing.Short() {
		t.Skip("fault suite: builds and runs the binary")
	}
	backend := chlogtest.MustConnect(t)
	proxy := startDelayProxy(t, backend)
	database := "chaos_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	dir := t.TempDir()
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), randomSecret(t))
	n := startChaosNode(t, dir, "KEYLEDGER_ROOT_TOKEN="+root, "KEYLEDGER_CLICKHOUSE="+proxy.addr, "KEYLEDGER_CLICKHOUSE_DATABASE="+database)
	l := chaosSetup(t, n, root)
	r := chaosResult{Fault: "slow clickhouse (250ms per chunk)"}
	// Recovered is when the audit log holds everything that was stored
	// in JetStream by the time ClickHouse was fast again.
	var target map[string]float64
	r.Recover = underLoad(t, l, &r, func() time.Time {
		proxy.delay.Store(int64(250 * time.Millisecond))
		waitFor(chaosPhase())
		proxy.delay.Store(0)
		at := time.Now()
		fams, err := scrape(n)
		must(t, err)
		target = perStream(fams, "keyledger_stream_last_seq")
		return at
	}, func() error {
		fams, err := scrape(n)
		if err != nil {
			return err
		}
		last, lag := perStream(fams, "keyledger_stream_last_seq"), perStream(fams, "keyledger_audit_sink_lag")
		for stream, want := range target {
			if floor := last[stream] - lag[stream]; floor < want {
				return fmt.Errorf("%s: the audit log holds up to %v, want %v", stream, floor, want)
			}
		}
		return nil
	})
	l.check(t, backend, database, &r)
	logChaosTable(t, []chaosResult{r})
}

// delayProxy forwards TCP connections to a backend, sleeping delay before
// every chunk it forwards in either direction.
type delayProxy struct {
	addr  string
	delay atomic.Int64
}

func startDelayProxy(t *testing.T, backend string) *delayProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	p := &delayProxy{addr: ln.Addr().String()}
	var conns sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		conns.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, b)
			mu.Unlock()
			pipe := func(dst, src net.Conn) {
				defer dst.Close()
				defer src.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if n > 0 {
						if d := time.Duration(p.delay.Load()); d > 0 {
							<-time.After(d)
						}
						if _, werr := dst.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}
			conns.Go(func() { pipe(b, c) })
			conns.Go(func() { pipe(c, b) })
		}
	}()
	return p
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
