package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// maxAppendAttempts bounds the retries of one Append after lost acks or
// while a cluster elects a leader.
const maxAppendAttempts = 6

// Append stores envs, the new events of one aggregate (same kind and id),
// if and only if the aggregate's last stored event is still at stream
// sequence expected (0: the aggregate has no events). Several events are
// stored atomically. It returns the sequence of the last event.
//
// Returns EINVALID for events that are not lifecycle events of one valid
// aggregate, and ECONFLICT (reason "version_conflict") when another append
// got there first; in that case nothing was stored. Appending the same
// events again (same ids, same expected) after an unknown outcome is safe:
// it returns the sequence they were stored at and stores nothing twice.
func (s *Store) Append(ctx context.Context, expected uint64, envs []domain.Envelope) (uint64, error) {
	return s.AppendAll(ctx, []domain.Write{{Expected: expected, Events: envs}})
}

// AppendAll stores the writes of one command, each the events of one
// aggregate checked against the version it was decided on, all or
// nothing: a key's creation together with its owner's record of it, a
// principal together with its first credential. It returns the sequence of
// the last event. Errors and retries as Append; no two writes may name the
// same aggregate.
func (s *Store) AppendAll(ctx context.Context, writes []domain.Write) (uint64, error) {
	filters, err := checkWrites(writes)
	if err != nil {
		return 0, err
	}
	var msgs []*nats.Msg
	for i, w := range writes {
		for j, env := range w.Events {
			b, err := env.Marshal()
			if err != nil {
				return 0, fmt.Errorf("append %s: %w", env.Subject(), err)
			}
			m := nats.NewMsg(env.Subject())
			m.Data = b
			m.Header.Set(hdrMsgID, env.ID.String())
			m.Header.Set(hdrExpectedStream, domain.StreamKeys)
			// Only the first message of each aggregate carries its check:
			// inside an atomic batch the server rejects an expected-subject
			// check on a subject the batch has already written, and the
			// batch as a whole either lands right after expected or not at
			// all.
			if j == 0 {
				m.Header.Set(hdrExpectedSubjSeq, strconv.FormatUint(w.Expected, 10))
				m.Header.Set(hdrExpectedSubjSeqFor, filters[i])
			}
			s.signer.sign(m)
			msgs = append(msgs, m)
		}
	}
	if len(msgs) > 1 && !s.atomic {
		return s.appendEach(ctx, writes)
	}
	// A lost ack is recognised by the last write: the batch is atomic, so
	// if its events follow its expected version, the whole batch landed.
	last := writes[len(writes)-1]
	lastFilter := filters[len(filters)-1]
	subject := msgs[0].Subject
	for attempt := 1; ; attempt++ {
		ack, err := s.appends.submit(ctx, msgs, filters, true)
		if err == nil && !ack.Duplicate {
			return ack.Seq, nil
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("append %s: %w", subject, ctx.Err())
		}
		if err == nil || isVersionRejection(err) {
			// A duplicate ack, a wrong last sequence or a duplicate in the
			// batch: either someone else moved an aggregate on, or these
			// very events were stored by an earlier attempt whose ack was
			// lost (on a single server the version check runs before the
			// Msg-Id check, so a retry answers "wrong last sequence").
			seq, ours, cerr := s.confirm(ctx, lastFilter, last.Expected, last.Events)
			switch {
			case cerr != nil:
				return 0, fmt.Errorf("append %s: %w", subject, cerr)
			case ours:
				return seq, nil
			case attempt > 1 && apiCode(err) == codeWrongLastSeqConstant && attempt < maxAppendAttempts:
				// On a cluster our own earlier attempt may still be in
				// flight on this aggregate; look again once it has landed.
				if err := sleepCtx(ctx, backoff(attempt)); err != nil {
					return 0, fmt.Errorf("append %s: %w", subject, err)
				}
				continue
			case err == nil:
				return 0, fmt.Errorf("append %s: event id %s is already stored elsewhere", subject, writes[0].Events[0].ID)
			}
			return 0, conflict(writes)
		}
		if errors.Is(err, ErrClosed) || !transient(err) || attempt >= maxAppendAttempts {
			return 0, s.appendFailed(subject, err)
		}
		s.log.Debug("append retry", "subject", subject, "attempt", attempt, "err", err)
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return 0, fmt.Errorf("append %s: %w", subject, err)
		}
	}
}

// appendFailed is the error of an append that could not be stored. When
// the store cannot take writes now (no connection or quorum, the stream out
// of space or failing to write, the store closed) it is EUNAVAILABLE, which
// callers answer with 503: the atomic append left nothing half-written,
// and a retry once the store recovers is safe.
func (s *Store) appendFailed(subject string, err error) error {
	if !unavailable(err) {
		return fmt.Errorf("append %s: %w", subject, err)
	}
	s.log.Warn("append refused: the event store cannot take writes", "subject", subject, "err", err)
	// Both: the class callers answer with, and the cause for errors.Is.
	return fmt.Errorf("append %s: %w: %w", subject,
		domain.Errorf(domain.EUNAVAILABLE, "store_unavailable", "the event store cannot take writes now; retry later"), err)
}

// unavailable reports whether err means the store cannot take writes now.
func unavailable(err error) bool {
	if transient(err) || errors.Is(err, ErrClosed) || errors.Is(err, ErrNotWritable) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrDisconnected) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true
	}
	switch apiCode(err) {
	case codeInsufficientResources, codeStorageResourcesExceeded, codeStreamStoreFailed:
		return true
	}
	return false
}

