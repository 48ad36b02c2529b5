package keystate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// Subscription is a running delivery of events.
type Subscription interface {
	// Stop ends delivery and waits until the callback no longer runs.
	Stop()
	// Done is closed when delivery has ended, however it ended.
	Done() <-chan struct{}
	// Err is why delivery ended on its own (nil after Stop).
	Err() error
}

// Source is the KEYS stream as the follower reads it.
type Source interface {
	// LastSeq returns the sequence of the stream's newest event.
	LastSeq(ctx context.Context) (uint64, error)
	// Subscribe calls fn with every event from fromSeq on, in order, and
	// then with each new one, until the subscription is stopped.
	Subscribe(ctx context.Context, fromSeq uint64, fn func(domain.Envelope) error) (Subscription, error)
}

// SnapshotStore keeps the newest snapshot under a name.
type SnapshotStore interface {
	LoadSnapshot(ctx context.Context, name string) (seq uint64, data []byte, found bool, err error)
	SaveSnapshot(ctx context.Context, name string, seq uint64, data []byte) error
}

// replayTimeout bounds the catch-up at start.
const replayTimeout = 5 * time.Minute

// SnapshotName is the name the projection's snapshots are kept under.
const SnapshotName = "keystate"

// Follower keeps a projection up to date with KEYS: Start restores the last
// snapshot and replays the tail; Run follows new events, saves a snapshot
// every Every events and a last one when it stops.
type Follower struct {
	p     *Projection
	src   Source
	snaps SnapshotStore
	every int
	log   *slog.Logger

	sub Subscription
	due chan struct{}
}

// NewFollower returns a follower of p. every is the number of events
// between snapshots; 0 saves one only when Run stops.
func NewFollower(p *Projection, src Source, snaps SnapshotStore, every int, log *slog.Logger) *Follower {
	return &Follower{p: p, src: src, snaps: snaps, every: every, log: log, due: make(chan struct{}, 1)}
}

// Start restores the last snapshot (an unusable one is logged and replayed
// instead), subscribes to the events after it and returns once the
// projection has applied every event the stream held at the start, or
// when ctx ends.
func (f *Follower) Start(ctx context.Context) error {
	// A snapshot is only a shortcut: waiting long for one (a damaged
	// object store answers with a timeout, not an error) is worse than a
	// replay.
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	seq, data, found, err := f.snaps.LoadSnapshot(lctx, SnapshotName)
	cancel()
	if err != nil {
		f.log.Warn("load key-state snapshot; replaying from the start", "err", err)
	} else if found {
		if err := f.p.Restore(data); err != nil {
			f.log.Warn("unusable key-state snapshot; replaying from the start", "err", err)
		} else {
			f.log.Info("key-state snapshot restored", "seq", seq, "keys", f.p.Len())
		}
	}
	last, err := f.src.LastSeq(ctx)
	if err != nil {
		return fmt.Errorf("read KEYS position: %w", err)
	}
	var since int
	f.sub, err = f.src.Subscribe(context.WithoutCancel(ctx), f.p.Applied()+1, func(env domain.Envelope) error {
		f.p.Apply(env)
		if since++; f.every > 0 && since >= f.every {
			since = 0
			select {
			case f.due <- struct{}{}:
			default:
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("subscribe KEYS: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, replayTimeout)
	defer cancel()
	if err := f.p.WaitFor(wctx, last); err != nil {
		return fmt.Errorf("replay KEYS: %w", err)
	}
	return nil
}

// Run saves snapshots as they fall due until ctx ends, then stops the
// subscription and saves the last snapshot. It fails when the
// subscription ends on its own. Start must have succeeded.
func (f *Follower) Run(ctx context.Context) error {
	for {
		select {
		case <-f.due:
			f.save(ctx)
		case <-f.sub.Done():
			if err := f.sub.Err(); err != nil {
				return fmt.Errorf("follow KEYS: %w", err)
			}
			return errors.New("follow KEYS: subscription ended")
		case <-ctx.Done():
			f.sub.Stop()
			if f.p.Applied() > 0 {
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
				defer cancel()
				f.save(sctx)
			}
			return nil
		}
	}
}

// save stores a snapshot; a failure only costs a longer replay next time.
func (f *Follower) save(ctx context.Context) {
	seq, data, err := f.p.Snapshot()
	if err == nil {
		err = f.snaps.SaveSnapshot(ctx, SnapshotName, seq, data)
	}
	if err != nil {
		f.log.Warn("save key-state snapshot", "err", err)
		return
	}
	f.log.Debug("key-state snapshot saved", "seq", seq, "bytes", len(data))
}
