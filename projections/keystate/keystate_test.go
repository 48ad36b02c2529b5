package keystate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
)

var t0 = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// feed decides commands against the projection and applies their events
// with consecutive sequence numbers, as the KEYS subscription would.
type feed struct {
	p   *keystate.Projection
	seq uint64
}

func (f *feed) do(t testing.TB, id string, c domain.Command) {
	t.Helper()
	k, _ := f.p.Key(id)
	envs, err := domain.Decide(k, c, t0, uuid.New)
	if err != nil {
		t.Fatalf("%T: %v", c, err)
	}
	for _, e := range envs {
		f.seq++
		e.Seq = f.seq
		f.p.Apply(e)
	}
}

// reader creates a role "reader" with orders.read and a principal holding
// it, and returns the principal's id.
func (f *feed) reader(t testing.TB) string {
	t.Helper()
	m := domain.Meta{Actor: "root"}
	id := uuid.Must(uuid.NewV7()).String()
	r, _ := f.p.Role("reader")
	f.apply(t)(domain.DecideRole(r, "reader", domain.CreateRole{Meta: m, Name: "reader", Permissions: []string{"orders.read"}}, t0, uuid.New))
	f.apply(t)(domain.DecidePrincipal(domain.Principal{}, domain.CreatePrincipal{Meta: m, PrincipalID: id, Name: "reader", Roles: []string{"reader"}}, f.p.RoleExists, t0, uuid.New))
	return id
}

// apply returns a function that applies a decision's events in order.
func (f *feed) apply(t testing.TB) func([]domain.Envelope, error) {
	return func(envs []domain.Envelope, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range envs {
			f.seq++
			e.Seq = f.seq
			f.p.Apply(e)
		}
	}
}

// TestVerifyFollowsOwnerRoles: a key's effective permissions are those its
// owner holds now; a role taken away, changed or deleted takes effect on
// the key's next verification, and a snapshot restores the same.
func TestVerifyFollowsOwnerRoles(t *testing.T) {
	p := keystate.New()
	f := &feed{p: p}
	owner := f.reader(t)
	id := newKeyID()
	s := domain.Secret{7}
	f.do(t, id, createCmd(id, owner, "k", s))
	tok := domain.FormatToken(uuid.MustParse(id), s)
	v := &keystate.Verifier{State: p, Now: func() time.Time { return t0.Add(time.Hour) }, NewID: uuid.New}
	want := func(code string) {
		t.Helper()
		if got := v.Check(keystate.Request{Token: tok, Permission: "orders.read"}, v.Now()).Code; got != code {
			t.Fatalf("verify orders.read = %s, want %s", got, code)
		}
	}
	m := domain.Meta{Actor: "root"}
	want(domain.OutcomeValid)
	r, _ := p.Role("reader")
	f.apply(t)(domain.DecideRole(r, "reader", domain.UpdateRole{Meta: m, Permissions: []string{"orders.list"}}, t0, uuid.New))
	want(domain.OutcomeInsufficientPermissions)
	r, _ = p.Role("reader")
	f.apply(t)(domain.DecideRole(r, "reader", domain.UpdateRole{Meta: m, Permissions: []string{"orders.*"}}, t0, uuid.New))
	want(domain.OutcomeValid)
	_, snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	pr, _ := p.Principal(owner)
	f.apply(t)(domain.DecidePrincipal(pr, domain.UpdatePrincipal{Meta: m, Roles: &[]string{domain.RoleVerifier}}, p.RoleExists, t0, uuid.New))
	want(domain.OutcomeInsufficientPermissions)
	if err := p.Restore(snap); err != nil {
		t.Fatal(err)
	}
	want(domain.OutcomeValid)
	r, _ = p.Role("reader")
	f.apply(t)(domain.DecideRole(r, "reader", domain.DeleteRole{Meta: m}, t0, uuid.New))
	want(domain.OutcomeInsufficientPermissions)
}

func newKeyID() string { return uuid.Must(uuid.NewV7()).String() }

func createCmd(id, owner, name string, secret domain.Secret) domain.CreateKey {
	return domain.CreateKey{Meta: domain.Meta{Actor: owner}, KeyID: id, Owner: owner, Name: name,
		Permissions: []string{"orders.read"}, LifetimeDays: 10, SecretHash: domain.HashSecret(secret)}
}

