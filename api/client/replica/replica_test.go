package replica_test

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api/client"
	"github.com/keyledger/keyledger/api/client/clienttest"
	"github.com/keyledger/keyledger/api/client/replica"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

func testCtx(tb testing.TB) context.Context {
	tb.Helper()
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return c
}

type world struct {
	d          *clienttest.Deployment
	admin      *client.Client
	adminToken string
}

func newWorld(tb testing.TB) *world {
	tb.Helper()
	d := clienttest.Start(tb)
	root, err := client.New(d.Node.HTTP.URL, d.Root)
	if err != nil {
		tb.Fatal(err)
	}
	adm, err := root.CreatePrincipal(testCtx(tb), client.CreatePrincipalRequest{Name: "payments", Roles: []string{domain.RoleKeyAdmin}, MaxKeys: 1000})
	if err != nil {
		tb.Fatal(err)
	}
	return &world{d: d, admin: root.WithToken(adm.Credential.Token), adminToken: adm.Credential.Token}
}

// reconnect points the admin client at the deployment's current node.
func (w *world) reconnect(tb testing.TB) {
	c, err := client.New(w.d.Node.HTTP.URL, w.adminToken)
	if err != nil {
		tb.Fatal(err)
	}
	w.admin = c
}

func openReplica(tb testing.TB, d *clienttest.Deployment, mod func(*replica.Config)) *replica.Replica {
	tb.Helper()
	cfg := replica.Config{NATS: d.VerifierNATS(), Writers: &d.Writers, Service: "gateway", Logger: clienttest.Logger()}
	if mod != nil {
		mod(&cfg)
	}
	r, err := replica.Open(testCtx(tb), cfg)
	if err != nil {
		tb.Fatalf("open replica: %v", err)
	}
	tb.Cleanup(func() { _ = r.Close(context.Background()) })
	return r
}

// eventually polls cond until it holds (10 s at most).
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not after 10s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (w *world) code(tb testing.TB, r *replica.Replica, token string) string {
	tb.Helper()
	res, err := r.VerifyRequest(testCtx(tb), replica.Request{Token: token})
	if err != nil {
		tb.Fatal(err)
	}
	return res.Code
}

