package eventstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// NewUsage starts a usage publisher that is closed when the test ends.
func NewUsage(tb testing.TB, s *eventstore.Store, cfg eventstore.UsageConfig) *eventstore.UsagePublisher {
	tb.Helper()
	p := eventstore.NewUsagePublisher(s, cfg)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

func TestUsageSyncDurableOnReturn(t *testing.T) {
	s := MustOpenStore(t)
	p := NewUsage(t, s, eventstore.UsageConfig{})
	k := newKeyID()
	env := used(t, k)
	if err := p.Publish(testCtx(t), env); err != nil {
		t.Fatal(err)
	}
	// No polling: the event is stored when Publish returns.
	if got := mustCount(t, s, domain.StreamUsage); got != 1 {
		t.Fatalf("usage stream holds %d, want 1", got)
	}
	// It is a pack of one, holding the event's own encoding.
	m := rawMsg(t, s, domain.StreamUsage, 1)
	want, _ := env.Marshal()
	if m.Subject != domain.PackSubject || m.Header.Get(domain.HdrEvents) != "1" || !bytes.Equal(m.Data, want) {
		t.Errorf("stored %s with %s %q: %s", m.Subject, domain.HdrEvents, m.Header.Get(domain.HdrEvents), m.Data)
	}
	// PublishOnce stores each event under its own id: a retried call is
	// stored once.
	again := used(t, k)
	for range 2 {
		if err := p.PublishOnce(testCtx(t), again); err != nil {
			t.Fatal(err)
		}
	}
	if got := mustCount(t, s, domain.StreamUsage); got != 2 {
		t.Errorf("usage stream holds %d after a retried PublishOnce, want 2", got)
	}
	m = rawMsg(t, s, domain.StreamUsage, 2)
	if m.Subject != "keyledger.usage."+k+".used" || m.Header.Get("Nats-Msg-Id") != again.ID.String() {
		t.Errorf("stored %s with Msg-Id %q", m.Subject, m.Header.Get("Nats-Msg-Id"))
	}
	// Lifecycle events do not belong here.
	if err := p.Publish(testCtx(t), created(t, k)); domain.ErrorCode(err) != domain.EINVALID {
		t.Errorf("publish of a lifecycle event: %v, want %s", err, domain.EINVALID)
	}
}

// TestUsageSyncGroupCommit checks that concurrent callers share batches and
// that every event is stored exactly once, even when retried events make
// the server reject a whole batch.
func TestUsageSyncGroupCommit(t *testing.T) {
	s := MustOpenStore(t)
	p := NewUsage(t, s, eventstore.UsageConfig{})
	const callers, perCaller = 50, 20
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := newKeyID()
			for i := range perCaller {
				if err := p.Publish(testCtx(t), used(t, k)); err != nil {
					t.Error(err)
					return
				}
				if i%5 == 0 {
					// A service's record, retried after an unknown
					// outcome, mixed into other callers' groups.
					env := used(t, k)
					for range 2 {
						if err := p.PublishOnce(testCtx(t), env); err != nil {
							t.Error(err)
							return
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	st := p.Stats()
	if st.Calls != callers*perCaller*7/5 {
		t.Errorf("%d calls succeeded, want %d", st.Calls, callers*perCaller*7/5)
	}
	if st.Batches >= st.Calls {
		t.Errorf("%d batches for %d calls: concurrent callers did not share batches", st.Batches, st.Calls)
	}
	t.Logf("%d calls in %d round trips", st.Calls, st.Batches)
	if got, want := mustCount(t, s, domain.StreamUsage), uint64(callers*perCaller*6/5); got != want {
		t.Errorf("usage stream holds %d, want %d", got, want)
	}
	if d := p.Depth(); d != 0 {
		t.Errorf("depth %d after all calls returned", d)
	}
}

func TestUsageAsyncCloseFlushes(t *testing.T) {
	s := MustOpenStore(t)
	p := eventstore.NewUsagePublisher(s, eventstore.UsageConfig{Async: true, BufferSize: 5000})
	const n = 2000
	k := newKeyID()
	for range n {
		if err := p.Publish(testCtx(t), used(t, k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := mustCount(t, s, domain.StreamUsage); got != n {
		t.Errorf("usage stream holds %d after Close, want %d", got, n)
	}
	if d := p.Depth(); d != 0 {
		t.Errorf("depth %d after Close", d)
	}
	if err := p.Publish(testCtx(t), used(t, k)); !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("publish after Close: %v, want ErrClosed", err)
	}
}

// TestUsageAsyncBackPressure cuts the connection to the server: the buffer
// fills, then Publish blocks instead of dropping; when the connection is
// back everything buffered is stored and the blocked caller gets through.
func TestUsageAsyncBackPressure(t *testing.T) {
	embedded, asNode := MustOpenListening(t)
	// The outage is a proxy refusing connections, so the server and its
	// port stay ours for the whole test.
	px := newProxy(t, strings.TrimPrefix(embedded.ClientURL(), "nats://"))
	s := MustOpenStore(t, asNode, func(c *eventstore.Config) {
		c.URL = "nats://" + px.addr()
		c.Timeout = 200 * time.Millisecond
	})
	const buffer, maxBatch = 8, 4
	p := NewUsage(t, s, eventstore.UsageConfig{Async: true, BufferSize: buffer, MaxBatch: maxBatch})
	k := newKeyID()
	if err := p.Publish(testCtx(t), used(t, k)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if n := mustCount(t, embedded, domain.StreamUsage); n != 1 {
			return errors.New("first event not stored yet")
		}
		// Stored is not enough: the publisher must have its ack too, or
		// the cut below makes it retry the first event and count it.
		if d := p.Depth(); d != 0 {
			return fmt.Errorf("depth %d before the cut", d)
		}
		return nil
	})

	px.cut()
	// The buffer takes its events whatever the machine's speed: these
	// calls have no deadline of their own, so a slow scheduler cannot pass
	// for a full buffer.
	accepted := 1
	for range buffer {
		if err := p.Publish(testCtx(t), used(t, k)); err != nil {
			t.Fatal(err)
		}
		accepted++
	}
	// The worker holds at most MaxBatch events in flight besides; after
	// that, Publish must block.
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := p.Publish(ctx, used(t, k))
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		accepted++
		if accepted > 1+buffer+maxBatch {
			t.Fatalf("accepted %d events with the server away and a buffer of %d", accepted, buffer)
		}
	}
	if accepted < 1+buffer {
		t.Errorf("Publish blocked after %d events with a buffer of %d", accepted, buffer)
	}
	if d := p.Depth(); d != accepted-1 {
		t.Errorf("depth %d, want the %d events waiting", d, accepted-1)
	}
	blocked := make(chan error, 1)
	go func() { blocked <- p.Publish(context.Background(), used(t, k)) }()

	px.restore()
	select {
	case err := <-blocked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("blocked publish did not get through after the connection came back")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := mustCount(t, embedded, domain.StreamUsage), uint64(accepted+1); got != want {
		t.Errorf("usage stream holds %d, want %d: an accepted event was lost", got, want)
	}
	if st := p.Stats(); st.Rejected != 0 || st.Abandoned != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestUsageSyncGivesUpWhileAway cuts the connection to the server: a
// durable Publish whose caller set no deadline of its own fails within the
// publisher's, rather than holding its caller (a verification) for as long
// as NATS is away, and the publisher stores again once it is back.
func TestUsageSyncGivesUpWhileAway(t *testing.T) {
	embedded, asNode := MustOpenListening(t)
	px := newProxy(t, strings.TrimPrefix(embedded.ClientURL(), "nats://"))
	s := MustOpenStore(t, asNode, func(c *eventstore.Config) {
		c.URL = "nats://" + px.addr()
		c.Timeout = 200 * time.Millisecond
	})
	p := NewUsage(t, s, eventstore.UsageConfig{})
	k := newKeyID()
	if err := p.Publish(testCtx(t), used(t, k)); err != nil {
		t.Fatal(err)
	}
	px.cut()
	done := make(chan error, 1)
	go func() { done <- p.Publish(context.Background(), used(t, k)) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Publish succeeded with the server away")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Publish still waiting with the server away")
	}
	px.restore()
	checkFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		return p.Publish(testCtx(t), used(t, k))
	})
}

// proxy forwards TCP connections to a server until cut, then refuses them
// until restored.
type proxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target}
	t.Cleanup(func() {
		l.Close()
		p.cut()
	})
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(s, c); s.Close() }()
		go func() { _, _ = io.Copy(c, s); c.Close() }()
	}
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// TestUsageAsyncLingers publishes async events one call at a time: a pack
// waits up to Linger for more events, so they share messages, and
// MaxBatch still bounds each one.
func TestUsageAsyncLingers(t *testing.T) {
	s := MustOpenStore(t)
	p := NewUsage(t, s, eventstore.UsageConfig{Async: true, MaxBatch: 10, Linger: time.Minute})
	k := newKeyID()
	for range 25 {
		if err := p.Publish(testCtx(t), used(t, k)); err != nil {
			t.Fatal(err)
		}
	}
	// Two full packs go at once; the last five wait for more.
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := mustCount(t, s, domain.StreamUsage); n != 20 {
			return fmt.Errorf("%d events stored, want the two full packs' 20", n)
		}
		return nil
	})
	if st := p.Stats(); st.Batches != 2 {
		t.Errorf("%d messages sent for two full packs", st.Batches)
	}
	if d := p.Depth(); d != 5 {
		t.Errorf("depth %d while the last pack gathers, want 5", d)
	}
	// Close does not wait out the linger: the last pack goes at once.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := mustCount(t, s, domain.StreamUsage); n != 25 {
		t.Errorf("%d events stored after Close, want 25", n)
	}
	if st := p.Stats(); st.Batches != 3 || st.Events != 25 {
		t.Errorf("stats %+v, want 25 events in 3 messages", st)
	}
}
