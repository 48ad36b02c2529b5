package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// BenchmarkColdStart is `make bench-coldstart`: how long the real binary
// takes to start on a large ledger, at two lengths of USAGE in the same
// run, so the figures show whether a start grows with USAGE. The ledger
// is written straight through the event store (signed with the node's own
// writer key, so the node trusts it): KEYLEDGER_BENCH_KEYS keys (100k)
// spread over principals, lifecycle events up to KEYLEDGER_BENCH_KEYS_EVENTS
// KEYS events (1M), and KEYLEDGER_BENCH_USAGE usage events (10M) in packs
// of 500, first a tenth of them, then all.
//
// At each length the node is first started once to fold everything (the
// ClickHouse sink, the notary from its last checkpoint, key state and last
// used) and stopped with SIGTERM, which saves the snapshots and the
// notary's checkpoints. Then each iteration is one cold start on the same
// data dir: time/op and ready-ms are the time from exec to /readyz 200;
// caughtup-ms until the audit sink's lag is 0, key state has applied KEYS,
// last used shows the newest use and the newest events have inclusion
// proofs; settled-s until the node's CPU falls idle, and cpu-s the CPU it
// used until then; rss-MB its VmRSS when ready, hwm-MB its peak.
//
// KEYLEDGER_BENCH_DIR puts the data dir there instead of a temporary one
// (it must be empty or missing; it is not deleted). KEYLEDGER_BENCH_PROFILE=DIR
// writes a 30 s CPU profile of each cold start, taken from /readyz on, and
// profiles each warm start whole, from /readyz until caught up, in 30 s
// pieces (warm-USAGE-NNN.pprof; `go tool pprof` merges them).
// KEYLEDGER_BENCH_ARGS adds serve flags (space-separated).
//
//	go test -run '^$' -bench '^BenchmarkColdStart$' -benchtime 1x -timeout 4h ./cmd/keyledger/
func BenchmarkColdStart(b *testing.B) {
	nKeys := benchEnvInt(b, "KEYLEDGER_BENCH_KEYS", 100_000)
	nKeysEvents := benchEnvInt(b, "KEYLEDGER_BENCH_KEYS_EVENTS", 1_000_000)
	nUsage := benchEnvInt(b, "KEYLEDGER_BENCH_USAGE", 10_000_000)
	dir := os.Getenv("KEYLEDGER_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	var args []string
	if a := os.Getenv("KEYLEDGER_BENCH_ARGS"); a != "" {
		args = strings.Fields(a)
	}
	prof := os.Getenv("KEYLEDGER_BENCH_PROFILE")
	if prof != "" {
		args = append(args, "--pprof", "127.0.0.1:6061")
	}

	// The first start on the empty dir writes the node's writer key and
	// trust file and bootstraps the super administrator.
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), domain.Secret{7, 7})
	first := startColdNode(b, dir, args, "KEYLEDGER_ROOT_TOKEN="+root)
	waitCold(b, first, 2*time.Minute, 5*time.Millisecond, first.ready)
	var me struct {
		Principal struct {
			ID string `json:"id"`
		} `json:"principal"`
	}
	if err := first.getJSON(root, "/v1/me", &me); err != nil {
		b.Fatal(err)
	}
	first.stopCold(b)

	l := openColdLedger(b, dir, me.Principal.ID)
	t0 := time.Now()
	l.buildKeys(b, nKeys, nKeysEvents)
	l.close(b)
	fmt.Printf("coldstart: built %d keys of %d principals, %d KEYS events (%d with the bootstrap's) in %v\n",
		l.keyCount, len(l.principals), l.keysEvents, l.keysSeq, time.Since(t0).Round(time.Millisecond))

	type row struct {
		usage, msgs                  int
		ready, caught, settled, warm time.Duration
		cpu, rss, hwm, chRSS         float64
	}
	sizes := []int{nUsage / 10, nUsage}
	rows := make([]row, len(sizes))
	for at, size := range sizes {
		ok := b.Run(fmt.Sprintf("usage=%d", size), func(b *testing.B) {
			b.StopTimer()
			var warm time.Duration
			if l.usage < size {
				l.reopen(b)
				t0 := time.Now()
				l.growUsage(b, size)
				l.close(b)
				fmt.Printf("coldstart: USAGE now %d events in %d messages (%v)\n", l.usage, l.usageMsgs, time.Since(t0).Round(time.Millisecond))
				// The warm start folds and sinks what was just written,
				// then saves every snapshot and checkpoint at SIGTERM.
				t0 = time.Now()
				n := startColdNode(b, dir, args)
				waitCold(b, n, 10*time.Minute, 5*time.Millisecond, n.ready)
				fmt.Printf("coldstart: warm start ready in %v\n", time.Since(t0).Round(time.Millisecond))
				// The warm-up is profiled whole, in successive 30 s
				// profiles (go tool pprof merges them) until caught up.
				caught := make(chan struct{})
				var profDone chan struct{}
				if prof != "" {
					profDone = make(chan struct{})
					go func() {
						defer close(profDone)
						for i := 0; ; i++ {
							coldProfile(b, filepath.Join(prof, fmt.Sprintf("warm-%d-%03d.pprof", size, i)))
							select {
							case <-caught:
								return
							default:
							}
						}
					}()
				}
				waitCold(b, n, 4*time.Hour, time.Second, progress(t0, func() error { return n.caughtUp(l, root) }))
				warm = time.Since(t0)
				close(caught)
				fmt.Printf("coldstart: warm start caught up in %v\n", warm.Round(time.Millisecond))
				if profDone != nil {
					<-profDone
				}
				n.stopCold(b)
			}
			var r row
			for i := 0; i < b.N; i++ {
				b.StartTimer()
				n := startColdNode(b, dir, args)
				waitCold(b, n, 10*time.Minute, 5*time.Millisecond, n.ready)
				b.StopTimer()
				r = row{usage: l.usage, msgs: l.usageMsgs, warm: warm}
				r.ready = time.Since(n.started)
				r.rss = procStatusMB(n.cmd.Process.Pid, "VmRSS")
				var profDone chan struct{}
				if prof != "" {
					profDone = make(chan struct{})
					go func() {
						defer close(profDone)
						coldProfile(b, filepath.Join(prof, fmt.Sprintf("coldstart-%d.pprof", size)))
					}()
				}
				waitCold(b, n, 30*time.Minute, 100*time.Millisecond, progress(n.started, func() error { return n.caughtUp(l, root) }))
				r.caught = time.Since(n.started)
				r.settled, r.cpu = n.settle(b)
				r.hwm = procStatusMB(n.cmd.Process.Pid, "VmHWM")
				for _, pid := range processTree(n.cmd.Process.Pid)[1:] {
					r.chRSS += procStatusMB(pid, "VmRSS")
				}
				if profDone != nil {
					<-profDone
				}
				n.stopCold(b)
			}
			b.ReportMetric(float64(r.ready.Milliseconds()), "ready-ms")
			b.ReportMetric(float64(r.caught.Milliseconds()), "caughtup-ms")
			b.ReportMetric(r.settled.Seconds(), "settled-s")
			b.ReportMetric(r.cpu, "cpu-s")
			b.ReportMetric(r.rss, "rss-MB")
			b.ReportMetric(r.hwm, "hwm-MB")
			rows[at] = r
		})
		if !ok {
			break
		}
	}
	fmt.Printf("\ncoldstart: %d keys, %d KEYS events\n", l.keyCount, l.keysSeq)
	fmt.Printf("%12s %10s %10s %12s %10s %8s %9s %9s %12s %10s\n", "USAGE", "messages", "/readyz", "caught up", "settled", "cpu", "rss", "peak rss", "clickhouse", "warm run")
	for _, r := range rows {
		fmt.Printf("%12d %10d %10v %12v %10v %7.1fs %7.0fMB %7.0fMB %10.0fMB %10v\n", r.usage, r.msgs,
			r.ready.Round(time.Millisecond), r.caught.Round(time.Millisecond), r.settled.Round(time.Second), r.cpu, r.rss, r.hwm, r.chRSS, r.warm.Round(time.Second))
	}
}

func benchEnvInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// coldLedger writes a large ledger straight into a stopped node's event
// store, signed with the node's own writer key.
type coldLedger struct {
	dir   string
	actor string // the super administrator's principal id
	store *eventstore.Store

	principals []domain.Principal
	keys       []domain.Key
	verifier   domain.Principal
	callerKey  string // the verifying service's key

	keyCount, keysEvents int
	keysSeq              uint64 // KEYS's last sequence
	lastKeysID           string
	usage, usageMsgs     int
	probeKey             string    // the key of the newest usage event
	probeAt              time.Time // its time
	lastUsageID          string
}

func openColdLedger(b *testing.B, dir, actor string) *coldLedger {
	l := &coldLedger{dir: dir, actor: actor}
	b.Cleanup(func() {
		if l.store != nil {
			_ = l.store.Close()
		}
	})
	l.reopen(b)
	return l
}

// reopen opens the event store of the stopped node as serve does
// (storeConfig), without fsync: the ledger is written in bulk.
func (l *coldLedger) reopen(b *testing.B) {
	key, writers, err := loadWriters(l.dir, "", "", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	l.store, err = eventstore.Open(context.Background(), eventstore.Config{
		DataDir: filepath.Join(l.dir, "nats"), NoSync: true, WriterKey: key, Writers: &writers, Timeout: 30 * time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	if l.keysSeq, err = l.store.LastSeq(context.Background(), domain.StreamKeys); err != nil {
		b.Fatal(err)
	}
	// The node's own use of its keys (the bootstrap's calls) counts too.
	n, err := l.store.CountEvents(context.Background(), domain.StreamUsage)
	if err != nil {
		b.Fatal(err)
	}
	l.usage = int(n)
}

func (l *coldLedger) close(b *testing.B) {
	if err := l.store.Close(); err != nil {
		b.Fatal(err)
	}
	l.store = nil
}

// appendOne stores writes of one event each, all at once, and returns the
// sequence each event was stored at: an atomic batch lands in one piece,
// in order, ending at the sequence AppendAll returns.
func (l *coldLedger) appendOne(b *testing.B, writes []domain.Write) []uint64 {
	last, err := l.store.AppendAll(context.Background(), writes)
	if err != nil {
		b.Fatalf("append %d events: %v", len(writes), err)
	}
	seqs := make([]uint64, len(writes))
	for i := range writes {
		seqs[i] = last - uint64(len(writes)-1-i)
	}
	l.keysSeq, l.keysEvents = last, l.keysEvents+len(writes)
	l.lastKeysID = writes[len(writes)-1].Events[0].ID.String()
	return seqs
}

// buildKeys writes nKeys keys, 20 to a principal, each created as the
// command path does (key.created with its owner's principal.key_issued),
// then updates, disables, enables and regenerates them round-robin until
// KEYS holds nEvents of this ledger's events.
func (l *coldLedger) buildKeys(b *testing.B, nKeys, nEvents int) {
	now := time.Now()
	newID := func() uuid.UUID { return uuid.Must(uuid.NewV7()) }
	meta := domain.Meta{Actor: l.actor, Context: &domain.RequestContext{SourceIP: "10.0.0.1", UserAgent: "keyledger-bench"}}
	known := func(r string) bool { _, ok := domain.BuiltinRoles[r]; return ok }
	const perPrincipal = 20
	const batch = 1000 // maxAtomicBatch

	// The principals, and a verifying service whose key every usage event
	// names as its caller.
	nPrincipals := (nKeys + perPrincipal - 1) / perPrincipal
	var writes []domain.Write
	var made []domain.Principal
	flushPrincipals := func() {
		if len(writes) == 0 {
			return
		}
		for i, seq := range l.appendOne(b, writes) {
			env := writes[i].Events[0]
			env.Seq = seq
			made = append(made, domain.EvolvePrincipal(domain.Principal{}, env))
		}
		writes = writes[:0]
	}
	for i := 0; i <= nPrincipals; i++ {
		roles := []string{domain.RoleKeyAdmin}
		name := fmt.Sprintf("bench owner %d", i)
		if i == nPrincipals {
			roles, name = []string{domain.RoleVerifier}, "bench verifier"
		}
		envs, err := domain.DecidePrincipal(domain.Principal{}, domain.CreatePrincipal{Meta: meta, PrincipalID: newID().String(), Name: name, Roles: roles}, known, now, newID)
		if err != nil {
			b.Fatal(err)
		}
		writes = append(writes, domain.Write{Events: envs})
		if len(writes) == batch {
			flushPrincipals()
		}
	}
	flushPrincipals()
	l.principals, l.verifier = made[:nPrincipals], made[nPrincipals]

	// Keys, one per principal in each batch (a principal's version moves
	// with each of its keys).
	active := make([]int, nPrincipals+1)
	create := func(owner int, perms []string) domain.Envelope {
		p := &l.principals[0]
		if owner == nPrincipals {
			p = &l.verifier
		} else {
			p = &l.principals[owner]
		}
		id := newID().String()
		kenv, err := domain.Decide(domain.Key{}, domain.CreateKey{Meta: meta, KeyID: id, Owner: p.ID, Name: "bench key " + id[:8],
			Permissions: perms, SecretHash: domain.HashSecret(domain.Secret{byte(owner), 1})}, now, newID)
		if err != nil {
			b.Fatal(err)
		}
		issued, err := domain.DecidePrincipal(*p, domain.IssueKey{Meta: meta, KeyID: id, ActiveKeys: active[owner], Limit: domain.DefaultMaxActiveKeys}, known, now, newID)
		if err != nil {
			b.Fatal(err)
		}
		active[owner]++
		writes = append(writes, domain.Write{Events: kenv}, domain.Write{Expected: p.Version, Events: issued})
		return kenv[0]
	}
	flushKeys := func(owners []int) {
		seqs := l.appendOne(b, writes)
		for j, owner := range owners {
			kenv, penv := writes[2*j].Events[0], writes[2*j+1].Events[0]
			kenv.Seq, penv.Seq = seqs[2*j], seqs[2*j+1]
			l.keys = append(l.keys, domain.Evolve(domain.Key{}, kenv))
			if owner == nPrincipals {
				l.verifier = domain.EvolvePrincipal(l.verifier, penv)
			} else {
				l.principals[owner] = domain.EvolvePrincipal(l.principals[owner], penv)
			}
		}
		writes = writes[:0]
	}
	create(nPrincipals, []string{domain.PermVerify})
	flushKeys([]int{nPrincipals})
	l.callerKey, l.keys = l.keys[0].ID, l.keys[:0]
	perms := []string{domain.PermKeyView}
	var owners []int
	for k := 0; k < nKeys; k++ {
		owner := k % nPrincipals
		create(owner, perms)
		owners = append(owners, owner)
		// A principal appears once per batch.
		if len(owners) == batch/2 || (k+1)%nPrincipals == 0 || k == nKeys-1 {
			flushKeys(owners)
			owners = owners[:0]
		}
	}
	l.keyCount = len(l.keys)

	// Lifecycle events, each key in turn: update, disable, enable,
	// regenerate.
	var touched []int
	for k := 0; l.keysEvents < nEvents; k = (k + 1) % len(l.keys) {
		key := l.keys[k]
		var cmd domain.Command
		switch key.Events % 4 {
		case 1:
			name := fmt.Sprintf("%s v%d", key.Name[:min(len(key.Name), 16)], key.Events)
			cmd = domain.UpdateKey{Meta: meta, Name: &name}
		case 2:
			cmd = domain.DisableKey{Meta: meta, Reason: "bench"}
		case 3:
			cmd = domain.EnableKey{Meta: meta}
		default:
			cmd = domain.RegenerateKey{Meta: meta}
		}
		envs, err := domain.Decide(key, cmd, now, newID)
		if err != nil {
			b.Fatalf("key %s after %d events: %v", key.ID, key.Events, err)
		}
		writes = append(writes, domain.Write{Expected: key.Version, Events: envs})
		touched = append(touched, k)
		if len(writes) == batch || k == len(l.keys)-1 || l.keysEvents+len(writes) >= nEvents {
			for i, seq := range l.appendOne(b, writes) {
				env := writes[i].Events[0]
				env.Seq = seq
				l.keys[touched[i]] = domain.Evolve(l.keys[touched[i]], env)
			}
			writes, touched = writes[:0], touched[:0]
		}
	}
}

// growUsage appends usage events until USAGE holds total of them: each
// pack of 500 is what one group commit of the node stores, signed by its
// writer. Uses are of random keys, one in fifty denied; the very last is a
// use of one key, which the caught-up check then looks for.
func (l *coldLedger) growUsage(b *testing.B, total int) {
	const pack = 500
	pub := eventstore.NewUsagePublisher(l.store, eventstore.UsageConfig{MaxBatch: pack})
	ctx := context.Background()
	remaining := total - l.usage - 1
	packs := make(chan int, 64)
	go func() {
		for n := remaining; n > 0; n -= pack {
			packs <- min(pack, n)
		}
		close(packs)
	}()
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	for w := range 3 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			envs := make([]domain.Envelope, 0, pack)
			for n := range packs {
				envs = envs[:0]
				now := time.Now()
				for range n {
					envs = append(envs, l.usageEvent(b, rng, l.keys[rng.IntN(len(l.keys))], now))
				}
				if err := pub.Publish(ctx, envs...); err != nil {
					errMu.Lock()
					firstErr = cmpErr(firstErr, err)
					errMu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	probe := l.keys[len(l.keys)/2]
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), probe.ID,
		domain.KeyUsed{Code: domain.OutcomeValid, Owner: probe.Owner, Permission: domain.PermKeyView, CallerKey: l.callerKey, CallerIP: "10.9.9.9"},
		time.Now().Add(time.Millisecond), l.verifier.ID, &domain.RequestContext{SourceIP: "10.8.8.8", UserAgent: "keyledger-bench"})
	if err != nil {
		b.Fatal(err)
	}
	env.Seal("")
	if err := pub.Publish(ctx, env); err != nil {
		b.Fatal(err)
	}
	if err := pub.Close(ctx); err != nil {
		b.Fatal(err)
	}
	st := pub.Stats()
	if st.Rejected > 0 || st.Abandoned > 0 {
		b.Fatalf("usage publisher: %+v", st)
	}
	l.usage += int(st.Events)
	msgs, err := l.store.LastSeq(ctx, domain.StreamUsage)
	if err != nil {
		b.Fatal(err)
	}
	l.usageMsgs = int(msgs)
	l.probeKey, l.probeAt, l.lastUsageID = probe.ID, env.Time, env.ID.String()
	if n, err := l.store.CountEvents(ctx, domain.StreamUsage); err != nil || int(n) != l.usage {
		b.Fatalf("USAGE holds %d events (%v), want %d", n, err, l.usage)
	}
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// usageEvent is the event of one verification of k by the bench's
// verifying service, as keystate.Verifier builds it.
func (l *coldLedger) usageEvent(b *testing.B, rng *rand.Rand, k domain.Key, now time.Time) domain.Envelope {
	ip := fmt.Sprintf("10.%d.%d.%d", rng.IntN(256), rng.IntN(256), rng.IntN(256))
	var ev domain.Event = domain.KeyUsed{Code: domain.OutcomeValid, Owner: k.Owner, Permission: domain.PermKeyView, CallerKey: l.callerKey, CallerIP: "10.9.9.9"}
	if rng.IntN(50) == 0 {
		ev = domain.KeyDenied{Code: domain.OutcomeInvalidSecret, Owner: k.Owner, Permission: domain.PermKeyView,
			TokenHash: domain.HashToken(ip), CallerKey: l.callerKey, CallerIP: "10.9.9.9"}
	}
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), k.ID, ev, now, l.verifier.ID,
		&domain.RequestContext{SourceIP: ip, UserAgent: "keyledger-bench"})
	if err != nil {
		b.Fatal(err)
	}
	env.Seal("")
	return env
}

// coldNode is one run of `keyledger serve` on the bench's data dir.
type coldNode struct {
	*e2eServer
	started time.Time
	client  *http.Client
}

func startColdNode(b *testing.B, dir string, args []string, env ...string) *coldNode {
	started := time.Now()
	s := spawnServe(b, e2eServerBin, dir, args, env, 2*time.Minute)
	return &coldNode{e2eServer: s, started: started, client: &http.Client{Timeout: 10 * time.Second}}
}

// waitCold polls f every interval until it succeeds, failing the benchmark if the node
// exits or total passes.
func waitCold(b *testing.B, n *coldNode, total, every time.Duration, f func() error) {
	b.Helper()
	checkFor(b, total, every, func() error {
		select {
		case <-n.exited:
			b.Fatalf("keyledger serve exited (%v):\n%s", n.waitErr, tail(n.stderr.String(), 4000))
		default:
		}
		return f()
	})
}

// progress wraps a wait's check: it prints what the check still waits for
// when that changes (and every 30 s), so a long warm-up shows which part
// of the node is behind.
func progress(t0 time.Time, f func() error) func() error {
	var last string
	var at time.Time
	return func() error {
		err := f()
		what := "caught up"
		if err != nil {
			what = err.Error()
		}
		// The part of the node, not its figures.
		part := strings.TrimRight(strings.Fields(what + " x")[0], "0123456789")
		if part != last || time.Since(at) > 30*time.Second {
			fmt.Printf("coldstart: +%v: %s\n", time.Since(t0).Round(100*time.Millisecond), tail(what, 200))
			last, at = part, time.Now()
		}
		return err
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// ready succeeds once /readyz answers 200.
func (n *coldNode) ready() error {
	if n.url == "" {
		addr := servingAddr(n.stderr.String())
		if addr == "" {
			return errors.New(`no "keyledger serving" log line yet`)
		}
		n.url = "http://" + addr
	}
	res, err := n.client.Get(n.url + "/readyz")
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz %d: %s", res.StatusCode, body)
	}
	return nil
}

func (n *coldNode) getJSON(token, path string, out any) error {
	req, _ := http.NewRequest("GET", n.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := n.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, res.StatusCode, body)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(body, out)
}

// caughtUp succeeds once the node has everything of l: the audit sink's
// lag is 0 on every stream, key state has applied the whole of KEYS, last
// used shows the newest use and the newest KEYS and USAGE events are
// covered by a signed checkpoint. Every API call stores a use of the root
// key in USAGE, so those checks come last and are polled slowly.
func (n *coldNode) caughtUp(l *coldLedger, root string) error {
	res, err := n.client.Get(n.url + "/metrics")
	if err != nil {
		return err
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	res.Body.Close()
	if err != nil {
		return err
	}
	lag := perStream(fams, "keyledger_audit_sink_lag")
	if len(lag) < 3 {
		return fmt.Errorf("sink lag of %d streams only", len(lag))
	}
	for s, v := range lag {
		if v != 0 {
			return fmt.Errorf("audit sink %v messages behind on %s", v, s)
		}
	}
	applied, _ := sum(fams, "keyledger_keystate_applied_seq")
	if last := perStream(fams, "keyledger_stream_last_seq")[domain.StreamKeys]; applied < last || uint64(applied) < l.keysSeq {
		return fmt.Errorf("key state at %v of %v", applied, last)
	}
	var k struct {
		LastUsedAt *time.Time `json:"last_used_at"`
	}
	if err := n.getJSON(root, "/v1/keys/"+l.probeKey, &k); err != nil {
		return err
	}
	if k.LastUsedAt == nil || !k.LastUsedAt.Equal(l.probeAt) {
		return fmt.Errorf("last used of %s is %v, want %v", l.probeKey, k.LastUsedAt, l.probeAt)
	}
	for _, id := range []string{l.lastKeysID, l.lastUsageID} {
		if err := n.getJSON(root, "/v1/audit/proof?event_id="+id, nil); err != nil {
			return err
		}
	}
	return nil
}

// settle waits until the node's CPU falls idle (under 5% of a core over 3
// seconds) and returns how long after exec that was and the CPU seconds
// the node used until then.
func (n *coldNode) settle(b *testing.B) (time.Duration, float64) {
	pid := []int{n.cmd.Process.Pid}
	var ticks []int
	for {
		ticks = append(ticks, cpuTicks(pid))
		if k := len(ticks); k > 3 && ticks[k-1]-ticks[k-4] < 15 {
			return time.Since(n.started), float64(ticks[k-1]) / 100
		}
		if time.Since(n.started) > time.Hour {
			b.Fatalf("the node is still busy after an hour")
		}
		time.Sleep(time.Second)
	}
}

// stopCold sends SIGTERM and requires a clean exit. With
// KEYLEDGER_BENCH_PROFILE the node's log is kept there too.
func (n *coldNode) stopCold(b *testing.B) {
	b.Helper()
	if dir := os.Getenv("KEYLEDGER_BENCH_PROFILE"); dir != "" {
		defer func() {
			path := filepath.Join(dir, fmt.Sprintf("node-%s.log", n.started.Format("150405.000")))
			_ = os.WriteFile(path, []byte(n.stderr.String()), 0o644)
		}()
	}
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	select {
	case <-n.exited:
	case <-time.After(3 * time.Minute):
		b.Fatalf("keyledger serve did not exit within 3 minutes of SIGTERM:\n%s", tail(n.stderr.String(), 4000))
	}
	if n.waitErr != nil {
		b.Fatalf("keyledger serve exited with %v after SIGTERM:\n%s", n.waitErr, tail(n.stderr.String(), 4000))
	}
}

// procStatusMB reads a kB field of /proc/pid/status in MB.
func procStatusMB(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return float64(kb) / 1024
		}
	}
	return 0
}

// coldProfile writes a 30 s CPU profile of the node to path.
func coldProfile(b *testing.B, path string) {
	res, err := http.Get("http://127.0.0.1:6061/debug/pprof/profile?seconds=30")
	if err != nil {
		b.Logf("profile: %v", err)
		return
	}
	defer res.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		b.Logf("profile: %v", err)
		return
	}
	defer f.Close()
	_, _ = io.Copy(f, res.Body)
}
