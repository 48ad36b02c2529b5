package eventstore_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

var update = flag.Bool("update", false, "rewrite the identities of deploy/nats.conf from eventstore/auth.go")

const natsConf = "../deploy/nats.conf"

// confName is identity's name in deploy/nats.conf's variables.
func confName(identity string) string {
	if identity == eventstore.IdentityNode {
		return "NODE"
	}
	return strings.ToUpper(identity)
}

// nkeyEnv is the environment variable deploy/nats.conf reads identity's
// public key from.
func nkeyEnv(identity string) string { return "KEYLEDGER_NATS_" + confName(identity) + "_NKEY" }

// renderIdentities is deploy/nats.conf's authorization section as
// eventstore.IdentityPermissions describes it.
func renderIdentities() string {
	var b strings.Builder
	b.WriteString("# BEGIN keyledger identities\n")
	b.WriteString("# Generated from eventstore/auth.go by\n")
	b.WriteString("#   go test ./eventstore -run TestDeployNATSConf -update\n")
	b.WriteString("# Change the permissions there, not here.\n")
	b.WriteString("authorization {\n")
	list := func(name string, subjects []string) {
		fmt.Fprintf(&b, "    %s: [\n", name)
		for _, s := range subjects {
			fmt.Fprintf(&b, "      %q\n", s)
		}
		b.WriteString("    ]\n")
	}
	for _, id := range eventstore.Identities() {
		p, _ := eventstore.IdentityPermissions(id)
		fmt.Fprintf(&b, "  %s = {\n", permVar(id))
		list("publish", p.Publish)
		list("subscribe", p.Subscribe)
		b.WriteString("  }\n")
	}
	b.WriteString("  users: [\n")
	for _, id := range eventstore.Identities() {
		fmt.Fprintf(&b, "    {nkey: $%s, permissions: $%s}\n", nkeyEnv(id), permVar(id))
	}
	b.WriteString("  ]\n}\n# END keyledger identities\n")
	return b.String()
}

func permVar(identity string) string { return confName(identity) + "_PERMISSIONS" }