func TestApplyWaitForAndList(t *testing.T) {
	p := keystate.New()
	f := &feed{p: p}
	var ids []string
	for i := range 5 {
		id := newKeyID()
		ids = append(ids, id)
		owner := "alice"
		if i%2 == 1 {
			owner = "bob"
		}
		f.do(t, id, createCmd(id, owner, fmt.Sprintf("key %d", i), domain.Secret{byte(i)}))
	}
	f.do(t, ids[1], domain.RevokeKey{Meta: domain.Meta{Actor: "bob"}, Reason: "x"})
	f.do(t, ids[2], domain.DisableKey{Meta: domain.Meta{Actor: "alice"}})
	f.do(t, ids[4], domain.DeleteKey{Meta: domain.Meta{Actor: "alice"}})

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := p.WaitFor(ctx, f.seq); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(time.Hour)
	count := func(fl keystate.Filter) int {
		fl.Now = now
		ks, _ := p.List(fl)
		return len(ks)
	}
	for name, c := range map[string]struct {
		f    keystate.Filter
		want int
	}{
		"default hides deleted": {keystate.Filter{}, 4},
		"all":                   {keystate.Filter{Status: "all"}, 5},
		"active":                {keystate.Filter{Status: "active"}, 2},
		"revoked":               {keystate.Filter{Status: "revoked"}, 1},
		"disabled":              {keystate.Filter{Status: "disabled"}, 1},
		"expired":               {keystate.Filter{Status: "expired"}, 0},
		"owner":                 {keystate.Filter{Owner: "bob", Status: "all"}, 2},
		"query":                 {keystate.Filter{Query: "KEY 3"}, 1},
	} {
		if got := count(c.f); got != c.want {
			t.Errorf("%s: %d keys, want %d", name, got, c.want)
		}
	}
	ks, _ := p.List(keystate.Filter{Status: "expired", Now: t0.Add(11 * 24 * time.Hour)})
	if len(ks) != 2 {
		t.Errorf("expired after lifetime: %d keys, want 2", len(ks))
	}
	// Pagination walks every key once, in id order.
	var seen []string
	after := ""
	for {
		page, more := p.List(keystate.Filter{Status: "all", After: after, Limit: 2, Now: now})
		for _, k := range page {
			seen = append(seen, k.ID)
		}
		if !more {
			break
		}
		after = page[len(page)-1].ID
	}
	if strings.Join(seen, ",") != strings.Join(ids, ",") {
		t.Fatalf("pages = %v, want %v", seen, ids)
	}
	if got := p.ActiveKeys("alice"); got != 2 {
		t.Fatalf("alice active keys = %d, want 2", got)
	}
}

func TestWaitForBlocksUntilApplied(t *testing.T) {
	p := keystate.New()
	f := &feed{p: p}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- p.WaitFor(ctx, 1)
	}()
	select {
	case err := <-done:
		t.Fatalf("WaitFor returned before the event was applied: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	id := newKeyID()
	f.do(t, id, createCmd(id, "alice", "k", domain.Secret{1}))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.WaitFor(ctx, 99); err == nil {
		t.Fatal("WaitFor on a cancelled context returned nil")
	}
}

func TestSnapshotRestore(t *testing.T) {
	p := keystate.New()
	f := &feed{p: p}
	id := newKeyID()
	f.do(t, id, createCmd(id, "alice", "k", domain.Secret{1}))
	f.do(t, id, domain.RegenerateKey{Meta: domain.Meta{Actor: "alice"}, Rotate: true, SecretHash: domain.HashSecret(domain.Secret{2}), GracePeriod: time.Hour})
	seq, b, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), fmt.Sprintf("%x", domain.Secret{1})) {
		t.Fatal("snapshot holds a secret")
	}
	q := keystate.New()
	if err := q.Restore(b); err != nil {
		t.Fatal(err)
	}
	if got := q.Applied(); got != seq || seq != 2 {
		t.Fatalf("applied = %d, snapshot seq %d", got, seq)
	}
	a, _ := p.Key(id)
	c, ok := q.Key(id)
	if !ok || fmt.Sprintf("%+v", a) != fmt.Sprintf("%+v", c) {
		t.Fatalf("restored key differs:\n%+v\n%+v", a, c)
	}
	// Replayed events at or below the snapshot are ignored.
	before, _ := q.Key(id)
	q.Apply(domain.Envelope{Seq: 1})
	after, _ := q.Key(id)
	if before.Events != after.Events {
		t.Fatal("an event below the applied sequence changed state")
	}
	if err := q.Restore([]byte(`{"version":99}`)); err == nil {
		t.Fatal("restore accepted a foreign snapshot version")
	}
}

func TestConcurrentReadsDuringApply(t *testing.T) {
	p := keystate.New()
	f := &feed{p: p}
	id := newKeyID()
	f.do(t, id, createCmd(id, "alice", "k", domain.Secret{1}))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					p.Key(id)
					p.List(keystate.Filter{Now: t0})
				}
			}
		}()
	}
	for i := range 200 {
		f.do(t, id, domain.UpdateKey{Meta: domain.Meta{Actor: "alice"}, Comments: ptr(fmt.Sprint(i))})
	}
	close(stop)
	wg.Wait()
	if k, _ := p.Key(id); k.Comments != "199" || k.Events != 201 {
		t.Fatalf("final state %q after %d events", k.Comments, k.Events)
	}
}