// TestReplicaFollowsKeys: a replica verifies a key created after it
// started, rejects it soon after it is revoked on the server, and records
// every verification in USAGE.
func TestReplicaFollowsKeys(t *testing.T) {
	w := newWorld(t)
	r := openReplica(t, w.d, nil)
	k, err := w.admin.CreateKey(testCtx(t), client.CreateKeyRequest{Name: "late"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica sees the new key", func() bool { _, ok := r.Key(k.KeyID); return ok })
	if got := w.code(t, r, k.Token); got != domain.OutcomeValid {
		t.Fatalf("new key verifies %s", got)
	}
	v, err := r.Verify(testCtx(t), client.VerifyRequest{Token: k.Token, IP: "10.0.0.1"})
	if err != nil || !v.Valid || v.KeyID != k.KeyID {
		t.Fatalf("Verify: %+v %v", v, err)
	}
	usageBefore, err := w.d.NATS.Count(testCtx(t), domain.StreamUsage)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.admin.Revoke(testCtx(t), k.KeyID, "leaked"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica rejects the revoked key", func() bool { return r.Check(replica.Request{Token: k.Token}).Code == domain.OutcomeRevoked })
	if got := w.code(t, r, k.Token); got != domain.OutcomeRevoked {
		t.Errorf("revoked key verifies %s", got)
	}
	// The durable verification is stored when VerifyRequest returns.
	n, err := w.d.NATS.Count(testCtx(t), domain.StreamUsage)
	if err != nil {
		t.Fatal(err)
	}
	if n <= usageBefore {
		t.Errorf("USAGE holds %d messages, before the revoked verification %d", n, usageBefore)
	}
	if r.Forged() != 0 {
		t.Errorf("replica refused %d events", r.Forged())
	}
}

// TestReplicaOutlivesTheNode: with the node down and NATS up the replica
// keeps verifying (and recording usage); once a node is back it catches
// up with what that node changes.
func TestReplicaOutlivesTheNode(t *testing.T) {
	w := newWorld(t)
	r := openReplica(t, w.d, nil)
	k, err := w.admin.CreateKey(testCtx(t), client.CreateKeyRequest{Name: "k"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica sees the key", func() bool { _, ok := r.Key(k.KeyID); return ok })

	w.d.StopNode()
	for range 20 {
		if got := w.code(t, r, k.Token); got != domain.OutcomeValid {
			t.Fatalf("with the node down the key verifies %s", got)
		}
	}
	if _, err := w.admin.Revoke(testCtx(t), k.KeyID, "x"); client.ErrorCode(err) != client.CodeUnreachable {
		t.Fatalf("revoke with the node down: %v", err)
	}

	w.d.StartNode()
	w.reconnect(t)
	if _, err := w.admin.Revoke(testCtx(t), k.KeyID, "back"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica sees the revocation", func() bool { return r.Check(replica.Request{Token: k.Token}).Code == domain.OutcomeRevoked })
	if err := r.Err(); err != nil {
		t.Errorf("replica stopped: %v", err)
	}
}

// TestReplicaRefusesUntrustedWriters: a replica that trusts another writer
// applies nothing the node wrote.
func TestReplicaRefusesUntrustedWriters(t *testing.T) {
	w := newWorld(t)
	other := domain.Writers{}.Trust("ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "stranger")
	r := openReplica(t, w.d, func(c *replica.Config) { c.Writers = &other })
	if r.Forged() == 0 {
		t.Fatal("replica applied events of an untrusted writer")
	}
	if _, err := replica.Open(testCtx(t), replica.Config{NATS: w.d.VerifierNATS()}); domain.ErrorCode(err) != domain.EINVALID {
		t.Errorf("no writers: %v", err)
	}
}

// TestRevocationPropagation measures how long a revocation takes from the
// revoke call on the server to the replica applying it, over 100 keys,
// and logs p50 and p99.
func TestRevocationPropagation(t *testing.T) {
	w := newWorld(t)
	var mu sync.Mutex
	seen := map[string]time.Time{}
	r := openReplica(t, w.d, func(c *replica.Config) {
		c.OnApply = func(env domain.Envelope) {
			if env.Type == domain.TypeKeyRevoked {
				mu.Lock()
				seen[env.KeyID] = time.Now()
				mu.Unlock()
			}
		}
	})
	const n = 100
	keys := make([]client.CreatedKey, n)
	for i := range keys {
		k, err := w.admin.CreateKey(testCtx(t), client.CreateKeyRequest{Name: "p"})
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
	}
	eventually(t, "replica has the keys", func() bool { _, ok := r.Key(keys[n-1].KeyID); return ok })
	lat := make([]time.Duration, 0, n)
	for _, k := range keys {
		start := time.Now()
		if _, err := w.admin.Revoke(testCtx(t), k.KeyID, "p"); err != nil {
			t.Fatal(err)
		}
		var at time.Time
		eventually(t, "replica applies the revocation", func() bool {
			mu.Lock()
			defer mu.Unlock()
			at = seen[k.KeyID]
			return !at.IsZero()
		})
		lat = append(lat, at.Sub(start))
	}
	slices.Sort(lat)
	t.Logf("revocation server->replica over %d revocations: p50 %v p99 %v max %v (from the revoke call to the replica applying it)",
		n, lat[n/2], lat[n*99/100], lat[n-1])
}

// BenchmarkReplicaCheck is the hot path: lookup and checks from the local
// state, without the usage event.
func BenchmarkReplicaCheck(b *testing.B) {
	w := newWorld(b)
	r := openReplica(b, w.d, nil)
	k, err := w.admin.CreateKey(testCtx(b), client.CreateKeyRequest{Name: "bench", AllowedIPs: []string{"10.0.0.0/8"}})
	if err != nil {
		b.Fatal(err)
	}
	eventually(b, "replica sees the key", func() bool { _, ok := r.Key(k.KeyID); return ok })
	req := replica.Request{Token: k.Token, IP: netip.MustParseAddr("10.1.2.3")}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if r.Check(req).Code != domain.OutcomeValid {
			b.Fatal("not valid")
		}
	}
}

// BenchmarkReplicaVerify is a whole verification with its usage event, from
// concurrent callers: durable (each waits for the group commit) against
// async (a bounded buffer).
func BenchmarkReplicaVerify(b *testing.B) {
	for _, mode := range []struct {
		name  string
		async bool
	}{{"durable", false}, {"async", true}} {
		b.Run(mode.name, func(b *testing.B) {
			w := newWorld(b)
			r := openReplica(b, w.d, func(c *replica.Config) { c.Usage = eventstore.UsageConfig{Async: mode.async} })
			k, err := w.admin.CreateKey(testCtx(b), client.CreateKeyRequest{Name: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			eventually(b, "replica sees the key", func() bool { _, ok := r.Key(k.KeyID); return ok })
			req := replica.Request{Token: k.Token}
			b.ReportAllocs()
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					if _, err := r.VerifyRequest(ctx, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// TestReplicaFollowsOwnerRoles: a key's effective permissions on a replica
// are those its owner holds now. Carol's orders.write key stops verifying
// for orders.write as soon as the replica applies the removal of her role.
func TestReplicaFollowsOwnerRoles(t *testing.T) {
	w := newWorld(t)
	root, err := client.New(w.d.Node.HTTP.URL, w.d.Root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.CreateRole(testCtx(t), "orders", []string{"orders.write"}, ""); err != nil {
		t.Fatal(err)
	}
	carol, err := root.CreatePrincipal(testCtx(t), client.CreatePrincipalRequest{Name: "carol", Roles: []string{domain.RoleKeyAdmin, "orders"}})
	if err != nil {
		t.Fatal(err)
	}
	k, err := root.WithToken(carol.Credential.Token).CreateKey(testCtx(t), client.CreateKeyRequest{Name: "orders", Permissions: []string{"orders.write"}})
	if err != nil {
		t.Fatal(err)
	}
	r := openReplica(t, w.d, nil)
	check := func() string { return r.Check(replica.Request{Token: k.Token, Permission: "orders.write"}).Code }
	eventually(t, "replica verifies carol's key", func() bool { return check() == domain.OutcomeValid })
	if _, err := root.UpdatePrincipal(testCtx(t), carol.ID, client.PrincipalUpdate{Roles: &[]string{domain.RoleKeyAdmin}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica refuses orders.write once carol lost it", func() bool { return check() == domain.OutcomeInsufficientPermissions })
}
