package eventstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats-server/v2/server"
)

// ErrNotWritable means the embedded server cannot write to its disk now
// (most often a full disk). Appends and usage publications fail with it
// at once instead of waiting for acks that will not come; the store
// restarts JetStream by itself once there is room again.
var ErrNotWritable = errors.New("eventstore: the embedded server cannot write to its disk")

// spaceProbe is how much free room the store wants to see in its data dir
// before it restarts JetStream: enough for the server to finish an atomic
// batch that a full disk cut short (at most 1000 events) and to write its
// index files. A restart into a disk that is still full could cut that
// batch short again, and the server would then give up on it.
const spaceProbe = 4 << 20

// writeGate is what the embedded store knows about its disk: whether
// writes go through, and a way for a failing publish to ask the
// supervisor to look now rather than at its next tick. A nil gate (an
// external server) is always open.
type writeGate struct {
	down atomic.Pointer[string] // why writes are refused; nil while open
	kick chan struct{}
}

func newWriteGate() *writeGate { return &writeGate{kick: make(chan struct{}, 1)} }

// check returns ErrNotWritable while the gate is closed.
func (g *writeGate) check() error {
	if g == nil {
		return nil
	}
	if why := g.down.Load(); why != nil {
		return fmt.Errorf("%w: %s", ErrNotWritable, *why)
	}
	return nil
}

// suspect asks the supervisor to look at the server's health now: a
// publish timed out or the server said its store failed.
func (g *writeGate) suspect() {
	if g == nil {
		return
	}
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// suspicious reports whether a publish that failed with err may mean the
// server cannot write: a full disk makes the server drop the message
// without an answer, or answer that its store failed.
func suspicious(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrNotWritable) {
		return true
	}
	switch apiCode(err) {
	case codeInsufficientResources, codeStorageResourcesExceeded, codeStreamStoreFailed, codeBatchIncomplete:
		return true
	}
	return false
}

// diskSupervisor watches the embedded server's health and, when a stream
// stops writing (a full disk leaves it refusing writes for good, even
// after space returns), closes the write gate, waits with back-off until
// the data dir has room again and restarts JetStream inside the running
// server. The server, its listener and every connection stay up: streams
// and durable consumers are reloaded from disk, and ordered consumers
// (the store's subscriptions) recreate themselves from where they were.
type diskSupervisor struct {
	s     *Store
	every time.Duration

	stop     chan struct{}
	stopped  chan struct{}
	once     sync.Once
	restarts atomic.Uint64
}

func (s *Store) superviseDisk() {
	d := &diskSupervisor{s: s, every: time.Second, stop: make(chan struct{}), stopped: make(chan struct{})}
	s.disk = d
	go d.run()
}

func (d *diskSupervisor) close() {
	d.once.Do(func() { close(d.stop) })
	<-d.stopped
}

func (d *diskSupervisor) run() {
	defer close(d.stopped)
	t := time.NewTicker(d.every)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		case <-d.s.gate.kick:
		}
		if why := d.problem(); why != "" {
			d.recover(why)
		}
	}
}

// problem returns why the server cannot take writes, or "": JetStream is
// off, or a stream was not recovered or has hit a write error. Errors of
// the server's readiness for connections are not the disk's: an
// in-process server (no listener) reports "startup did not complete" at
// random when the check's 1ms timer fires before its goroutine runs, as
// it does on a busy machine, and restarting JetStream for it disrupted a
// healthy store.
func (d *diskSupervisor) problem() string {
	return diskProblem(d.s.ns.Healthz(&server.HealthzOptions{Details: true}))
}

// diskProblem is problem's reading of a detailed health answer.
func diskProblem(h *server.HealthStatus) string {
	if h.StatusCode == 0 || h.StatusCode == 200 {
		return ""
	}
	var why []string
	for _, e := range h.Errors {
		if e.Type != server.HealthzErrorConn {
			why = append(why, e.Error)
		}
	}
	return strings.Join(why, "; ")
}

