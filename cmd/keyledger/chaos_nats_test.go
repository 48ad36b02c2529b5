package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/alerts"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// natsServer is one nats-server of the fault suite, run in the test
// process from the server library, that keyledger serve (a child process)
// reaches over TCP. It is stopped and started again on the same store dir
// and ports, as an operator restarts a server.
type natsServer struct {
	t    *testing.T
	name string
	opts func() *server.Options

	mu sync.Mutex
	ns *server.Server
}

func (s *natsServer) start() {
	s.t.Helper()
	ns, err := server.NewServer(s.opts())
	if err != nil {
		s.t.Fatalf("nats %s: %v", s.name, err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		s.t.Fatalf("nats %s not ready", s.name)
	}
	s.mu.Lock()
	s.ns = ns
	s.mu.Unlock()
}

// stop shuts the server down and waits until it is gone: its clients see
// their connections drop, the rest of a cluster loses a peer.
func (s *natsServer) stop() {
	s.mu.Lock()
	ns := s.ns
	s.ns = nil
	s.mu.Unlock()
	if ns != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}

func (s *natsServer) server() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ns
}

// localState is what this server itself stores of stream: its own
// replica, which a restarted node brings up to date from the leader.
func (s *natsServer) localState(stream string) (server.StreamState, error) {
	ns := s.server()
	if ns == nil {
		return server.StreamState{}, fmt.Errorf("nats %s is down", s.name)
	}
	info, err := ns.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	if err != nil {
		return server.StreamState{}, err
	}
	for _, acc := range info.AccountDetails {
		for _, st := range acc.Streams {
			if st.Name == stream {
				return st.State, nil
			}
		}
	}
	return server.StreamState{}, fmt.Errorf("nats %s holds no replica of %s", s.name, stream)
}

// natsUsers creates an nkey for every keyledger identity with the
// permissions a deployment grants it (deploy/nats.conf), and writes each
// seed to credDir as the embedded server does, so that serve, the
// auditor and the test connect with least privilege, as in production.
func natsUsers(t *testing.T, credDir string) []*server.NkeyUser {
	t.Helper()
	must(t, os.MkdirAll(credDir, 0o700))
	var users []*server.NkeyUser
	for _, id := range eventstore.Identities() {
		kp, err := nkeys.CreateUser()
		must(t, err)
		seed, err := kp.Seed()
		must(t, err)
		pub, err := kp.PublicKey()
		must(t, err)
		b := fmt.Appendf(nil, "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n", seed)
		must(t, os.WriteFile(eventstore.SeedFile(credDir, id), b, 0o600))
		p, _ := eventstore.IdentityPermissions(id)
		users = append(users, &server.NkeyUser{Nkey: pub, Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: slices.Clone(p.Publish)},
			Subscribe: &server.SubjectPermission{Allow: slices.Clone(p.Subscribe)},
		}})
	}
	return users
}

// startNATS starts n nats-servers with JetStream, each with a store dir of
// its own under t.TempDir(), a client port on 127.0.0.1 that stays the
// same across restarts, and, when n > 1, routes to each other as one
// cluster. Every client must authenticate as one of users.
func startNATS(t *testing.T, n int, users []*server.NkeyUser) []*natsServer {
	t.Helper()
	clientPorts, routePorts := freePorts(t, n), freePorts(t, n)
	var routes []string
	for _, p := range routePorts {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	var out []*natsServer
	for i := range n {
		storeDir := t.TempDir()
		s := &natsServer{t: t, name: fmt.Sprintf("n%d", i+1)}
		s.opts = func() *server.Options {
			o := &server.Options{
				ServerName: s.name,
				Host:       "127.0.0.1",
				Port:       clientPorts[i],
				JetStream:  true,
				StoreDir:   storeDir,
				NoSigs:     true,
				NoLog:      true,
				Nkeys:      users,
			}
			if n > 1 {
				o.Cluster = server.ClusterOpts{Name: "keyledger-chaos", Host: "127.0.0.1", Port: routePorts[i]}
				o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
			}
			return o
		}
		out = append(out, s)
	}
	// Cluster members wait for each other, so they start together.
	var wg sync.WaitGroup
	for _, s := range out {
		wg.Go(s.start)
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, s := range out {
			s.stop()
		}
	})
	return out
}

