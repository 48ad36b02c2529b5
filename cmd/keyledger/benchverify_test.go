package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// BenchmarkVerifyServe is `make bench-verify`: the real binary, with
// everything on (its managed ClickHouse and audit sink, the alert engine,
// the notary), against a bare net/http handler that decodes the same JSON
// request and encodes a response of the same shape, each in a process of
// its own, driven by one load generator with the same connection count in
// the same run. It reports requests/s, p50 and p99 latency, the CPU each
// verification costs summed over keyledger and ClickHouse, and the ratio
// of each leg to the bare handler.
//
//	go test -run '^$' -bench BenchmarkVerifyServe -benchtime 20000x ./cmd/keyledger/
func BenchmarkVerifyServe(b *testing.B) {
	outer := b
	conc := 32
	if v, err := strconv.Atoi(os.Getenv("KEYLEDGER_BENCH_CONNS")); err == nil && v > 0 {
		conc = v
	}
	var bare float64
	// The benchmark framework calls each leg more than once (b.N = 1
	// first); each leg's processes start once and serve every call.
	var bareAddr string
	var barePids []int
	b.Run("bare", func(b *testing.B) {
		if bareAddr == "" {
			bareAddr, barePids = startBare(outer)
		}
		addr, pids := bareAddr, barePids
		body, _ := json.Marshal(map[string]string{"token": domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{1}), "permission": "api.verify", "ip": "10.0.0.1"})
		bare = verifyLoad(b, "http://"+addr+"/v1/verify", "x", body, conc, pids, nil).rps
	})
	servers := map[string]*e2eServer{}
	verifiers := map[string]string{}
	type benchLeg struct {
		name string
		args []string
		bin  string
	}
	legs := []benchLeg{{"durable", nil, e2eServerBin}, {"async", []string{"--async-usage"}, e2eServerBin}}
	// KEYLEDGER_BENCH_BASELINE=path/to/keyledger adds the same two legs
	// run by another build (the code before a change), in the same run.
	if base := os.Getenv("KEYLEDGER_BENCH_BASELINE"); base != "" {
		baseline := []benchLeg{{"durable-baseline", nil, base}, {"async-baseline", []string{"--async-usage"}, base}}
		// A leg's place in the run changes its figures by up to about
		// 15% (later legs measured cheaper, build against itself), so
		// KEYLEDGER_BENCH_BASELINE_FIRST=1 runs the baseline's legs
		// first: alternate it between runs.
		if os.Getenv("KEYLEDGER_BENCH_BASELINE_FIRST") != "" {
			legs = append(baseline, legs...)
		} else {
			legs = append(legs, baseline...)
		}
	}
	for i, leg := range legs {
		// Every leg's server keeps running until the end: each listens
		// for pprof on a port of its own.
		pprofAddr := fmt.Sprintf("127.0.0.1:%d", 6061+i)
		b.Run(leg.name, func(b *testing.B) {
			// KEYLEDGER_BENCH_ARGS adds serve flags to every keyledger leg.
			args := append(slices.Clone(leg.args), strings.Fields(os.Getenv("KEYLEDGER_BENCH_ARGS"))...)
			// KEYLEDGER_BENCH_PROFILE=dir writes a 5 s CPU profile of each
			// leg, taken while the load runs, to dir/<leg>.pprof.
			prof := os.Getenv("KEYLEDGER_BENCH_PROFILE")
			if prof != "" {
				args = append(slices.Clone(args), "--pprof", pprofAddr)
			}
			srv := servers[leg.name]
			if srv == nil {
				var root string
				// KEYLEDGER_BENCH_ENV adds environment variables (say
				// GOMAXPROCS=3) to the new build's legs, not the baseline's.
				var env []string
				if leg.bin == e2eServerBin {
					env = strings.Fields(os.Getenv("KEYLEDGER_BENCH_ENV"))
				}
				srv, root = startBenchServer(outer, leg.bin, env, args...)
				servers[leg.name], verifiers[leg.name] = srv, benchPrincipal(outer, srv.url, root)
			}
			pids := processTree(srv.cmd.Process.Pid)
			var idle idleRate
			if b.N > 1 {
				idle = measureIdle(pids)
			}
			if prof != "" && b.N > 1 {
				done := make(chan struct{})
				defer func() { <-done }()
				go func() {
					defer close(done)
					time.Sleep(time.Second)
					res, err := http.Get("http://" + pprofAddr + "/debug/pprof/profile?seconds=5")
					if err != nil {
						b.Logf("profile: %v", err)
						return
					}
					defer res.Body.Close()
					f, err := os.Create(filepath.Join(prof, leg.name+".pprof"))
					if err == nil {
						_, _ = io.Copy(f, res.Body)
						f.Close()
					}
				}()
			}
			verifier := verifiers[leg.name]
			body, _ := json.Marshal(map[string]string{"token": verifier, "permission": "api.verify", "ip": "10.0.0.1"})
			before := scrapeCommits(b, srv.url)
			r := verifyLoad(b, srv.url+"/v1/verify", verifier, body, conc, pids, &idle)
			if bare > 0 {
				b.ReportMetric(r.rps/bare, "x-bare")
			}
			// The durable legs' group commits: events per pack and how
			// long one took to store (its fsync).
			if after := scrapeCommits(b, srv.url); after.n > before.n {
				n := after.n - before.n
				b.ReportMetric((after.events-before.events)/n, "events/commit")
				b.ReportMetric((after.seconds-before.seconds)/n*1000, "ms/commit")
				// Commits slower than 10 ms hold up every request of
				// their group past the p99 goal.
				b.ReportMetric((after.slow-before.slow)/n*100, "%commits>10ms")
			}
			// The audit log trails by up to a second, so this counts the
			// inserts that finished within the leg.
			if after := scrapeCommits(b, srv.url); after.inserts > before.inserts {
				b.ReportMetric((after.rows-before.rows)/(after.inserts-before.inserts), "rows/insert")
			}
		})
	}
}