// TestDeployNATSConfMatchesCode holds deploy/nats.conf's permissions equal
// to the ones the embedded server gives the credentials it generates.
func TestDeployNATSConfMatchesCode(t *testing.T) {
	raw, err := os.ReadFile(natsConf)
	if err != nil {
		t.Fatal(err)
	}
	start := bytes.Index(raw, []byte("# BEGIN keyledger identities\n"))
	end := bytes.Index(raw, []byte("# END keyledger identities\n"))
	if start < 0 || end < start {
		t.Fatalf("%s has no keyledger identities section", natsConf)
	}
	end += len("# END keyledger identities\n")
	want := renderIdentities()
	if got := string(raw[start:end]); got != want {
		if !*update {
			t.Fatalf("%s's identities differ from eventstore/auth.go; run with -update\ngot:\n%s\nwant:\n%s", natsConf, got, want)
		}
		out := slices.Concat(raw[:start], []byte(want), raw[end:])
		if err := os.WriteFile(natsConf, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// What the server makes of the file, too.
	seeds := deployIdentities(t)
	// Without one of the public keys the file is refused, not opened up.
	os.Unsetenv(nkeyEnv(eventstore.IdentityAuditor))
	if _, err := server.ProcessConfigFile(natsConf); err == nil {
		t.Errorf("the file loads without $%s", nkeyEnv(eventstore.IdentityAuditor))
	}
	t.Setenv(nkeyEnv(eventstore.IdentityAuditor), seeds[eventstore.IdentityAuditor].pub)
	opts, err := server.ProcessConfigFile(natsConf)
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.Users) != 0 || opts.NoAuthUser != "" || opts.Authorization != "" || opts.Username != "" {
		t.Errorf("the file lets in someone besides the four nkeys")
	}
	if got, want := len(opts.Nkeys), len(eventstore.Identities()); got != want {
		t.Fatalf("%d nkey users, want %d", got, want)
	}
	for _, id := range eventstore.Identities() {
		pub := seeds[id].pub
		i := slices.IndexFunc(opts.Nkeys, func(u *server.NkeyUser) bool { return u.Nkey == pub })
		if i < 0 {
			t.Errorf("no user for %s's key from $%s", id, nkeyEnv(id))
			continue
		}
		want, _ := eventstore.IdentityPermissions(id)
		got := opts.Nkeys[i].Permissions
		if got == nil || got.Publish == nil || got.Subscribe == nil {
			t.Errorf("%s: permissions %+v", id, got)
			continue
		}
		if !slices.Equal(got.Publish.Allow, want.Publish) || len(got.Publish.Deny) != 0 {
			t.Errorf("%s may publish %q (deny %q), want %q", id, got.Publish.Allow, got.Publish.Deny, want.Publish)
		}
		if !slices.Equal(got.Subscribe.Allow, want.Subscribe) || len(got.Subscribe.Deny) != 0 {
			t.Errorf("%s may subscribe %q (deny %q), want %q", id, got.Subscribe.Allow, got.Subscribe.Deny, want.Subscribe)
		}
	}
}

type seedFile struct{ path, pub string }

// deployIdentities makes a key pair per identity, exports the public keys
// as deploy/nats.conf expects and returns the seed files.
func deployIdentities(t *testing.T) map[string]seedFile {
	t.Helper()
	dir := t.TempDir()
	seeds := map[string]seedFile{}
	for _, id := range eventstore.Identities() {
		seeds[id] = writeSeed(t, dir, id)
		t.Setenv(nkeyEnv(id), seeds[id].pub)
	}
	return seeds
}

func writeSeed(t *testing.T, dir, name string) seedFile {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	path := filepath.Join(dir, name+".nk")
	if err := os.WriteFile(path, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	return seedFile{path: path, pub: pub}
}

// TestDeployNATSConf runs a server from deploy/nats.conf itself, lets a
// keyledger node set the ledger up through it, and shows each identity can
// do its job and nothing else.
func TestDeployNATSConf(t *testing.T) {
	seeds := deployIdentities(t)
	opts, err := server.ProcessConfigFile(natsConf)
	if err != nil {
		t.Fatal(err)
	}
	if !opts.SyncAlways {
		t.Errorf("the file does not sync every write")
	}
	// One server of the cluster, on this machine.
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", server.RANDOM_PORT, 0
	opts.Cluster, opts.Routes = server.ClusterOpts{}, nil
	opts.StoreDir = t.TempDir()
	opts.NoSigs, opts.NoLog = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	url := ns.ClientURL()
	node := MustOpenStore(t, func(c *eventstore.Config) {
		c.URL = url
		c.NkeySeedFile = seeds[eventstore.IdentityNode].path
	})
	paths := map[string]string{}
	for id, s := range seeds {
		paths[id] = s.path
	}
	checkIdentities(t, node, url, paths)
}

// TestEmbeddedListenNeedsCredentials opens an embedded server with a
// listener: it generates private credentials once, asks every connection
// for them and gives each identity only its job.
func TestEmbeddedListenNeedsCredentials(t *testing.T) {
	dir := t.TempDir()
	open := func() *eventstore.Store {
		return MustOpenStore(t, func(c *eventstore.Config) {
			c.DataDir = dir
			c.Listen = "127.0.0.1:0"
		})
	}
	s := open()
	if s.ClientURL() == "" {
		t.Fatal("no client url with a listener")
	}
	creds := s.CredentialsDir()
	if creds == "" {
		t.Fatal("no credentials dir")
	}
	if fi, err := os.Stat(creds); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("credentials dir: %v, %v; want mode 0700", fi.Mode().Perm(), err)
	}
	paths := map[string]string{}
	contents := map[string][]byte{}
	for _, id := range eventstore.Identities() {
		p := eventstore.SeedFile(creds, id)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, fi.Mode().Perm())
		}
		paths[id] = p
		if contents[id], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	checkIdentities(t, s, s.ClientURL(), paths)

	// The node's in-process connections authenticate as the node.
	nc, err := s.Connect(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.Stream(testCtx(t), domain.StreamKeys); err != nil {
		t.Errorf("in-process connection: %v", err)
	}
	nc.Close()

	// A restart keeps the credentials, and they still let their holders
	// in.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open()
	if got := s.CredentialsDir(); got != creds {
		t.Errorf("credentials moved from %s to %s", creds, got)
	}
	for _, id := range eventstore.Identities() {
		b, err := os.ReadFile(paths[id])
		if err != nil || !bytes.Equal(b, contents[id]) {
			t.Errorf("%s's seed changed across a restart (%v)", id, err)
		}
	}
	v := dialAs(t, s.ClientURL(), eventstore.IdentityVerifier, paths[eventstore.IdentityVerifier])
	v.read(t, domain.StreamKeys)

	// A seed that others may read is refused, not used.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(paths[eventstore.IdentityAuditor], 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = eventstore.Open(testCtx(t), eventstore.Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger()})
	if err == nil || !strings.Contains(err.Error(), "0600") {
		t.Errorf("open with a readable seed: %v", err)
	}
}

// checkIdentities has the node write to every stream and the snapshot
// bucket, then shows that nobody gets in without credentials and that each
// identity can do its job and nothing else.
func checkIdentities(t *testing.T, node *eventstore.Store, url string, seeds map[string]string) {
	t.Helper()
	ctx := testCtx(t)
	k := newKeyID()
	mustAppend(t, node, 0, created(t, k))
	if _, err := node.PublishAlert(ctx, envelope(t, "", domain.AlertRaised{
		Rule: "brute_force", Severity: domain.SeverityHigh, Incident: "ip:10.0.0.1", Summary: "20 denials in 1m",
	})); err != nil {
		t.Fatalf("node publishes an alert: %v", err)
	}
	if _, err := node.PublishCheckpoint(ctx, envelope(t, "keys", domain.CheckpointPublished{
		Stream: domain.StreamKeys, Size: 1, Root: "00", At: testTime, KeyID: "00", Sig: "00",
	})); err != nil {
		t.Fatalf("node publishes a checkpoint: %v", err)
	}
	// Saving twice replaces a snapshot, which purges the old chunks.
	for i := range 2 {
		if err := node.Snapshots().SaveSnapshot(ctx, "keystate", uint64(i+1), []byte("state")); err != nil {
			t.Fatalf("node saves a snapshot: %v", err)
		}
	}
	if seq, _, found, err := node.Snapshots().LoadSnapshot(ctx, "keystate"); err != nil || !found || seq != 2 {
		t.Fatalf("node loads its snapshot: seq %d found %v err %v", seq, found, err)
	}
	usage := NewUsage(t, node, eventstore.UsageConfig{})
	if err := usage.Publish(ctx, used(t, k)); err != nil {
		t.Fatalf("node publishes usage: %v", err)
	}

	t.Run("NoCredentials", func(t *testing.T) {
		if nc, err := nats.Connect(url); !errors.Is(err, nats.ErrAuthorization) {
			if nc != nil {
				nc.Close()
			}
			t.Errorf("connect without credentials: %v, want %v", err, nats.ErrAuthorization)
		}
		stranger := writeSeed(t, t.TempDir(), "stranger")
		if nc, err := eventstore.Dial(testCtx(t), eventstore.Config{URL: url, NkeySeedFile: stranger.path}); !errors.Is(err, nats.ErrAuthorization) {
			if nc != nil {
				nc.Close()
			}
			t.Errorf("connect with an unknown nkey: %v, want %v", err, nats.ErrAuthorization)
		}
	})

	ledger := []string{
		"keyledger.keys." + k + ".key.created", "keyledger.principals.p1.principal.created",
		"keyledger.roles.r1.role.created", "keyledger.alerts.brute_force.high", "keyledger.checkpoints.keys",
	}
	counts := func() map[string]uint64 {
		m := map[string]uint64{}
		for _, st := range []string{domain.StreamKeys, domain.StreamUsage, domain.StreamAlerts, domain.StreamCheckpoints} {
			m[st] = mustCount(t, node, st)
		}
		return m
	}

	t.Run("Verifier", func(t *testing.T) {
		v := dialAs(t, url, eventstore.IdentityVerifier, seeds[eventstore.IdentityVerifier])
		before := counts()
		for _, subj := range ledger {
			v.publishDenied(t, subj)
		}
		v.publishDenied(t, "keyledger.usage."+k+".revoked")
		if after := counts(); !maps(after, before) {
			t.Errorf("the verifier's refused publishes changed the streams: %v, was %v", after, before)
		}
		// Its job: read KEYS, publish usage.
		if got := v.read(t, domain.StreamKeys); got != "keyledger.keys."+k+".key.created" {
			t.Errorf("verifier read %s from KEYS", got)
		}
		env := used(t, k)
		b, _ := env.Marshal()
		if _, err := v.js.Publish(testCtx(t), env.Subject(), b, jetstream.WithMsgID(env.ID.String())); err != nil {
			t.Errorf("verifier publishes its usage: %v", err)
		}
		if got, want := mustCount(t, node, domain.StreamUsage), before[domain.StreamUsage]+1; got != want {
			t.Errorf("usage holds %d, want %d", got, want)
		}
		v.readDenied(t, domain.StreamUsage)
		v.readDenied(t, domain.StreamAlerts)
	})

	t.Run("Alerts", func(t *testing.T) {
		a := dialAs(t, url, eventstore.IdentityAlerts, seeds[eventstore.IdentityAlerts])
		if got := a.read(t, domain.StreamAlerts); got != "keyledger.alerts.brute_force.high" {
			t.Errorf("alert subscriber read %s", got)
		}
		a.readDenied(t, domain.StreamKeys)
		a.subscribeDenied(t, "keyledger.keys.>")
		before := counts()
		for _, subj := range append(ledger, "keyledger.usage."+k+".used") {
			a.publishDenied(t, subj)
		}
		if after := counts(); !maps(after, before) {
			t.Errorf("the alert subscriber's refused publishes changed the streams: %v, was %v", after, before)
		}
	})

	t.Run("Auditor", func(t *testing.T) {
		au := dialAs(t, url, eventstore.IdentityAuditor, seeds[eventstore.IdentityAuditor])
		for _, st := range []string{domain.StreamKeys, domain.StreamUsage, domain.StreamAlerts, domain.StreamCheckpoints} {
			if got := au.read(t, st); got == "" {
				t.Errorf("auditor read nothing from %s", st)
			}
			stream, err := au.js.Stream(testCtx(t), st)
			if err != nil {
				t.Fatalf("auditor: stream %s: %v", st, err)
			}
			if _, err := stream.GetMsg(testCtx(t), 1); err != nil {
				t.Errorf("auditor gets %s's first message: %v", st, err)
			}
		}
		obs, err := au.js.ObjectStore(testCtx(t), "keyledger-snapshots")
		if err != nil {
			t.Fatalf("auditor opens the snapshot bucket: %v", err)
		}
		if b, err := obs.GetBytes(testCtx(t), "keystate"); err != nil || string(b) != "state" {
			t.Errorf("auditor reads a snapshot: %q, %v", b, err)
		}
		before := counts()
		for _, subj := range append(ledger, "keyledger.usage."+k+".used") {
			au.publishDenied(t, subj)
		}
		if after := counts(); !maps(after, before) {
			t.Errorf("the auditor's refused publishes changed the streams: %v, was %v", after, before)
		}
		au.requestDenied(t, "$JS.API.STREAM.DELETE.KEYS", func(ctx context.Context) error {
			return au.js.DeleteStream(ctx, domain.StreamKeys)
		})
		au.requestDenied(t, "$JS.API.STREAM.UPDATE.KEYS", func(ctx context.Context) error {
			_, err := au.js.UpdateStream(ctx, jetstream.StreamConfig{Name: domain.StreamKeys, Subjects: []string{"keyledger.keys.>"}})
			return err
		})
	})
}

func maps(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// client is a connection as one identity, recording the permission
// violations the server reports.
type client struct {
	identity string
	nc       *nats.Conn
	js       jetstream.JetStream
	errs     chan error
}

func dialAs(t *testing.T, url, identity, seed string) *client {
	t.Helper()
	c := &client{identity: identity, errs: make(chan error, 1000)}
	nc, err := eventstore.Dial(testCtx(t), eventstore.Config{URL: url, NkeySeedFile: seed, Identity: identity},
		nats.Name("test-"+identity),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case c.errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatalf("connect as %s: %v", identity, err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	if c.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return c
}

// violation waits until the server has refused something of c on a
// subject containing part.
func (c *client) violation(t *testing.T, part string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case err := <-c.errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), part) {
				return
			}
		case <-timeout:
			t.Fatalf("%s: no permission violation on %s", c.identity, part)
		}
	}
}

