package main

import (
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkVerifyAB is `make bench-verify-ab`: this build against the
// keyledger binary KEYLEDGER_BENCH_BASELINE, both serving at once with
// everything on, the load alternating between them in slices of
// KEYLEDGER_BENCH_SLICE requests (5000), in the order AB BA AB ... so
// that neither build is favoured by its place in the run. This machine's
// speed drifts by tens of percent within a minute, so legs run one after
// the other (BenchmarkVerifyServe) compare two moments as much as two
// builds; slices a few seconds long share the drift out evenly.
//
// After each slice the load stops for a second and a half, so the audit
// sink's insert of the slice's events lands, and is counted, in the
// slice's own build. Each build gets b.N requests in all. It reports each
// build's req/s, CPU per verification (node and ClickHouse, and the node
// alone) and p50/p99 over all its slices, the ratios new ÷ baseline, and
// the lowest and highest req/s ratio of one pair of slices.
//
//	KEYLEDGER_BENCH_BASELINE=path/to/keyledger go test -run '^$' -bench BenchmarkVerifyAB -benchtime 60000x ./cmd/keyledger/
func BenchmarkVerifyAB(b *testing.B) {
	base := os.Getenv("KEYLEDGER_BENCH_BASELINE")
	if base == "" {
		b.Fatal("KEYLEDGER_BENCH_BASELINE names the keyledger binary to compare with")
	}
	conc := 32
	if v, err := strconv.Atoi(os.Getenv("KEYLEDGER_BENCH_CONNS")); err == nil && v > 0 {
		conc = v
	}
	slice := 5000
	if v, err := strconv.Atoi(os.Getenv("KEYLEDGER_BENCH_SLICE")); err == nil && v > 0 {
		slice = v
	}
	outer := b
	for _, mode := range []struct {
		name string
		args []string
	}{{"durable", nil}, {"async", []string{"--async-usage"}}} {
		var builds [2]*abBuild
		b.Run(mode.name, func(b *testing.B) {
			// KEYLEDGER_BENCH_BASELINE_ARGS adds serve flags to the
			// baseline's server only: with this build as its own
			// baseline, it compares a flag's settings.
			baseArgs := append(slices.Clone(mode.args), strings.Fields(os.Getenv("KEYLEDGER_BENCH_BASELINE_ARGS"))...)
			for i, leg := range []struct {
				bin  string
				args []string
			}{{e2eServerBin, mode.args}, {base, baseArgs}} {
				if builds[i] == nil {
					builds[i] = startABBuild(outer, leg.bin, leg.args, conc)
				}
			}
			newB, baseB := builds[0], builds[1]
			newB.reset()
			baseB.reset()
			var pairs []float64
			b.ResetTimer()
			for done, round := 0, 0; done < b.N; round++ {
				n := min(slice, b.N-done)
				first, second := newB, baseB
				if round%2 == 1 {
					first, second = baseB, newB
				}
				first.slice(b, n)
				second.slice(b, n)
				pairs = append(pairs, newB.lastRPS/baseB.lastRPS)
				done += n
			}
			b.StopTimer()
			newB.report(b, "new")
			baseB.report(b, "base")
			b.ReportMetric(newB.rps()/baseB.rps(), "req/s-ratio")
			b.ReportMetric(newB.cpuPerOp(false)/baseB.cpuPerOp(false), "cpu-ratio")
			b.ReportMetric(newB.cpuPerOp(true)/baseB.cpuPerOp(true), "node-cpu-ratio")
			b.ReportMetric(slices.Min(pairs), "min-pair-ratio")
			b.ReportMetric(slices.Max(pairs), "max-pair-ratio")
		})
	}
}

// abBuild is one build's server under BenchmarkVerifyAB and what its
// slices measured.
type abBuild struct {
	load    *loadClient
	pids    []int
	lat     []time.Duration
	elapsed time.Duration
	ticks   int // CPU of the node and its ClickHouse
	own     int // of the node alone
	lastRPS float64
}

func startABBuild(b *testing.B, bin string, args []string, conc int) *abBuild {
	srv, root := startBenchServer(b, bin, nil, args...)
	token := benchPrincipal(b, srv.url, root)
	body, _ := json.Marshal(map[string]string{"token": token, "permission": "api.verify", "ip": "10.0.0.1"})
	c := newLoadClient(srv.url+"/v1/verify", token, body, conc)
	b.Cleanup(c.close)
	if err := c.warm(); err != nil {
		b.Fatal(err)
	}
	return &abBuild{load: c, pids: processTree(srv.cmd.Process.Pid)}
}

func (a *abBuild) reset() { a.lat, a.elapsed, a.ticks, a.own = nil, 0, 0, 0 }

// slice sends n requests, then lets the audit sink's insert of them land
// before it reads the CPU they cost.
func (a *abBuild) slice(b *testing.B, n int) {
	cpu0, own0 := cpuTicks(a.pids), cpuTicks(a.pids[:1])
	lat, elapsed, err := a.load.run(n)
	if err != nil {
		b.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	a.ticks += cpuTicks(a.pids) - cpu0
	a.own += cpuTicks(a.pids[:1]) - own0
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
	return float64(t) * 10_000 / float64(len(a.lat))
}

func (a *abBuild) report(b *testing.B, who string) {
	slices.Sort(a.lat)
	b.ReportMetric(a.rps(), who+"-req/s")
	b.ReportMetric(a.cpuPerOp(false), who+"-cpu-µs/op")
	b.ReportMetric(a.cpuPerOp(true), who+"-node-cpu-µs/op")
	b.ReportMetric(float64(a.lat[len(a.lat)/2].Microseconds())/1000, who+"-p50-ms")
	b.ReportMetric(float64(a.lat[len(a.lat)*99/100].Microseconds())/1000, who+"-p99-ms")
}