// appendEach stores a multi-event append on a server without atomic
// batches: one append per event, each checked against the sequence of the
// one before, one aggregate after the other. A crash between two of them
// leaves a prefix stored; a retry with the same events and expected finds
// that prefix and completes it. Writes of several aggregates are then not
// atomic, which Open warns about.
func (s *Store) appendEach(ctx context.Context, writes []domain.Write) (uint64, error) {
	var seq uint64
	for _, w := range writes {
		seq = w.Expected
		for i := range w.Events {
			next, err := s.AppendAll(ctx, []domain.Write{{Expected: seq, Events: w.Events[i : i+1]}})
			if err != nil {
				return 0, err
			}
			seq = next
		}
	}
	return seq, nil
}

// isVersionRejection reports whether the server refused a publish because
// of its version check or because it holds one of its Msg-Ids already.
func isVersionRejection(err error) bool {
	switch apiCode(err) {
	case codeWrongLastSeq, codeWrongLastSeqConstant, codeBatchDuplicateMessage:
		return true
	}
	return false
}

// confirm reports whether envs are stored right after expected on the
// aggregate's filter, in order, and if so the sequence of the last one. It
// reads from the stream leader, which has applied everything it
// acknowledged. Looking right after expected, rather than at the
// aggregate's last event, also recognises our events when others have been
// appended after them since.
func (s *Store) confirm(ctx context.Context, filter string, expected uint64, envs []domain.Envelope) (uint64, bool, error) {
	seq := expected + 1
	var last uint64
	for i, env := range envs {
		m, found, err := s.leaderGet(ctx, domain.StreamKeys, msgGetRequest{Seq: seq, NextFor: filter, NoHeaders: true})
		if err != nil {
			return 0, false, err
		}
		if !found {
			if i > 0 {
				return 0, false, fmt.Errorf("only %d of %d events stored", i, len(envs))
			}
			return 0, false, nil
		}
		var head struct {
			ID uuid.UUID `json:"id"`
		}
		if json.Unmarshal(m.Data, &head) != nil || head.ID != env.ID {
			if i > 0 {
				return 0, false, fmt.Errorf("only %d of %d events stored", i, len(envs))
			}
			return 0, false, nil
		}
		last, seq = m.Sequence, m.Sequence+1
	}
	return last, true, nil
}

func conflict(writes []domain.Write) error {
	var what []string
	for _, w := range writes {
		what = append(what, fmt.Sprintf("%s %s (version %d)", strings.TrimSuffix(w.Events[0].Kind(), "s"), w.Events[0].KeyID, w.Expected))
	}
	return domain.Errorf(domain.ECONFLICT, "version_conflict",
		"%s changed since the command read it", strings.Join(what, " or "))
}

// checkWrites verifies that each write holds lifecycle events of one
// aggregate, that no aggregate appears twice and that the whole fits in one
// atomic batch. It returns each write's subject filter.
func checkWrites(writes []domain.Write) ([]string, error) {
	if len(writes) == 0 {
		return nil, domain.Errorf(domain.EINVALID, "bad_event", "append without events")
	}
	filters := make([]string, len(writes))
	n := 0
	for i, w := range writes {
		kind, id, err := checkAggregate(w.Events)
		if err != nil {
			return nil, err
		}
		filters[i] = aggregateFilter(kind, id)
		if slices.Contains(filters[:i], filters[i]) {
			return nil, domain.Errorf(domain.EINVALID, "bad_event", "two writes of %s %s in one append", kind, id)
		}
		n += len(w.Events)
	}
	if n > maxAtomicBatch {
		return nil, domain.Errorf(domain.EINVALID, "bad_event", "append of %d events exceeds %d", n, maxAtomicBatch)
	}
	return filters, nil
}

// checkAggregate verifies that envs are lifecycle events of one aggregate
// and returns its kind and id.
func checkAggregate(envs []domain.Envelope) (kind, id string, err error) {
	if len(envs) == 0 {
		return "", "", domain.Errorf(domain.EINVALID, "bad_event", "append without events")
	}
	if len(envs) > maxAtomicBatch {
		return "", "", domain.Errorf(domain.EINVALID, "bad_event", "append of %d events exceeds %d", len(envs), maxAtomicBatch)
	}
	kind, id = envs[0].Kind(), envs[0].KeyID
	if !isLifecycleKind(kind) {
		return "", "", domain.Errorf(domain.EINVALID, "bad_event", "event type %q is not a lifecycle event", envs[0].Type)
	}
	if !validToken(id) {
		return "", "", domain.Errorf(domain.EINVALID, "bad_event", "invalid aggregate id %q", id)
	}
	for _, env := range envs {
		if env.Kind() != kind || env.KeyID != id {
			return "", "", domain.Errorf(domain.EINVALID, "bad_event", "events of %s %s and %s %s in one append", kind, id, env.Kind(), env.KeyID)
		}
		if env.ID == uuid.Nil || !domain.KnownEventType(env.Type) {
			return "", "", domain.Errorf(domain.EINVALID, "bad_event", "event without id or of unknown type %q", env.Type)
		}
	}
	return kind, id, nil
}

func isLifecycleKind(kind string) bool {
	switch kind {
	case domain.KindKey, domain.KindPrincipal, domain.KindRole, domain.KindWriter:
		return true
	}
	return false
}

// aggregateFilter is the subject filter matching every event of one
// aggregate: the scope of its version check.
func aggregateFilter(kind, id string) string {
	return "keyledger." + kind + "." + id + ".>"
}

// validToken reports whether s can be one token of a NATS subject: an id
// with a dot, a wildcard or white space would make one aggregate's filter
// match another's events.
func validToken(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for _, r := range s {
		switch {
		case r == '.' || r == '*' || r == '>':
			return false
		case r <= ' ' || r == 0x7f:
			return false
		}
	}
	return true
}