// publishDenied publishes to subject, which the server must refuse.
func (c *client) publishDenied(t *testing.T, subject string) {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(`{"forged":true}`)
	m.Header.Set(nats.MsgIdHdr, "forged-"+subject)
	if err := c.nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	if err := c.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c.violation(t, `Publish to "`+subject+`"`)
}

// subscribeDenied subscribes to subject, which the server must refuse.
func (c *client) subscribeDenied(t *testing.T, subject string) {
	t.Helper()
	sub, err := c.nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := c.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c.violation(t, `Subscription to "`+subject+`"`)
}

// requestDenied runs f, which must be refused on a subject containing part.
// A refused request gets no answer, so f's context ends once the server
// has reported the violation.
func (c *client) requestDenied(t *testing.T, part string, f func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	c.violation(t, part)
	cancel()
	if err := <-done; err == nil {
		t.Errorf("%s: %s succeeded", c.identity, part)
	}
}

// read returns the subject of stream's first message, read through an
// ordered consumer as a replica would.
func (c *client) read(t *testing.T, stream string) string {
	t.Helper()
	cons, err := c.js.OrderedConsumer(testCtx(t), stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("%s: consumer on %s: %v", c.identity, stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		t.Fatalf("%s: read %s: %v", c.identity, stream, err)
	}
	defer it.Stop()
	msg, err := it.Next(jetstream.NextMaxWait(20 * time.Second))
	if err != nil {
		t.Fatalf("%s: read %s: %v", c.identity, stream, err)
	}
	return msg.Subject()
}

// readDenied shows c can neither look at stream nor read it.
func (c *client) readDenied(t *testing.T, stream string) {
	t.Helper()
	c.requestDenied(t, "$JS.API.STREAM.INFO."+stream, func(ctx context.Context) error {
		_, err := c.js.Stream(ctx, stream)
		return err
	})
	c.requestDenied(t, "$JS.API.CONSUMER.CREATE."+stream, func(ctx context.Context) error {
		_, err := c.js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy})
		return err
	})
	c.requestDenied(t, "$JS.API.DIRECT.GET."+stream, func(ctx context.Context) error {
		_, err := c.nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+stream, []byte(`{"seq":1}`))
		return err
	})
}