// TestBareVerifyHandler is not a test: run by BenchmarkVerifyServe with
// KEYLEDGER_BENCH_BARE set, it is the bare handler's process.
func TestBareVerifyHandler(t *testing.T) {
	if os.Getenv("KEYLEDGER_BENCH_BARE") == "" {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("bare listening %s\n", ln.Addr())
	type request struct {
		Token      string `json:"token"`
		Permission string `json:"permission"`
		IP         string `json:"ip"`
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req request
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"valid": true, "code": "VALID", "key_id": "01a21a52-3c6c-751b-9f8c-81c09ab34616", "owner": "01a21a52-3c6c-751b-9f8c-81c09ab34617",
			"permissions": []string{req.Permission}, "expires_at": time.Now(), "event_id": uuid.New().String(),
		})
	})
	_ = http.Serve(ln, h)
}

func startBare(b testing.TB) (string, []int) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestBareVerifyHandler$")
	cmd.Env = append(os.Environ(), "KEYLEDGER_BENCH_BARE=1")
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var addr string
	checkFor(b, 20*time.Second, 10*time.Millisecond, func() error {
		for _, line := range strings.Split(out.String(), "\n") {
			if a, ok := strings.CutPrefix(line, "bare listening "); ok {
				addr = a
				return nil
			}
		}
		return errors.New("bare handler not listening yet")
	})
	return addr, []int{cmd.Process.Pid}
}

// startBenchServer starts the built binary on a fresh data dir with a
// fixed root token.
func startBenchServer(b testing.TB, bin string, env []string, args ...string) (*e2eServer, string) {
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{4, 2})
	dir := b.TempDir()
	s := spawnServe(b, bin, dir, args, append([]string{"KEYLEDGER_ROOT_TOKEN=" + root}, env...), 30*time.Second)
	checkFor(b, 90*time.Second, 20*time.Millisecond, func() error {
		select {
		case <-s.exited:
			b.Fatalf("keyledger serve exited (%v):\n%s", s.waitErr, s.stderr.String())
		default:
		}
		addr := servingAddr(s.stderr.String())
		if addr == "" {
			return errors.New(`no "keyledger serving" log line yet`)
		}
		res, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("readyz %d", res.StatusCode)
		}
		s.url = "http://" + addr
		return nil
	})
	return s, root
}

