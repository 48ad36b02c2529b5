package main

import (
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// BenchmarkVerifyAB is `make bench-verify-ab`: the bare handler, this
// build and, with KEYLEDGER_BENCH_BASELINE, another keyledger binary, all
// serving at once with everything on, the load going to each in turn in
// slices of KEYLEDGER_BENCH_SLICE requests (5000), each round in another
// order, so that none is favoured by its place in the run. This machine's
// speed drifts by tens of percent within a minute, so legs run one after
// the other (BenchmarkVerifyServe) compare two moments as much as two
// servers; slices a few seconds long share the drift out evenly.
//
// After a keyledger slice the load stops for KEYLEDGER_BENCH_SETTLE (1.5s),
// so the audit sink's insert of the slice's events lands, and is counted,
// in the slice's own server; what the server uses idle (measured for four
// seconds before the rounds, reported as idle-cpu-%) is not counted for
// those pauses. Each server gets b.N requests in all. It reports
// each one's req/s, CPU per verification (keyledger with its ClickHouse,
// and the node alone), the load generator's CPU per request and p50/p99
// over all its slices, each keyledger's ratio to bare, and with a baseline
// the ratios new ÷ baseline and the lowest and highest req/s ratio of one
// round.
//
//	KEYLEDGER_BENCH_BASELINE=path/to/keyledger go test -run '^$' -bench BenchmarkVerifyAB -benchtime 60000x ./cmd/keyledger/
func BenchmarkVerifyAB(b *testing.B) {
	base := os.Getenv("KEYLEDGER_BENCH_BASELINE")
	conc := 32
	if v, err := strconv.Atoi(os.Getenv("KEYLEDGER_BENCH_CONNS")); err == nil && v > 0 {
		conc = v
	}
	slice := 5000
	if v, err := strconv.Atoi(os.Getenv("KEYLEDGER_BENCH_SLICE")); err == nil && v > 0 {
		slice = v
	}
	settle := benchSettle()
	outer := b
	bareAddr, barePids := startBare(outer)
	bareBody, _ := json.Marshal(map[string]string{"token": domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{1}), "permission": "api.verify", "ip": "10.0.0.1"})
	bare := &abBuild{name: "bare", settle: 0, load: newLoadClient("http://"+bareAddr+"/v1/verify", "x", bareBody, conc), pids: barePids}
	b.Cleanup(bare.load.close)
	if err := bare.load.warm(); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []struct {
		name string
		args []string
	}{{"durable", nil}, {"async", []string{"--async-usage"}}} {
		var newB, baseB *abBuild
		b.Run(mode.name, func(b *testing.B) {
			if newB == nil {
				// KEYLEDGER_BENCH_ENV adds environment variables to this
				// build's server (and so to its ClickHouse) only.
				newB = startABBuild(outer, "new", e2eServerBin, strings.Fields(os.Getenv("KEYLEDGER_BENCH_ENV")), mode.args, conc, settle)
				if base != "" {
					// KEYLEDGER_BENCH_BASELINE_ARGS adds serve flags to the
					// baseline's server only: with this build as its own
					// baseline, it compares a flag's settings.
					args := append(slices.Clone(mode.args), strings.Fields(os.Getenv("KEYLEDGER_BENCH_BASELINE_ARGS"))...)
					baseB = startABBuild(outer, "base", base, nil, args, conc, settle)
				}
			}
			targets := []*abBuild{bare, newB}
			if baseB != nil {
				targets = append(targets, baseB)
			}
			for _, t := range targets {
				t.reset()
			}
			var rounds []float64
			b.ResetTimer()
			for done, round := 0, 0; done < b.N; round++ {
				n := min(slice, b.N-done)
				for i := range targets {
					targets[(round+i)%len(targets)].slice(b, n)
				}
				if baseB != nil {
					rounds = append(rounds, newB.lastRPS/baseB.lastRPS)
				}
				done += n
			}
			b.StopTimer()
			for _, t := range targets {
				t.report(b)
				if t != bare {
					b.ReportMetric(t.rps()/bare.rps(), t.name+"-x-bare")
				}
			}
			if baseB != nil {
				b.ReportMetric(newB.rps()/baseB.rps(), "req/s-ratio")
				b.ReportMetric(newB.cpuPerOp(false)/baseB.cpuPerOp(false), "cpu-ratio")
				b.ReportMetric(newB.cpuPerOp(true)/baseB.cpuPerOp(true), "node-cpu-ratio")
				b.ReportMetric(slices.Min(rounds), "min-round-ratio")
				b.ReportMetric(slices.Max(rounds), "max-round-ratio")
			}
		})
	}
}

