package notary

import (
	"context"
	"sync/atomic"
	"time"
)

// feedSize and feedBytes bound what a Feed holds while the notary is busy
// (a checkpoint, a catch-up read): messages, and the bytes of their
// events. What is offered beyond them is read from the stream instead.
const (
	feedSize  = 1024
	feedBytes = 16 << 20
)

// feedCheck is how often a fed stream that was offered nothing, or whose
// feed dropped a message, is read from the stream for what it missed.
var feedCheck = time.Second

// Feed carries the messages of one stream that the node's own subscription
// has read and decoded to the notary, so that it neither reads nor decodes
// them a second time. Its zero value is not usable: use NewFeed.
type Feed struct {
	ch      chan Message
	bytes   atomic.Int64 // of the events in ch
	dropped atomic.Bool
}

// NewFeed returns an empty feed, for Config.Feeds.
func NewFeed() *Feed { return &Feed{ch: make(chan Message, feedSize)} }

// Offer hands the notary a message of the stream, with its events and
// their decoded envelopes. It never blocks the subscription: a message
// offered while the feed is full is dropped, and the notary reads it from
// the stream. Offering a message twice, or out of order, is harmless.
func (f *Feed) Offer(m Message) {
	size := messageBytes(m)
	if f.bytes.Add(size) > feedBytes {
		f.bytes.Add(-size)
		f.dropped.Store(true)
		return
	}
	select {
	case f.ch <- m:
	default:
		f.bytes.Add(-size)
		f.dropped.Store(true)
	}
}

// take receives a message offered to the feed.
func (f *Feed) take(m Message) Message {
	f.bytes.Add(-messageBytes(m))
	return m
}

func messageBytes(m Message) int64 {
	var n int64
	for _, e := range m.Events {
		n += int64(len(e))
	}
	return n
}

// FeedCounts returns how many messages of its fed streams the notary has
// folded as they were offered, and how many it read from the streams
// itself.
func (n *Notary) FeedCounts() (fed, read uint64) { return n.fed.Load(), n.selfRead.Load() }

// followFed folds a stream from its feed, in stream order. What the feed
// does not bring next in order, the notary reads from the stream itself:
// at start (what was stored before the node's subscription began), at an
// offered message that is past the next one (what was dropped while the
// notary was busy), and each feedCheck after a drop or without any offer
// (a dropped last message, a subscription that has stopped).
func (n *Notary) followFed(ctx context.Context, stream string, f *Feed) {
	n.catchUp(ctx, stream)
	t := time.NewTicker(feedCheck)
	defer t.Stop()
	offered := false
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-f.ch:
			m = f.take(m)
			offered = true
			n.mu.RLock()
			next := n.folded[stream] + 1
			n.mu.RUnlock()
			switch {
			case m.Seq < next:
				// Folded already, from the stream.
			case m.Seq == next:
				n.fed.Add(1)
				n.add(ctx, stream, m)
			default:
				n.catchUp(ctx, stream) // reads m too
			}
		case <-t.C:
			if f.dropped.Swap(false) || !offered {
				n.catchUp(ctx, stream)
			}
			offered = false
		}
	}
}

// catchUp folds what a fed stream has stored after the last folded
// message, up to its last message now.
func (n *Notary) catchUp(ctx context.Context, stream string) {
	n.readStream(ctx, stream, false, &n.selfRead)
}