// connectedServer returns the server keyledger says it is connected to,
// or nil.
func connectedServer(n *chaosNode, servers []*natsServer) *natsServer {
	log := n.srv.Load().stderr.String()
	var line struct {
		NATS string `json:"nats"`
		URL  string `json:"url"`
	}
	url := ""
	if logLine(log, "keyledger serving", &line) {
		url = line.NATS
	}
	if logLine(log, "nats reconnected", &line) {
		url = line.URL
	}
	for _, s := range servers {
		if strings.HasSuffix(url, fmt.Sprintf(":%d", s.opts().Port)) {
			return s
		}
	}
	return nil
}

func (s *natsServer) String() string { return s.name }

// natsURLs is the comma list of the servers' client URLs.
func natsURLs(servers []*natsServer) string {
	var urls []string
	for _, s := range servers {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", s.opts().Port))
	}
	return strings.Join(urls, ",")
}

// freePorts returns n TCP ports of 127.0.0.1 that were free just now.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		must(t, err)
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// auditorJS connects to NATS at url as the auditor (read-only), with the
// seed under credDir.
func auditorJS(t *testing.T, url, credDir string) jetstream.JetStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := eventstore.Dial(ctx, eventstore.Config{URL: url, Identity: eventstore.IdentityAuditor,
		NkeySeedFile: eventstore.SeedFile(credDir, eventstore.IdentityAuditor)}, nats.Name("chaos-test"), nats.MaxReconnects(-1))
	must(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	must(t, err)
	return js
}

func streamInfo(js jetstream.JetStream, stream string) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	return st.CachedInfo(), nil
}