// benchPrincipal creates a verifying service and returns its token.
func benchPrincipal(b testing.TB, url, root string) string {
	body, _ := json.Marshal(map[string]any{"name": "bench verifier", "roles": []string{domain.RoleVerifier}})
	req, _ := http.NewRequest("POST", url+"/v1/principals", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+root)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer res.Body.Close()
	var out struct {
		Credential struct {
			Token string `json:"token"`
		} `json:"credential"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil || out.Credential.Token == "" {
		b.Fatalf("create verifier: %d %v", res.StatusCode, err)
	}
	return out.Credential.Token
}

type loadResult struct{ rps float64 }

// loadClient is a load generator of conc keep-alive connections.
type loadClient struct {
	client *http.Client
	url    string
	token  string
	body   []byte
	conc   int
}

func newLoadClient(url, token string, body []byte, conc int) *loadClient {
	tr := &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}
	return &loadClient{client: &http.Client{Transport: tr, Timeout: 30 * time.Second}, url: url, token: token, body: body, conc: conc}
}

func (c *loadClient) close() { c.client.Transport.(*http.Transport).CloseIdleConnections() }

func (c *loadClient) send() (time.Duration, error) {
	req, _ := http.NewRequest("POST", c.url, bytes.NewReader(c.body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	t0 := time.Now()
	res, err := c.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d", res.StatusCode)
	}
	return time.Since(t0), nil
}

// warm opens and uses every connection.
func (c *loadClient) warm() error {
	for range c.conc * 4 {
		if _, err := c.send(); err != nil {
			return err
		}
	}
	return nil
}

// run sends n requests from every connection at once and returns each
// one's latency and the time they all took.
func (c *loadClient) run(n int) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, n)
	var next, failed atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range c.conc {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				d, err := c.send()
				if err != nil {
					failed.Add(1)
					continue
				}
				lat[i] = d
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if f := failed.Load(); f > 0 {
		return nil, 0, fmt.Errorf("%d of %d requests failed", f, n)
	}
	return lat, elapsed, nil
}

// benchSettle is KEYLEDGER_BENCH_SETTLE (1.5s): how long a keyledger
// leg's CPU is read after its load stops, more than --audit-batch-wait, so
// that the audit sink's last insert and ClickHouse's work on it land in it.
func benchSettle() time.Duration {
	if v, err := time.ParseDuration(os.Getenv("KEYLEDGER_BENCH_SETTLE")); err == nil && v >= 0 {
		return v
	}
	return 1500 * time.Millisecond
}

// idleRate is the clock ticks a second a server's processes (tree) and its
// node (own) use without load: the notary's timer, ClickHouse's own
// background work. A pause after the load is charged at that rate less.
type idleRate struct{ tree, own float64 }

// measureIdle waits for what earlier requests left to settle, then reads
// four seconds without load.
func measureIdle(pids []int) idleRate {
	time.Sleep(benchSettle())
	t0, o0 := cpuTicks(pids), cpuTicks(pids[:1])
	time.Sleep(4 * time.Second)
	return idleRate{float64(cpuTicks(pids)-t0) / 4, float64(cpuTicks(pids[:1])-o0) / 4}
}

// verifyLoad sends b.N requests from conc keep-alive connections and
// reports the figures; pids are the processes whose CPU the requests cost.
// With idle (a keyledger leg) the CPU is read a settle after the load
// stopped, less idle's share of that pause: ClickHouse inserts and merges
// the leg's last events after it.
func verifyLoad(b *testing.B, url, token string, body []byte, conc int, pids []int, idle *idleRate) loadResult {
	c := newLoadClient(url, token, body, conc)
	defer c.close()
	if err := c.warm(); err != nil {
		b.Fatal(err)
	}
	self := []int{os.Getpid()}
	cpu0, own0, gen0 := cpuTicks(pids), cpuTicks(pids[:1]), cpuTicks(self)
	b.ResetTimer()
	lat, elapsed, err := c.run(b.N)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	gen := cpuTicks(self) - gen0
	var pause float64
	if idle != nil && b.N > 1 {
		settle := benchSettle()
		time.Sleep(settle)
		pause = settle.Seconds()
	} else {
		idle = &idleRate{}
	}
	cpu := float64(cpuTicks(pids)-cpu0) - idle.tree*pause
	own := float64(cpuTicks(pids[:1])-own0) - idle.own*pause
	rps := reportLoad(b, "", lat, elapsed, cpu, own, float64(gen), len(pids) > 1)
	return loadResult{rps: rps}
}

// reportLoad reports the figures of the requests whose latencies are lat
// and that took elapsed in all, under metric names that start with prefix:
// req/s, p50, p99 and the clock ticks (1/100 s on Linux) that the servers
// (cpu), the serving node alone (own, when node) and the load generator
// (gen) used for them. It returns the req/s.
func reportLoad(b *testing.B, prefix string, lat []time.Duration, elapsed time.Duration, cpu, own, gen float64, node bool) float64 {
	n := float64(len(lat))
	slices.Sort(lat)
	rps := n / elapsed.Seconds()
	b.ReportMetric(rps, prefix+"req/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, prefix+"p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, prefix+"p99-ms")
	b.ReportMetric(cpu*10_000/n, prefix+"cpu-µs/op")
	if node {
		// The serving process alone; the rest is its ClickHouse.
		b.ReportMetric(own*10_000/n, prefix+"node-cpu-µs/op")
	}
	// The load generator shares the machine: what it costs is CPU the
	// servers could not have.
	b.ReportMetric(gen*10_000/n, prefix+"loadgen-cpu-µs/op")
	return rps
}

// processTree returns pid and its descendants (keyledger's managed
// clickhouse-server).
func processTree(pid int) []int {
	out := []int{pid}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _ := statField(child, 4); ppid == pid {
			out = append(out, processTree(child)...)
		}
	}
	return out
}

// cpuTicks sums user and system time of pids, in clock ticks.
func cpuTicks(pids []int) int {
	n := 0
	for _, p := range pids {
		u, _ := statField(p, 14)
		s, _ := statField(p, 15)
		n += u + s
	}
	return n
}

// statField returns field i (1-based, as in proc(5)) of /proc/pid/stat.
func statField(pid, i int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; it ends at the last ')'.
	s := string(b)
	j := strings.LastIndexByte(s, ')')
	if j < 0 {
		return 0, errors.New("bad stat")
	}
	fields := strings.Fields(s[j+1:])
	k := i - 3
	if k < 0 || k >= len(fields) {
		return 0, errors.New("no such field")
	}
	return strconv.Atoi(fields[k])
}

// commitStats are the sums of the node's group-commit histograms.
// commitStats are the usage group commits so far, and the audit sink's
// inserts of USAGE rows.
type commitStats struct{ n, events, seconds, slow, inserts, rows float64 }

func scrapeCommits(b testing.TB, url string) commitStats {
	res, err := http.Get(url + "/metrics")
	if err != nil {
		b.Logf("metrics: %v", err)
		return commitStats{}
	}
	defer res.Body.Close()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		b.Logf("metrics: %v", err)
		return commitStats{}
	}
	var c commitStats
	if f := fams["keyledger_usage_group_commit_events"]; f != nil && len(f.Metric) > 0 {
		h := f.Metric[0].GetHistogram()
		c.n, c.events = float64(h.GetSampleCount()), h.GetSampleSum()
	}
	if f := fams["keyledger_usage_group_commit_duration_seconds"]; f != nil && len(f.Metric) > 0 {
		h := f.Metric[0].GetHistogram()
		c.seconds = h.GetSampleSum()
		c.slow = float64(h.GetSampleCount())
		for _, bk := range h.GetBucket() {
			if bk.GetUpperBound() == 0.01 {
				c.slow -= float64(bk.GetCumulativeCount())
			}
		}
	}
	usage := func(name string) float64 {
		if f := fams[name]; f != nil {
			for _, m := range f.Metric {
				for _, l := range m.Label {
					if l.GetName() == "stream" && l.GetValue() == domain.StreamUsage {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return 0
	}
	c.inserts, c.rows = usage("keyledger_audit_sink_inserts_total"), usage("keyledger_audit_sink_events_total")
	return c
}