func ptr[T any](v T) *T { return &v }

// TestPrincipalPermissionsFollowChanges checks that the cached permissions
// of a principal change as soon as its roles, or a role it holds, change.
func TestPrincipalPermissionsFollowChanges(t *testing.T) {
	p := keystate.New()
	var seq uint64
	apply := func(envs []domain.Envelope, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range envs {
			seq++
			e.Seq = seq
			p.Apply(e)
		}
	}
	m := domain.Meta{Actor: "root"}
	svc := uuid.Must(uuid.NewV7()).String()
	role := func(name string, cmd domain.Command) {
		t.Helper()
		r, _ := p.Role(name)
		apply(domain.DecideRole(r, name, cmd, t0, uuid.New))
	}
	principal := func(id string, cmd domain.Command) {
		t.Helper()
		pr, _ := p.Principal(id)
		apply(domain.DecidePrincipal(pr, cmd, p.RoleExists, t0, uuid.New))
	}
	want := func(perms ...string) {
		t.Helper()
		// Twice: the second answer comes from the cache.
		for range 2 {
			if got := p.PrincipalPermissions(svc); strings.Join(got, " ") != strings.Join(perms, " ") {
				t.Fatalf("permissions %q, want %q", got, perms)
			}
		}
	}
	role("reader", domain.CreateRole{Meta: m, Name: "reader", Permissions: []string{"orders.read"}})
	principal(svc, domain.CreatePrincipal{Meta: m, PrincipalID: svc, Name: "svc", Roles: []string{"reader"}})
	want("orders.read")
	role("reader", domain.UpdateRole{Meta: m, Permissions: []string{"orders.read", "orders.write"}})
	want("orders.read", "orders.write")
	principal(svc, domain.UpdatePrincipal{Meta: m, Roles: &[]string{domain.RoleVerifier}})
	want(slices.Sorted(slices.Values(domain.BuiltinRoles[domain.RoleVerifier]))...)
	role("writer", domain.CreateRole{Meta: m, Name: "writer", Permissions: []string{"orders.write"}})
	principal(svc, domain.UpdatePrincipal{Meta: m, Roles: &[]string{"reader", "writer"}})
	want("orders.read", "orders.write")
	role("reader", domain.DeleteRole{Meta: m})
	want("orders.write")
	_, snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	role("writer", domain.UpdateRole{Meta: m, Permissions: []string{"orders.list"}})
	want("orders.list")
	if err := p.Restore(snap); err != nil {
		t.Fatal(err)
	}
	want("orders.write")
}

// TestSnapshotOfEarlierEncodingRestores: a snapshot as encoding/json wrote
// it (the nodes before this one, HTML-escaped and all) restores the same
// state as one written now, for keys with every kind of field set.
func TestSnapshotOfEarlierEncodingRestores(t *testing.T) {
	p := keystate.New()
	f := &feed{p: p}
	var ids []string
	for i := range 20 {
		id := newKeyID()
		c := createCmd(id, "owner <&>", fmt.Sprintf("key %d \u2028 \"q\"", i), domain.Secret{byte(i)})
		c.Comments, c.AllowedIPs = "a < b & c > d", []string{"10.0.0.0/8", "2001:db8::/32"}
		c.Metadata = map[string]string{"z": "1", "a": "<2>", "é": "\x01"}
		f.do(t, id, c)
		switch i % 3 {
		case 1:
			f.do(t, id, domain.RegenerateKey{Meta: domain.Meta{Actor: "o"}, Rotate: true, SecretHash: domain.HashSecret(domain.Secret{byte(i), 1}), GracePeriod: time.Hour})
		case 2:
			f.do(t, id, domain.RevokeKey{Meta: domain.Meta{Actor: "o"}, Reason: "leaked <here>"})
		}
		ids = append(ids, id)
	}
	_, now, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(now, &doc); err != nil {
		t.Fatal(err)
	}
	earlier, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(earlier, now) {
		t.Fatal("the two encodings are the same bytes: the test shows nothing")
	}
	for name, b := range map[string][]byte{"now": now, "earlier": earlier} {
		q := keystate.New()
		if err := q.Restore(b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, id := range ids {
			want, _ := p.Key(id)
			got, ok := q.Key(id)
			if !ok || fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", want) {
				t.Fatalf("%s: key %s restored as\n%#v\nwant\n%#v", name, id, got, want)
			}
		}
	}
}
