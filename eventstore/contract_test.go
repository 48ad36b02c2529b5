package eventstore_test

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

func TestContractEmbedded(t *testing.T) {
	runContract(t, func(t *testing.T) *eventstore.Store { return MustOpenStore(t) })
}

func TestContractCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	urls := startCluster(t, 3)
	runContract(t, func(t *testing.T) *eventstore.Store {
		return MustOpenStore(t, func(c *eventstore.Config) {
			c.URL = strings.Join(urls, ",")
			c.Replicas = 3
		})
	})
}

// TestContractExternalURL runs the contract through a second store that
// reaches an embedded server by its client URL, as a production node
// reaches an external cluster: through TCP, authenticated as the node
// identity, so the node's permissions must be enough for all of it.
func TestContractExternalURL(t *testing.T) {
	_, asNode := MustOpenListening(t)
	runContract(t, func(t *testing.T) *eventstore.Store {
		return MustOpenStore(t, asNode)
	})
}

// runContract is the event store contract every deployment must honour.
func runContract(t *testing.T, open func(t *testing.T) *eventstore.Store) {
	s := open(t)
	if !s.AtomicBatch() {
		t.Errorf("server does not accept atomic batches")
	}

	t.Run("Append", func(t *testing.T) {
		k := newKeyID()
		c := created(t, k)
		s1 := mustAppend(t, s, 0, c)
		u := updated(t, k, "renamed")
		s2 := mustAppend(t, s, s1, u)
		if s2 <= s1 {
			t.Fatalf("second append at %d, first at %d", s2, s1)
		}
		// Revoke and delete go together or not at all.
		r, d := revoked(t, k), deleted(t, k)
		s4 := mustAppend(t, s, s2, r, d)
		got, err := s.Load(testCtx(t), domain.KindKey, k)
		if err != nil {
			t.Fatal(err)
		}
		want := []domain.Envelope{c, u, r, d}
		if len(got) != len(want) {
			t.Fatalf("loaded %d events, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i].ID != want[i].ID || got[i].Type != want[i].Type || got[i].Stream != domain.StreamKeys {
				t.Errorf("event %d = %s %s in %q, want %s %s", i, got[i].Type, got[i].ID, got[i].Stream, want[i].Type, want[i].ID)
			}
		}
		if got, want := got[3].Seq, s4; got != want {
			t.Errorf("last seq = %d, want %d", got, want)
		}
		if got[2].Seq != s4-1 {
			t.Errorf("revoke at %d, delete at %d: an atomic append is contiguous", got[2].Seq, s4)
		}
		// The stored bytes are exactly the envelope's wire encoding.
		wire, _ := c.Marshal()
		if raw := rawMsg(t, s, domain.StreamKeys, s1); !bytes.Equal(raw.Data, wire) {
			t.Errorf("stored bytes differ from the wire encoding:\n%s\n%s", raw.Data, wire)
		}
		if got := rawMsg(t, s, domain.StreamKeys, s1).Header.Get("Nats-Msg-Id"); got != c.ID.String() {
			t.Errorf("Msg-Id = %q, want the event id %s", got, c.ID)
		}
	})

	t.Run("Conflict", func(t *testing.T) {
		k := newKeyID()
		s1 := mustAppend(t, s, 0, created(t, k))
		before := mustCount(t, s, domain.StreamKeys)
		for _, expected := range []uint64{0, s1 - 1, s1 + 1, s1 + 1000} {
			_, err := s.Append(testCtx(t), expected, []domain.Envelope{updated(t, k, "x")})
			if !isConflict(err) {
				t.Errorf("append after %d (last is %d): err = %v, want version_conflict", expected, s1, err)
			}
			_, err = s.Append(testCtx(t), expected, []domain.Envelope{revoked(t, k), deleted(t, k)})
			if !isConflict(err) {
				t.Errorf("batch append after %d (last is %d): err = %v, want version_conflict", expected, s1, err)
			}
		}
		if got := mustCount(t, s, domain.StreamKeys); got != before {
			t.Errorf("stream holds %d messages after conflicts, want %d", got, before)
		}
		// A new aggregate must be appended with expected 0.
		if _, err := s.Append(testCtx(t), s1, []domain.Envelope{created(t, newKeyID())}); !isConflict(err) {
			t.Errorf("create with expected %d: err = %v, want version_conflict", s1, err)
		}
	})

	t.Run("Invalid", func(t *testing.T) {
		k := newKeyID()
		before := mustCount(t, s, domain.StreamKeys)
		bad := map[string][]domain.Envelope{
			"empty":          nil,
			"two aggregates": {created(t, k), created(t, newKeyID())},
			"usage event":    {used(t, k)},
			"dotted id":      {created(t, "a.b")},
			"wildcard id":    {created(t, "a*")},
		}
		for name, envs := range bad {
			if _, err := s.Append(testCtx(t), 0, envs); domain.ErrorCode(err) != domain.EINVALID {
				t.Errorf("%s: err = %v, want %s", name, err, domain.EINVALID)
			}
		}
		if got := mustCount(t, s, domain.StreamKeys); got != before {
			t.Errorf("stream holds %d messages after invalid appends, want %d", got, before)
		}
	})

	t.Run("DuplicateRetry", func(t *testing.T) {
		k := newKeyID()
		c := created(t, k)
		s1 := mustAppend(t, s, 0, c)
		before := mustCount(t, s, domain.StreamKeys)
		if got := mustAppend(t, s, 0, c); got != s1 {
			t.Errorf("retried append at %d, want %d", got, s1)
		}
		r, d := revoked(t, k), deleted(t, k)
		s3 := mustAppend(t, s, s1, r, d)
		if got := mustAppend(t, s, s1, r, d); got != s3 {
			t.Errorf("retried batch append at %d, want %d", got, s3)
		}
		if got, want := mustCount(t, s, domain.StreamKeys), before+2; got != want {
			t.Errorf("stream holds %d messages, want %d", got, want)
		}
	})

	t.Run("LostAckRetry", func(t *testing.T) {
		k := newKeyID()
		c := created(t, k)
		// The first attempt reached the stream but its ack was lost.
		s1 := publishDirect(t, s, c)
		before := mustCount(t, s, domain.StreamKeys)
		if got := mustAppend(t, s, 0, c); got != s1 {
			t.Errorf("retry after lost ack at %d, want %d", got, s1)
		}
		r, d := revoked(t, k), deleted(t, k)
		publishDirect(t, s, r)
		s3 := publishDirect(t, s, d)
		if got := mustAppend(t, s, s1, r, d); got != s3 {
			t.Errorf("batch retry after lost ack at %d, want %d", got, s3)
		}
		// Recognised even when the aggregate has moved on since.
		k2 := newKeyID()
		c2 := created(t, k2)
		s5 := publishDirect(t, s, c2)
		mustAppend(t, s, s5, updated(t, k2, "later"))
		if got := mustAppend(t, s, 0, c2); got != s5 {
			t.Errorf("retry after lost ack and a later event at %d, want %d", got, s5)
		}
		if got, want := mustCount(t, s, domain.StreamKeys), before+4; got != want {
			t.Errorf("stream holds %d messages, want %d", got, want)
		}
	})

	t.Run("ReplayOrder", func(t *testing.T) {
		from, err := s.LastSeq(testCtx(t), domain.StreamKeys)
		if err != nil {
			t.Fatal(err)
		}
		keys := []string{newKeyID(), newKeyID(), newKeyID()}
		last := map[string]uint64{}
		var want []domain.Envelope
		for round := range 3 {
			for _, k := range keys {
				env := updated(t, k, "v")
				if round == 0 {
					env = created(t, k)
				}
				last[k] = mustAppend(t, s, last[k], env)
				want = append(want, env)
			}
		}
		col := newCollector()
		sub, err := s.Subscribe(testCtx(t), domain.StreamKeys, from+1, col.fn)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Stop()
		got := col.next(t, len(want))
		for i := range want {
			if got[i].ID != want[i].ID {
				t.Fatalf("event %d is %s, want %s", i, got[i].ID, want[i].ID)
			}
			if i > 0 && got[i].Seq <= got[i-1].Seq {
				t.Fatalf("seq %d after %d", got[i].Seq, got[i-1].Seq)
			}
		}
	})

	t.Run("SubscribeFromSeq", func(t *testing.T) {
		k := newKeyID()
		s1 := mustAppend(t, s, 0, created(t, k))
		s2 := mustAppend(t, s, s1, updated(t, k, "a"))
		col := newCollector()
		sub, err := s.Subscribe(testCtx(t), domain.StreamKeys, s2, col.fn)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Stop()
		if got := col.next(t, 1)[0]; got.Seq != s2 || got.Stream != domain.StreamKeys {
			t.Fatalf("first delivered %s/%d, want %s/%d", got.Stream, got.Seq, domain.StreamKeys, s2)
		}
		// Then it stays live.
		s3 := mustAppend(t, s, s2, updated(t, k, "b"))
		if got := col.next(t, 1)[0]; got.Seq != s3 {
			t.Fatalf("live event at %d, want %d", got.Seq, s3)
		}
		sub.Stop()
		if err := sub.Err(); err != nil {
			t.Errorf("Err after Stop = %v", err)
		}
	})

	t.Run("ConcurrentConflicts", func(t *testing.T) { raceOneKey(t, s) })

	t.Run("UsageGroupCommit", func(t *testing.T) {
		p := NewUsage(t, s, eventstore.UsageConfig{})
		before := mustCount(t, s, domain.StreamUsage)
		const callers = 40
		var wg sync.WaitGroup
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := p.Publish(testCtx(t), used(t, newKeyID())); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if got, want := mustCount(t, s, domain.StreamUsage), before+callers; got != want {
			t.Errorf("usage stream holds %d, want %d", got, want)
		}
	})

	t.Run("Load", func(t *testing.T) {
		a, b := newKeyID(), newKeyID()
		sa := mustAppend(t, s, 0, created(t, a))
		sb := mustAppend(t, s, 0, created(t, b))
		sa = mustAppend(t, s, sa, updated(t, a, "a2"))
		mustAppend(t, s, sb, revoked(t, b))
		got, err := s.Load(testCtx(t), domain.KindKey, a)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].KeyID != a || got[1].KeyID != a || got[1].Seq != sa {
			t.Fatalf("Load(%s) = %+v", a, got)
		}
		if got, err := s.Load(testCtx(t), domain.KindKey, newKeyID()); err != nil || len(got) != 0 {
			t.Errorf("Load(unknown) = %v, %v; want no events", got, err)
		}
		if _, err := s.Load(testCtx(t), "nope", a); domain.ErrorCode(err) != domain.EINVALID {
			t.Errorf("Load(bad kind) err = %v, want %s", err, domain.EINVALID)
		}
		// Principals live in the same stream under their own kind.
		p := newKeyID()
		pe := envelope(t, p, domain.PrincipalCreated{Name: "svc", Roles: []string{"admin"}})
		mustAppend(t, s, 0, pe)
		if got, err := s.Load(testCtx(t), domain.KindPrincipal, p); err != nil || len(got) != 1 || got[0].ID != pe.ID {
			t.Errorf("Load(principal) = %v, %v", got, err)
		}
		// More events than one direct-get batch.
		k := newKeyID()
		seq := mustAppend(t, s, 0, created(t, k))
		var batch []domain.Envelope
		for range 300 {
			batch = append(batch, updated(t, k, "n"))
		}
		seq = mustAppend(t, s, seq, batch...)
		got, err = s.Load(testCtx(t), domain.KindKey, k)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 301 || got[300].Seq != seq {
			t.Fatalf("loaded %d events ending at %d, want 301 ending at %d", len(got), got[len(got)-1].Seq, seq)
		}
	})
}