// callH is chaosNode.call that also returns the answer's Content-Type.
func (n *chaosNode) callH(token, method, path string, body any) (int, string, []byte) {
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(method, n.url()+path, bytes.NewReader(b))
	if err != nil {
		return 0, "", nil
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	res, err := chaosClient.Do(req)
	if err != nil {
		return 0, "", nil
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, "", nil
	}
	return res.StatusCode, res.Header.Get("Content-Type"), out
}

// createKey creates a key outside the load's workers and records it as
// the load does, so the ledger checks count it.
func (l *chaosLoad) createKey() (api.CreatedKey, int, []byte) {
	status, b := l.node.call(l.admin, "POST", "/v1/keys", map[string]any{"name": "chaos-probe", "permissions": []string{"orders.read"}})
	var k api.CreatedKey
	if status != http.StatusCreated || json.Unmarshal(b, &k) != nil {
		return k, status, b
	}
	l.created(k)
	return k, status, b
}

// verify verifies token outside the load's workers and records an answered
// verification as the load does.
func (l *chaosLoad) verify(token string) (api.VerifyResponse, int, string, []byte) {
	status, ct, b := l.node.callH(l.veri, "POST", "/v1/verify", map[string]string{"token": token, "permission": "orders.read"})
	var v api.VerifyResponse
	if status == http.StatusOK && json.Unmarshal(b, &v) == nil && v.EventID != "" {
		l.mu.Lock()
		l.verified[v.EventID] = true
		l.mu.Unlock()
	}
	return v, status, ct, b
}

// checkRefusals fails the test when the load saw any answer but the
// honest refusals of a fault: 409 (a race between the two workers) and
// 503 (the store cannot take the request now). A 500 or no answer at all
// (the client's 30s timeout) is a failure.
func checkRefusals(t *testing.T, l *chaosLoad, fault string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, st := range slices.Sorted(maps.Keys(l.byStatus)) {
		if st != http.StatusConflict && st != http.StatusServiceUnavailable {
			t.Errorf("%s: %d requests answered %d (0: no answer)", fault, l.byStatus[st], st)
		}
	}
}

// chaosDatabase is a fresh ClickHouse database of the shared test server
// for one node of the suite.
func chaosDatabase() string {
	return "chaos_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
}

// natsChaos is a chaos node on nats-servers of its own (nkey users, the
// deployment's permissions) and the shared ClickHouse.
type natsChaos struct {
	servers             []*natsServer
	urls, credDir, root string
	backend, database   string
	node                *chaosNode
}

// startChaosOnNATS starts members nats-servers and a chaos node on them
// with the node's nkey and env added.
func startChaosOnNATS(t *testing.T, members int, env ...string) natsChaos {
	e := natsChaos{backend: chlogtest.MustConnect(t), database: chaosDatabase()}
	dir := t.TempDir()
	e.credDir = filepath.Join(dir, "nats", "credentials")
	e.servers = startNATS(t, members, natsUsers(t, e.credDir))
	e.urls = natsURLs(e.servers)
	e.root = domain.FormatToken(uuid.Must(uuid.NewV7()), randomSecret(t))
	e.node = startChaosNodeOn(t, dir, e.urls, append([]string{"KEYLEDGER_ROOT_TOKEN=" + e.root, "KEYLEDGER_MAX_ACTIVE_KEYS=1000000",
		"KEYLEDGER_NATS_NKEY=" + eventstore.SeedFile(e.credDir, eventstore.IdentityNode),
		"KEYLEDGER_CLICKHOUSE=" + e.backend, "KEYLEDGER_CLICKHOUSE_DATABASE=" + e.database}, env...)...)
	return e
}

// TestChaosNATSCluster runs a node on a 3-node JetStream cluster with R3
// streams and, under load, shuts down a stream leader (keyledger's own
// server when that leads USAGE or KEYS, else the leader of USAGE), keeps
// the load on without it, then starts it again on its store dir. The
// restarted member must catch up: hold every message stored meanwhile and
// be a current replica again.
func TestChaosNATSCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("fault suite: builds and runs the binary")
	}
	e := startChaosOnNATS(t, 3, "KEYLEDGER_REPLICAS=3")
	cluster, urls, credDir, n, root, backend, database := e.servers, e.urls, e.credDir, e.node, e.root, e.backend, e.database
	js := auditorJS(t, urls, credDir)
	for _, stream := range []string{domain.StreamKeys, domain.StreamUsage} {
		info, err := streamInfo(js, stream)
		must(t, err)
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("%s: %d replicas, cluster %+v; want R3", stream, info.Config.Replicas, info.Cluster)
		}
	}
	l := chaosSetup(t, n, root)

	var victim *natsServer
	var what string
	var elected time.Duration
	var target map[string]uint64
	r := chaosResult{}
	r.Recover = underLoad(t, l, &r, func() time.Time {
		usage, err := streamInfo(js, domain.StreamUsage)
		must(t, err)
		keys, err := streamInfo(js, domain.StreamKeys)
		must(t, err)
		// The server keyledger is connected to, when it leads a stream,
		// makes the harder fault: the node loses its connection and a
		// stream its leader at once. Otherwise the leader of USAGE.
		conn := connectedServer(n, cluster)
		for _, s := range cluster {
			if s.name == usage.Cluster.Leader && victim == nil {
				victim = s
			}
			if s == conn && (s.name == usage.Cluster.Leader || s.name == keys.Cluster.Leader) {
				victim = s
			}
		}
		if victim == nil {
			t.Fatalf("USAGE leader %q is none of the cluster", usage.Cluster.Leader)
		}
		var roles []string
		for _, st := range []*jetstream.StreamInfo{usage, keys} {
			if st.Cluster.Leader == victim.name {
				roles = append(roles, "leader of "+st.Config.Name)
			}
		}
		if victim == conn {
			roles = append(roles, "keyledger's server")
		}
		what = strings.Join(roles, ", ")
		t.Logf("stopping %s, %s (USAGE led by %s, KEYS by %s, keyledger connected to %v)", victim.name, what, usage.Cluster.Leader, keys.Cluster.Leader, conn)
		down := time.Now()
		victim.stop()
		// The two that are left elect a leader and take writes again.
		checkFor(t, time.Minute, 10*time.Millisecond, func() error {
			if _, status, b := l.createKey(); status != http.StatusCreated {
				return fmt.Errorf("create key with %s down: %d %s", victim.name, status, b)
			}
			return nil
		})
		elected = time.Since(down)
		t.Logf("a write sent as %s went down was answered after %s", victim.name, elected.Round(time.Millisecond))
		waitFor(time.Until(down.Add(chaosPhase())))
		// What the restarted node must hold before it counts as current.
		target = map[string]uint64{}
		for _, stream := range []string{domain.StreamKeys, domain.StreamUsage} {
			info, err := streamInfo(js, stream)
			must(t, err)
			target[stream] = info.State.LastSeq
		}
		at := time.Now()
		victim.start()
		return at
	}, func() error {
		for stream, want := range target {
			st, err := victim.localState(stream)
			if err != nil {
				return err
			}
			if st.LastSeq < want {
				return fmt.Errorf("%s holds %s up to %d of %d", victim.name, stream, st.LastSeq, want)
			}
			info, err := streamInfo(js, stream)
			if err != nil {
				return err
			}
			if info.Cluster.Leader != victim.name && !slices.ContainsFunc(info.Cluster.Replicas, func(p *jetstream.PeerInfo) bool {
				return p.Name == victim.name && p.Current && !p.Offline
			}) {
				return fmt.Errorf("%s: %s is not a current replica yet", stream, victim.name)
			}
		}
		if _, status, b := l.createKey(); status != http.StatusCreated {
			return fmt.Errorf("create key: %d %s", status, b)
		}
		return nil
	})
	r.Fault = fmt.Sprintf("R3 cluster: %s (%s) down %s, restarted (a write sent as it went down answered after %s)",
		victim.name, what, chaosPhase(), elected.Round(time.Millisecond))
	l.check(t, backend, database, &r)
	// Every member holds the same streams once the load has stopped: the
	// restarted one lost nothing and gained nothing.
	for _, stream := range []string{domain.StreamKeys, domain.StreamUsage} {
		checkFor(t, time.Minute, 20*time.Millisecond, func() error {
			held := map[[2]uint64][]string{} // messages, last sequence → servers
			for _, s := range cluster {
				st, err := s.localState(stream)
				if err != nil {
					return err
				}
				k := [2]uint64{st.Msgs, st.LastSeq}
				held[k] = append(held[k], s.name)
			}
			if len(held) != 1 {
				return fmt.Errorf("the members hold different %s streams (messages, last sequence: servers): %v", stream, held)
			}
			return nil
		})
	}
	checkRefusals(t, l, r.Fault)
	logChaosTable(t, []chaosResult{r})
}