// TestEmbeddedDefaultListensNowhere: without Listen the embedded server has
// no door at all, yet the store works through its in-process connection.
func TestEmbeddedDefaultListensNowhere(t *testing.T) {
	before := listeningSockets(t)
	s := MustOpenStore(t)
	if got := s.ClientURL(); got != "" {
		t.Errorf("client url %q without a listener", got)
	}
	if got := s.CredentialsDir(); got != "" {
		t.Errorf("credentials %q without a listener", got)
	}
	if after := listeningSockets(t); len(after) != len(before) {
		t.Errorf("the process listens on %d TCP sockets after Open, %d before", len(after), len(before))
	}

	k := newKeyID()
	seq := mustAppend(t, s, 0, created(t, k))
	got, err := s.Load(testCtx(t), domain.KindKey, k)
	if err != nil || len(got) != 1 || got[0].Seq != seq {
		t.Fatalf("load through the in-process connection: %v, %v", got, err)
	}
	// Extra connections go in-process too.
	nc, err := s.Connect(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(testCtx(t), domain.StreamKeys)
	if err != nil || st.CachedInfo().State.Msgs != 1 {
		t.Fatalf("stream through another in-process connection: %v", err)
	}
}

// listeningSockets returns the inodes of the TCP sockets this process
// listens on, from /proc on Linux; nil elsewhere.
func listeningSockets(t *testing.T) []string {
	t.Helper()
	if runtime.GOOS != "linux" {
		return nil
	}
	mine := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			mine[strings.TrimSuffix(inode, "]")] = true
		}
	}
	var out []string
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue // No IPv6 on this machine.
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local remote st ... uid timeout inode
			if len(f) > 9 && f[3] == "0A" && mine[f[9]] {
				out = append(out, f[9])
			}
		}
	}
	return out
}
