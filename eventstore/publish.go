package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// JetStream headers this package sets. nats.go v1.55 has no client for
// atomic batch publishing, so the batch headers are written by hand
// following ADR-50 and nats-server's stream.go.
const (
	hdrMsgID              = "Nats-Msg-Id"
	hdrExpectedStream     = "Nats-Expected-Stream"
	hdrExpectedSubjSeq    = "Nats-Expected-Last-Subject-Sequence"
	hdrExpectedSubjSeqFor = "Nats-Expected-Last-Subject-Sequence-Subject"
	hdrBatchID            = "Nats-Batch-Id"
	hdrBatchSeq           = "Nats-Batch-Sequence"
	hdrBatchCommit        = "Nats-Batch-Commit"
	hdrSequence           = "Nats-Sequence"
	hdrStatus             = "Status"
)

// JetStream error codes this package reacts to (nats-server's
// jetstream_errors_generated.go).
const (
	codeNoMessageFound       jetstream.ErrorCode = 10037
	codeWrongLastSeq         jetstream.ErrorCode = 10071
	codeDuplicateInProcess   jetstream.ErrorCode = 10158
	codeWrongLastSeqConstant jetstream.ErrorCode = 10164
	codeBatchIncomplete      jetstream.ErrorCode = 10176
	// The stream cannot store: out of resources or space, or its store
	// failed (a full disk).
	codeInsufficientResources    jetstream.ErrorCode = 10023
	codeStorageResourcesExceeded jetstream.ErrorCode = 10047
	codeStreamStoreFailed        jetstream.ErrorCode = 10077
	codeBatchDuplicateMessage    jetstream.ErrorCode = 10201
	codeBatchTooManyInflight     jetstream.ErrorCode = 10210
)

// maxAtomicBatch is nats-server's default cap on the messages of one atomic
// batch; a larger batch is rejected as a whole.
const maxAtomicBatch = 1000

// ErrClosed is returned by calls made on, or still waiting in, a closed
// Store or UsagePublisher.
var ErrClosed = errors.New("eventstore: closed")

// pubAck is the server's answer to a JetStream publish or to the commit of
// an atomic batch.
type pubAck struct {
	Stream    string              `json:"stream"`
	Seq       uint64              `json:"seq"`
	Duplicate bool                `json:"duplicate,omitempty"`
	Batch     string              `json:"batch,omitempty"`
	Count     int                 `json:"count,omitempty"`
	Error     *jetstream.APIError `json:"error,omitempty"`
}

func parseAck(m *nats.Msg) (pubAck, error) {
	if m.Header.Get(hdrStatus) == "503" {
		return pubAck{}, nats.ErrNoResponders
	}
	var ack pubAck
	if err := json.Unmarshal(m.Data, &ack); err != nil {
		return pubAck{}, fmt.Errorf("decode pub ack: %w", err)
	}
	if ack.Error != nil {
		return pubAck{}, ack.Error
	}
	if ack.Stream == "" || ack.Seq == 0 {
		return pubAck{}, fmt.Errorf("invalid pub ack %q", m.Data)
	}
	return ack, nil
}

// apiCode returns the JetStream error code carried by err, or 0.
func apiCode(err error) jetstream.ErrorCode {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode
	}
	return 0
}

// transient reports whether a publish that failed with err may be retried
// as it is: the request may never have reached the stream, or its answer was
// lost, or the server asked us to come back later. Retrying is safe because
// every message carries a Msg-Id and lifecycle appends carry their
// concurrency check.
func transient(err error) bool {
	switch {
	case errors.Is(err, nats.ErrTimeout),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrReconnectBufExceeded):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case codeDuplicateInProcess, codeBatchIncomplete, codeBatchTooManyInflight:
			return true
		}
		// 503: JetStream is electing a leader or otherwise unavailable.
		return apiErr.Code == 503
	}
	return false
}

// backoff returns how long to wait before retry number attempt (1-based).
func backoff(attempt int) time.Duration {
	return domain.Backoff(attempt, 50*time.Millisecond, time.Second)
}

// sleepCtx waits for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// publisher sends messages to JetStream and waits for their acks. Every
// request is bounded by timeout so a lost ack surfaces as a retryable error
// instead of a hang.
type publisher struct {
	nc      *nats.Conn
	timeout time.Duration
	// gate, with the embedded server, refuses publishes at once while the
	// server cannot write to its disk, and hears of publishes that suggest
	// it cannot.
	gate *writeGate
}

// publishOne publishes a single message and returns its ack.
func (p publisher) publishOne(ctx context.Context, m *nats.Msg) (pubAck, error) {
	if err := p.gate.check(); err != nil {
		return pubAck{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	resp, err := p.nc.RequestMsgWithContext(ctx, m)
	if err == nil {
		var ack pubAck
		if ack, err = parseAck(resp); err == nil {
			return ack, nil
		}
	}
	if suspicious(err) {
		p.gate.suspect()
	}
	return pubAck{}, err
}

// publishAtomic stores msgs as one atomic batch: all of them or none. Only
// the commit is a request; the earlier messages are plain publishes on the
// same connection, which keeps their order, so a batch costs one round trip.
// If one of them is lost or rejected the server answers the commit with
// "batch incomplete" and nothing is stored. The returned ack carries the
// sequence of the last message; the batch occupies the sequences right
// before it.
func (p publisher) publishAtomic(ctx context.Context, msgs []*nats.Msg) (pubAck, error) {
	if err := p.gate.check(); err != nil {
		return pubAck{}, err
	}
	id := nuid.Next()
	last := len(msgs) - 1
	for i, m := range msgs[:last] {
		if err := p.nc.PublishMsg(batchMsg(m, id, i+1, false)); err != nil {
			return pubAck{}, err
		}
	}
	ack, err := p.publishOne(ctx, batchMsg(msgs[last], id, last+1, true))
	if err != nil {
		return pubAck{}, err
	}
	if ack.Count != 0 && ack.Count != len(msgs) {
		return pubAck{}, fmt.Errorf("atomic batch %s: server stored %d of %d messages", id, ack.Count, len(msgs))
	}
	return ack, nil
}

// batchMsg returns a copy of m carrying the batch headers. It copies so the
// caller's message can be published again later outside a batch.
func batchMsg(m *nats.Msg, id string, seq int, commit bool) *nats.Msg {
	h := maps.Clone(m.Header)
	if h == nil {
		h = nats.Header{}
	}
	h.Set(hdrBatchID, id)
	h.Set(hdrBatchSeq, strconv.Itoa(seq))
	if commit {
		h.Set(hdrBatchCommit, "1")
	}
	return &nats.Msg{Subject: m.Subject, Header: h, Data: m.Data}
}