// TestChaosNATSGone runs a node on an external single nats-server and
// stops that server under load for a phase: writes and verifications
// answer 503 problems (or, if the server came back within their wait and
// their events were stored, succeed), /readyz says not ready, and once the
// server is back the node reconnects by itself.
func TestChaosNATSGone(t *testing.T) {
	if testing.Short() {
		t.Skip("fault suite: builds and runs the binary")
	}
	e := startChaosOnNATS(t, 1)
	ns, n, root, backend, database := e.servers[0], e.node, e.root, e.backend, e.database
	l := chaosSetup(t, n, root)
	k, status, b := l.createKey()
	if status != http.StatusCreated {
		t.Fatalf("create key: %d %s", status, b)
	}

	r := chaosResult{Fault: fmt.Sprintf("external nats-server down %s, restarted", chaosPhase())}
	r.Recover = underLoad(t, l, &r, func() time.Time {
		down := time.Now()
		ns.stop()
		// While NATS is gone a write is refused, a 503 problem that says
		// why: unavailable when not even the caller's authentication
		// could be recorded (the first thing a request stores),
		// store_unavailable when the command's own events could not be.
		// A verification is answered only once it is stored, so it is
		// refused too, or answered (and checked below) if the server
		// came back within its wait.
		var probes sync.WaitGroup
		probes.Go(func() {
			status, ct, b := n.callH(l.admin, "POST", "/v1/keys", map[string]any{"name": "while-down", "permissions": []string{"orders.read"}})
			var p api.Problem
			if status != http.StatusServiceUnavailable || ct != "application/problem+json" || json.Unmarshal(b, &p) != nil || (p.Code != "store_unavailable" && p.Code != "unavailable") {
				t.Errorf("create key with NATS down: %d %s %s; want 503 problem+json store_unavailable or unavailable", status, ct, b)
			}
			t.Logf("a write with NATS down answered %d %s after %s", status, p.Code, time.Since(down).Round(time.Millisecond))
		})
		probes.Go(func() {
			v, status, ct, b := l.verify(k.Token)
			var p api.Problem
			switch {
			case status == http.StatusOK && v.EventID != "":
			case status == http.StatusServiceUnavailable && ct == "application/problem+json" && json.Unmarshal(b, &p) == nil && p.Code == "unavailable":
			default:
				t.Errorf("verify with NATS down: %d %s %s; want 503 problem+json unavailable", status, ct, b)
			}
			t.Logf("a verification with NATS down answered %d after %s", status, time.Since(down).Round(time.Millisecond))
		})
		probes.Wait()
		// The node says it is not ready: it can neither read KEYS nor
		// store anything.
		if status, rd := readiness(n, ""); status != http.StatusServiceUnavailable || rd.Checks["key_state"] == "ok" {
			t.Errorf("readyz with NATS down: %d %v; want 503 with key_state failing", status, rd.Checks)
		}
		waitFor(time.Until(down.Add(chaosPhase())))
		at := time.Now()
		ns.start()
		return at
	}, func() error {
		if status, rd := readiness(n, ""); status != http.StatusOK {
			return fmt.Errorf("readyz %d %v", status, rd.Checks)
		}
		if _, status, b := l.createKey(); status != http.StatusCreated {
			return fmt.Errorf("create key: %d %s", status, b)
		}
		// The load may have disabled the key meanwhile: any answer
		// with a stored event will do.
		if v, status, _, b := l.verify(k.Token); status != http.StatusOK || v.EventID == "" {
			return fmt.Errorf("verify: %d %s", status, b)
		}
		return nil
	})
	l.check(t, backend, database, &r)
	checkRefusals(t, l, r.Fault)
	logChaosTable(t, []chaosResult{r})
}