// abBuild is one build's server under BenchmarkVerifyAB and what its
// slices measured.
type abBuild struct {
	name    string
	settle  time.Duration // the pause after each slice
	idle    idleRate      // a slice's pause is charged at that rate less
	load    *loadClient
	pids    []int
	lat     []time.Duration
	elapsed time.Duration
	ticks   float64 // CPU of the node and its ClickHouse
	own     float64 // of the node alone
	gen     int     // of the load generator
	lastRPS float64
}

func startABBuild(b *testing.B, name, bin string, env, args []string, conc int, settle time.Duration) *abBuild {
	srv, root := startBenchServer(b, bin, env, args...)
	token := benchPrincipal(b, srv.url, root)
	body, _ := json.Marshal(map[string]string{"token": token, "permission": "api.verify", "ip": "10.0.0.1"})
	c := newLoadClient(srv.url+"/v1/verify", token, body, conc)
	b.Cleanup(c.close)
	if err := c.warm(); err != nil {
		b.Fatal(err)
	}
	a := &abBuild{name: name, settle: settle, load: c, pids: processTree(srv.cmd.Process.Pid)}
	a.idle = measureIdle(a.pids)
	return a
}

func (a *abBuild) reset() { a.lat, a.elapsed, a.ticks, a.own, a.gen = nil, 0, 0, 0, 0 }

// slice sends n requests; for a keyledger server it then lets the audit
// sink's insert of them land before it reads the CPU they cost.
func (a *abBuild) slice(b *testing.B, n int) {
	self := []int{os.Getpid()}
	cpu0, own0, gen0 := cpuTicks(a.pids), cpuTicks(a.pids[:1]), cpuTicks(self)
	lat, elapsed, err := a.load.run(n)
	if err != nil {
		b.Fatal(err)
	}
	a.gen += cpuTicks(self) - gen0
	time.Sleep(a.settle)
	a.ticks += float64(cpuTicks(a.pids)-cpu0) - a.idle.tree*a.settle.Seconds()
	a.own += float64(cpuTicks(a.pids[:1])-own0) - a.idle.own*a.settle.Seconds()
	a.lat = append(a.lat, lat...)
	a.elapsed += elapsed
	a.lastRPS = float64(n) / elapsed.Seconds()
}

func (a *abBuild) rps() float64 { return float64(len(a.lat)) / a.elapsed.Seconds() }

// cpuPerOp is µs of CPU per verification; clock ticks are 1/100 s.
func (a *abBuild) cpuPerOp(nodeOnly bool) float64 {
	t := a.ticks
	if nodeOnly {
		t = a.own
	}
	return t * 10_000 / float64(len(a.lat))
}

func (a *abBuild) report(b *testing.B) {
	who := a.name + "-"
	node := len(a.pids) > 1
	reportLoad(b, who, a.lat, a.elapsed, a.ticks, a.own, float64(a.gen), node)
	if node {
		// Resident memory at the end, and the peak, of its ClickHouse.
		b.ReportMetric(procStatusMB(a.pids[1], "VmRSS"), who+"clickhouse-rss-MB")
		b.ReportMetric(procStatusMB(a.pids[1], "VmHWM"), who+"clickhouse-hwm-MB")
	}
	if a.settle > 0 {
		// A tick a second is 1% of a core.
		b.ReportMetric(a.idle.tree, who+"idle-cpu-%")
	}
}