// recover closes the gate and restarts JetStream once the disk has room,
// until the server is healthy again. Room is probed every half second
// (a probe on a full disk fails at once); restarts that do not help back
// off, doubling up to 15s.
func (d *diskSupervisor) recover(why string) {
	s := d.s
	s.gate.down.Store(&why)
	began := time.Now()
	s.log.Error("the event store cannot write; writes are refused until it recovers", "err", why)
	before := d.lastSeqs()
	wait, failed := 500*time.Millisecond, 0
	for probe := 1; ; probe++ {
		select {
		case <-d.stop:
			return
		case <-time.After(wait):
		}
		if err := probeSpace(s.storeDir(), spaceProbe); err != nil {
			if probe == 1 || probe%60 == 0 {
				s.log.Warn("the event store is waiting for disk space", "dir", s.storeDir(), "err", err)
			}
			continue
		}
		err := d.restartJetStream()
		if err == nil {
			if p := d.problem(); p != "" {
				err = errors.New(p)
			}
		}
		if err != nil {
			failed++
			wait = domain.Backoff(failed, 500*time.Millisecond, 15*time.Second)
			s.log.Warn("JetStream restarted but still cannot write", "err", err, "restarts", failed)
			why = err.Error()
			s.gate.down.Store(&why)
			continue
		}
		if lost := d.regressed(before); lost != "" {
			// The server showed messages it never acknowledged and then
			// lost them (a group commit cut off before any of it reached
			// the disk). Projections may have applied them, and new
			// writes would reuse their sequences under them: keep
			// refusing writes until keyledger restarts and rebuilds.
			why = "the event store lost events it had shown but never acknowledged (" + lost + "); restart keyledger to rebuild its projections"
			s.gate.down.Store(&why)
			s.log.Error("the event store cannot safely take writes", "err", why)
			return
		}
		d.restarts.Add(1)
		s.gate.down.Store(nil)
		s.log.Info("the event store writes again", "after", time.Since(began).Round(time.Millisecond))
		return
	}
}

// restartJetStream stops JetStream in the running server and starts it
// again on the same store directory, which reloads every stream from its
// files and clears their write errors; a batch the disk cut short is
// completed by the server from its staging files.
func (d *diskSupervisor) restartJetStream() error {
	ns := d.s.ns
	if ns.JetStreamEnabled() {
		if err := ns.ShutdownJetStream(); err != nil {
			return fmt.Errorf("stop JetStream: %w", err)
		}
	}
	// The store's limit is the disk, as at start (startEmbedded): left
	// to the server it would be 75% of what is free now. SyncAlways
	// comes from the server's options.
	if err := ns.EnableJetStream(&server.JetStreamConfig{StoreDir: d.s.storeDir(), MaxStore: fsSize(d.s.storeDir())}); err != nil {
		return fmt.Errorf("start JetStream: %w", err)
	}
	return nil
}

// lastSeqs reads each stream's last sequence; a stream that does not
// answer is left out.
func (d *diskSupervisor) lastSeqs() map[string]uint64 {
	out := map[string]uint64{}
	for _, name := range ledgerStreams {
		ctx, cancel := context.WithTimeout(context.Background(), d.s.cfg.Timeout)
		st, err := d.s.js.Stream(ctx, name)
		cancel()
		if err == nil {
			out[name] = st.CachedInfo().State.LastSeq
		}
	}
	return out
}

// regressed names the streams whose last sequence went back.
func (d *diskSupervisor) regressed(before map[string]uint64) string {
	after := d.lastSeqs()
	var lost string
	for _, name := range ledgerStreams {
		if b, ok := before[name]; ok && after[name] < b {
			if lost != "" {
				lost += ", "
			}
			lost += fmt.Sprintf("%s %d to %d", name, after[name]+1, b)
		}
	}
	return lost
}

// probeSpace writes, syncs and removes a file of size bytes in dir: the
// test that the disk takes writes again, quotas and reserved blocks
// included.
func probeSpace(dir string, size int) (err error) {
	f, err := os.CreateTemp(dir, ".space-probe-*")
	if err != nil {
		return err
	}
	defer func() {
		f.Close()
		if rerr := os.Remove(f.Name()); err == nil && rerr != nil {
			err = rerr
		}
	}()
	buf := make([]byte, 64<<10)
	for n := 0; n < size; n += len(buf) {
		if _, err := f.Write(buf); err != nil {
			return err
		}
	}
	return f.Sync()
}

// storeDir is the directory the embedded server keeps JetStream in.
func (s *Store) storeDir() string { return jetstreamDir(s.cfg.DataDir) }

func jetstreamDir(dataDir string) string { return filepath.Join(dataDir, "jetstream") }

// Writable returns nil while the store can take writes. With the embedded
// server it fails (ErrNotWritable) from the moment a stream cannot write
// to its disk until JetStream has been restarted on a disk with room;
// with an external server, while the connection is down. It is the event
// store's readiness check.
func (s *Store) Writable(ctx context.Context) error {
	if err := s.gate.check(); err != nil {
		return err
	}
	if !s.nc.IsConnected() {
		return fmt.Errorf("nats %s", s.nc.Status())
	}
	return ctx.Err()
}

// DiskRestarts counts how many times the store restarted JetStream after
// a write failure.
func (s *Store) DiskRestarts() uint64 {
	if s.disk == nil {
		return 0
	}
	return s.disk.restarts.Load()
}