// hookReceiver is a webhook receiver that the test stops and starts again
// on the same address. It counts the alerts it accepted, by event id, and
// refuses requests whose signature does not verify.
type hookReceiver struct {
	t      *testing.T
	addr   string
	secret []byte

	mu       sync.Mutex
	srv      *http.Server
	got      map[string]int
	badSigs  int
	attempts int
}

func startHookReceiver(t *testing.T, secret []byte) *hookReceiver {
	h := &hookReceiver{t: t, addr: fmt.Sprintf("127.0.0.1:%d", freePorts(t, 1)[0]), secret: secret, got: map[string]int{}}
	h.start()
	t.Cleanup(h.stop)
	return h
}

func (h *hookReceiver) url() string { return "http://" + h.addr + "/hook" }

func (h *hookReceiver) start() {
	h.t.Helper()
	var ln net.Listener
	// The port was ours a moment ago; a closed listener frees it at once.
	checkFor(h.t, 10*time.Second, 10*time.Millisecond, func() error {
		var err error
		ln, err = net.Listen("tcp", h.addr)
		return err
	})
	srv := &http.Server{Handler: http.HandlerFunc(h.serve), ReadHeaderTimeout: 5 * time.Second}
	h.mu.Lock()
	h.srv = srv
	h.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// stop closes the listener and every connection: keyledger's next attempt
// finds nothing listening.
func (h *hookReceiver) stop() {
	h.mu.Lock()
	srv := h.srv
	h.srv = nil
	h.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

func (h *hookReceiver) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.attempts++
	if err := alerts.VerifySignature(h.secret, r.Header.Get(alerts.HeaderTimestamp), body, r.Header.Get(alerts.HeaderSignature), time.Now(), 0); err != nil {
		h.badSigs++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var env struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(body, &env) != nil || env.ID != r.Header.Get(alerts.HeaderIdemKey) {
		h.badSigs++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.got[env.ID]++
	w.WriteHeader(http.StatusNoContent)
}

// missing returns the alerts of want the receiver has not accepted.
func (h *hookReceiver) missing(want map[string]storedAlert) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for id, a := range want {
		if h.got[id] == 0 {
			out = append(out, a.Rule+" "+id)
		}
	}
	slices.Sort(out)
	return out
}

// storedAlert is what the test needs of an alert on ALERTS.
type storedAlert struct {
	Rule   string   `json:"rule"`
	KeyIDs []string `json:"key_ids"`
}

// storedAlerts returns every alert on ALERTS by event id.
func storedAlerts(js jetstream.JetStream) (map[string]storedAlert, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, domain.StreamAlerts)
	if err != nil {
		return nil, err
	}
	out := map[string]storedAlert{}
	for seq := st.CachedInfo().State.FirstSeq; seq > 0 && seq <= st.CachedInfo().State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			return nil, fmt.Errorf("ALERTS seq %d: %w", seq, err)
		}
		var env struct {
			ID   string      `json:"id"`
			Data storedAlert `json:"data"`
		}
		if err := json.Unmarshal(m.Data, &env); err != nil {
			return nil, fmt.Errorf("ALERTS seq %d: %w", seq, err)
		}
		out[env.ID] = env.Data
	}
	return out, nil
}

