package command_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/command"
	"github.com/keyledger/keyledger/projections/keystate"
)

// node is the command side of one keyledger node: a real embedded
// JetStream, the key-state projection following KEYS, and the service.
type node struct {
	store *eventstore.Store
	state *keystate.Projection
	svc   *command.Service
}

func mustStartNode(tb testing.TB, cfg command.Config) *node {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store, err := eventstore.Open(ctx, eventstore.Config{DataDir: tb.TempDir(), NoSync: true, Logger: log})
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	n := &node{store: store, state: keystate.New()}
	sub, err := store.Subscribe(context.Background(), domain.StreamKeys, 1, func(e domain.Envelope) error {
		n.state.Apply(e)
		return nil
	})
	if err != nil {
		tb.Fatalf("subscribe: %v", err)
	}
	tb.Cleanup(func() { sub.Stop(); _ = store.Close() })
	n.svc = command.New(store, n.state, cfg)
	return n
}

func ctxFor(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// actor creates a principal with roles and returns it acting through its
// first credential.
func (n *node) actor(tb testing.TB, maxKeys int, roles ...string) domain.Actor {
	tb.Helper()
	p, k, _, err := n.svc.CreatePrincipal(ctxFor(tb), domain.CreatePrincipal{
		Meta: domain.Meta{Actor: "test"}, Name: "p" + uuid.NewString(), Roles: roles, MaxKeys: maxKeys,
	}, 0)
	if err != nil {
		tb.Fatalf("create principal: %v", err)
	}
	return domain.Actor{Principal: p, Key: k, Permissions: n.state.PrincipalPermissions(p.ID)}
}

func meta(a domain.Actor) domain.Meta { return domain.Meta{Actor: a.ID()} }

// race runs f from n goroutines released at once and returns their errors.
func race(n int, f func(i int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = f(i)
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

func reasons(errs []error) map[string]int {
	out := map[string]int{}
	for _, err := range errs {
		out[domain.ErrorReason(err)]++
	}
	return out
}

// TestPlanLimitHoldsUnderConcurrency: 20 concurrent creates against a limit
// of 5 (the first credential is one of them) give exactly 5 active keys;
// the rest get plan_limit_reached.
func TestPlanLimitHoldsUnderConcurrency(t *testing.T) {
	n := mustStartNode(t, command.Config{})
	a := n.actor(t, 5, domain.RoleKeyAdmin)
	errs := race(20, func(i int) error {
		_, _, err := n.svc.CreateKey(ctxFor(t), a, domain.CreateKey{Meta: meta(a), Name: fmt.Sprintf("k%d", i)})
		return err
	})
	got := reasons(errs)
	if got[""] != 4 || got["plan_limit_reached"] != 16 || len(got) != 2 {
		t.Fatalf("outcomes %v, want 4 created (plus the credential) and 16 plan_limit_reached", got)
	}
	if got := n.state.ActiveKeys(a.Principal.ID); got != 5 {
		t.Fatalf("principal has %d active keys, want 5", got)
	}
	// A revocation makes room for exactly one more.
	keys, _ := n.state.List(keystate.Filter{Owner: a.Principal.ID, Now: time.Now(), Limit: 10})
	if _, _, err := n.svc.ChangeKey(ctxFor(t), a, keys[1].ID, domain.RevokeKey{Meta: meta(a), Reason: "room"}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	got = reasons(race(5, func(i int) error {
		_, _, err := n.svc.CreateKey(ctxFor(t), a, domain.CreateKey{Meta: meta(a), Name: "again"})
		return err
	}))
	if got[""] != 1 || got["plan_limit_reached"] != 4 {
		t.Fatalf("after one revocation: outcomes %v, want 1 created and 4 plan_limit_reached", got)
	}
}

// TestPrincipalAndCredentialAreOneAppend: a principal is stored with its
// first credential in one atomic append, and a credential that cannot be
// issued leaves no principal behind.
func TestPrincipalAndCredentialAreOneAppend(t *testing.T) {
	n := mustStartNode(t, command.Config{})
	ctx := ctxFor(t)
	before, _ := n.store.LastSeq(ctx, domain.StreamKeys)
	_, _, _, err := n.svc.CreatePrincipal(ctx, domain.CreatePrincipal{Meta: domain.Meta{Actor: "test"}, Name: "bad", Roles: []string{domain.RoleKeyAdmin}}, domain.MaxLifetimeDays+1)
	if domain.ErrorReason(err) != "lifetime_out_of_range" {
		t.Fatalf("credential with a bad lifetime: err = %v, want lifetime_out_of_range", err)
	}
	if after, _ := n.store.LastSeq(ctx, domain.StreamKeys); after != before {
		t.Fatalf("KEYS moved from %d to %d although the principal's credential was refused", before, after)
	}
	if got := len(n.state.Principals()); got != 0 {
		t.Fatalf("%d principals stored without a credential", got)
	}

	p, k, tok, err := n.svc.CreatePrincipal(ctx, domain.CreatePrincipal{Meta: domain.Meta{Actor: "test"}, Name: "ok", Roles: []string{domain.RoleKeyAdmin}}, 0)
	if err != nil {
		t.Fatalf("create principal: %v", err)
	}
	if k.Owner != p.ID || tok == "" {
		t.Fatalf("credential %+v (token %q) does not belong to principal %s", k, tok, p.ID)
	}
	if k.Version != p.Version+1 {
		t.Fatalf("principal at %d and its credential at %d: not one append", p.Version, k.Version)
	}
	if !domain.Covers(k.Permissions, domain.PermKeyCreate) {
		t.Fatalf("credential permissions %v lack the role's", k.Permissions)
	}
}

// TestConcurrentUpdatesAllLand: 20 concurrent updates of one key all land,
// each decided again on the state its losing attempt missed.
func TestConcurrentUpdatesAllLand(t *testing.T) {
	n := mustStartNode(t, command.Config{})
	a := n.actor(t, 0, domain.RoleKeyAdmin)
	k, _, err := n.svc.CreateKey(ctxFor(t), a, domain.CreateKey{Meta: meta(a), Name: "shared"})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	errs := race(20, func(i int) error {
		c := fmt.Sprintf("comment %d", i)
		_, _, err := n.svc.ChangeKey(ctxFor(t), a, k.ID, domain.UpdateKey{Meta: meta(a), Comments: &c})
		return err
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
	}
	envs, err := n.store.Load(ctxFor(t), domain.KindKey, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range envs {
		if e.Type != domain.TypeKeyUpdated {
			continue
		}
		ev, _ := e.Decode()
		seen[*ev.(domain.KeyUpdated).Comments] = true
	}
	if len(seen) != 20 {
		t.Fatalf("%d distinct updates stored, want 20", len(seen))
	}
}

// TestConcurrentRevokesOneWins: 20 concurrent revocations store one
// revocation; the other 19 answer key_revoked.
func TestConcurrentRevokesOneWins(t *testing.T) {
	n := mustStartNode(t, command.Config{})
	a := n.actor(t, 0, domain.RoleKeyAdmin)
	k, _, err := n.svc.CreateKey(ctxFor(t), a, domain.CreateKey{Meta: meta(a), Name: "doomed"})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	got := reasons(race(20, func(i int) error {
		_, _, err := n.svc.ChangeKey(ctxFor(t), a, k.ID, domain.RevokeKey{Meta: meta(a), Reason: fmt.Sprintf("r%d", i)})
		return err
	}))
	if got[""] != 1 || got["key_revoked"] != 19 {
		t.Fatalf("outcomes %v, want 1 revocation and 19 key_revoked", got)
	}
	envs, _ := n.store.Load(ctxFor(t), domain.KindKey, k.ID)
	revocations := 0
	for _, e := range envs {
		if e.Type == domain.TypeKeyRevoked {
			revocations++
		}
	}
	if revocations != 1 {
		t.Fatalf("%d revocations stored, want 1", revocations)
	}
}

// TestChangeKeyAuthorizes: the service applies the same rule as the API, on
// the state it decides on.
func TestChangeKeyAuthorizes(t *testing.T) {
	n := mustStartNode(t, command.Config{})
	alice := n.actor(t, 0, domain.RoleKeyAdmin)
	bob := n.actor(t, 0, domain.RoleKeyAdmin)
	k, _, err := n.svc.CreateKey(ctxFor(t), alice, domain.CreateKey{Meta: meta(alice), Name: "alice's"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.svc.ChangeKey(ctxFor(t), bob, k.ID, domain.RevokeKey{Meta: meta(bob), Reason: "x"}); domain.ErrorReason(err) != "key_not_found" {
		t.Fatalf("bob revoking alice's key: err = %v, want key_not_found", err)
	}
	if got, _ := n.state.Key(k.ID); !got.RevokedAt.IsZero() {
		t.Fatal("alice's key was revoked by bob")
	}
	_, tok, err := n.svc.ChangeKey(ctxFor(t), alice, k.ID, domain.RegenerateKey{Meta: meta(alice), Rotate: true})
	if err != nil || tok == "" {
		t.Fatalf("rotate: token %q, err %v", tok, err)
	}
	parsed, err := domain.ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := n.state.Key(k.ID); !domain.SecretMatches(parsed.Secret, got.SecretHash) {
		t.Fatal("the rotated token does not match the stored hash")
	}
}

// TestLastCredentialUnderRace: a principal revoking its two credentials at
// once keeps one of them (last_credential for the other).
func TestLastCredentialUnderRace(t *testing.T) {
	n := mustStartNode(t, command.Config{})
	alice := n.actor(t, 0, domain.RoleKeyAdmin)
	second, _, err := n.svc.CreateKey(ctxFor(t), alice, domain.CreateKey{Meta: meta(alice), Name: "second"})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{alice.Key.ID, second.ID}
	errs := race(2, func(i int) error {
		_, _, err := n.svc.ChangeKey(ctxFor(t), alice, ids[i], domain.RevokeKey{Meta: meta(alice), Reason: "both"})
		return err
	})
	refused := 0
	for _, err := range errs {
		switch domain.ErrorReason(err) {
		case "":
		case "last_credential":
			refused++
		default:
			t.Fatalf("revoke: %v", err)
		}
	}
	if refused != 1 || n.state.Credentials(alice.Principal.ID, time.Now(), "") != 1 {
		t.Fatalf("%d refused, %d credentials left; want 1 and 1", refused, n.state.Credentials(alice.Principal.ID, time.Now(), ""))
	}
}