// chaosHookDown is how long the webhook receiver stays down: minutes in
// the long version.
func chaosHookDown() time.Duration {
	if *chaosLong {
		return 2 * time.Minute
	}
	return chaosPhase()
}

// TestChaosWebhook runs a node with a webhook whose receiver goes down
// under load for a while; alerts raised meanwhile (a disabled key
// presented, the load's denied verifications) reach it once it is back.
func TestChaosWebhook(t *testing.T) {
	if testing.Short() {
		t.Skip("fault suite: builds and runs the binary")
	}
	backend := chlogtest.MustConnect(t)
	database := chaosDatabase()
	secret := []byte("chaos-webhook-secret-" + uuid.NewString())
	hook := startHookReceiver(t, secret)
	dir := t.TempDir()
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), randomSecret(t))
	n := startChaosNode(t, dir, "KEYLEDGER_ROOT_TOKEN="+root, "KEYLEDGER_MAX_ACTIVE_KEYS=1000000", "KEYLEDGER_WEBHOOK="+hook.url(), "KEYLEDGER_WEBHOOK_SECRET="+string(secret),
		"KEYLEDGER_CLICKHOUSE="+backend, "KEYLEDGER_CLICKHOUSE_DATABASE="+database)
	js := auditorJS(t, n.natsURL, filepath.Join(dir, "nats", "credentials"))
	l := chaosSetup(t, n, root)

	allDelivered := func() error {
		want, err := storedAlerts(js)
		if err != nil {
			return err
		}
		if miss := hook.missing(want); len(miss) > 0 {
			return fmt.Errorf("%d of %d alerts not delivered: %v", len(miss), len(want), miss[:min(len(miss), 5)])
		}
		return nil
	}
	var probe string     // the alert raised for the probe's disabled key
	var waiting []string // alerts not delivered when the receiver returned
	r := chaosResult{Fault: fmt.Sprintf("webhook receiver down %s", chaosHookDown())}
	r.Recover = underLoad(t, l, &r, func() time.Time {
		down := time.Now()
		hook.stop()
		// A disabled key presented raises dead_key_presented at once.
		k, status, b := l.createKey()
		if status != http.StatusCreated {
			t.Fatalf("create key: %d %s", status, b)
		}
		if status, b := n.call(l.admin, "POST", "/v1/keys/"+k.KeyID+"/disable", nil); status != http.StatusOK {
			t.Fatalf("disable: %d %s", status, b)
		}
		l.mu.Lock()
		l.status[k.KeyID] = string(domain.StatusDisabled)
		l.acked[k.KeyID]++
		l.mu.Unlock()
		if v, status, _, b := l.verify(k.Token); status != http.StatusOK || v.Valid {
			t.Fatalf("verify a disabled key: %d %s", status, b)
		}
		checkFor(t, time.Minute, 20*time.Millisecond, func() error {
			now, err := storedAlerts(js)
			if err != nil {
				return err
			}
			for id, a := range now {
				if a.Rule == alerts.RuleDeadKey && slices.Contains(a.KeyIDs, k.KeyID) {
					probe = id
				}
			}
			if probe == "" {
				return fmt.Errorf("no %s alert for key %s yet", alerts.RuleDeadKey, k.KeyID)
			}
			return nil
		})
		waitFor(time.Until(down.Add(chaosHookDown())))
		// Not delivered yet, and tried: the receiver is down.
		stored, err := storedAlerts(js)
		must(t, err)
		if waiting = hook.missing(stored); !slices.ContainsFunc(waiting, func(s string) bool { return strings.HasSuffix(s, " "+probe) }) {
			t.Fatal("an alert raised while the receiver was down was delivered")
		}
		checkFor(t, time.Minute, 20*time.Millisecond, func() error {
			fams, err := scrape(n)
			if err != nil {
				return err
			}
			if f, _ := sum(fams, "keyledger_webhook_failures_total"); f == 0 {
				return errors.New("no failed webhook attempt counted yet")
			}
			return nil
		})
		at := time.Now()
		hook.start()
		return at
	}, allDelivered)
	byRule := map[string]int{}
	for _, w := range waiting {
		byRule[strings.Fields(w)[0]]++
	}
	t.Logf("alerts waiting when the receiver returned, by rule: %v", byRule)
	r.Fault += fmt.Sprintf(" (%d alerts waiting when it returned)", len(waiting))
	// Alerts raised after the receiver returned are delivered too, and
	// none was given up.
	checkFor(t, 2*time.Minute, 20*time.Millisecond, allDelivered)
	fams, err := scrape(n)
	must(t, err)
	failed, _ := sum(fams, "keyledger_webhook_failures_total")
	if dropped, _ := sum(fams, "keyledger_webhook_dropped_total"); dropped != 0 {
		t.Errorf("%v alerts given up", dropped)
	}
	hook.mu.Lock()
	t.Logf("receiver: %d alerts accepted in %d requests, %d refused signatures; keyledger counted %v failed attempts", len(hook.got), hook.attempts, hook.badSigs, failed)
	if hook.badSigs != 0 {
		t.Errorf("%d webhook requests did not verify", hook.badSigs)
	}
	hook.mu.Unlock()
	l.check(t, backend, database, &r)
	checkRefusals(t, l, r.Fault)
	logChaosTable(t, []chaosResult{r})
}
