package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
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
	kind, id, err := checkAggregate(envs)
	if err != nil {
		return 0, err
	}
	filter := aggregateFilter(kind, id)
	subject := envs[0].Subject()
	msgs := make([]*nats.Msg, len(envs))
	for i, env := range envs {
		b, err := env.Marshal()
		if err != nil {
			return 0, fmt.Errorf("append %s: %w", env.Subject(), err)
		}
		m := nats.NewMsg(env.Subject())
		m.Data = b
		m.Header.Set(hdrMsgID, env.ID.String())
		m.Header.Set(hdrExpectedStream, domain.StreamKeys)
		msgs[i] = m
	}
	// Only the first message carries the check: inside an atomic batch the
	// server rejects an expected-subject check on a subject the batch has
	// already written, and the batch as a whole either lands right after
	// expected or not at all.
	msgs[0].Header.Set(hdrExpectedSubjSeq, strconv.FormatUint(expected, 10))
	msgs[0].Header.Set(hdrExpectedSubjSeqFor, filter)

	if len(msgs) > 1 && !s.atomic {
		return s.appendEach(ctx, expected, envs)
	}

	for attempt := 1; ; attempt++ {
		ack, err := s.appends.submit(ctx, msgs, filter, true)
		if err == nil && !ack.Duplicate {
			return ack.Seq, nil
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("append %s: %w", subject, ctx.Err())
		}
		if err == nil || isVersionRejection(err) {
			// A duplicate ack, a wrong last sequence or a duplicate in the
			// batch: either someone else moved the aggregate on, or these
			// very events were stored by an earlier attempt whose ack was
			// lost (on a single server the version check runs before the
			// Msg-Id check, so a retry answers "wrong last sequence").
			seq, ours, cerr := s.confirm(ctx, filter, expected, envs)
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
				return 0, fmt.Errorf("append %s: event id %s is already stored elsewhere", subject, envs[0].ID)
			}
			return 0, conflict(kind, id, expected)
		}
		if errors.Is(err, ErrClosed) || !transient(err) || attempt >= maxAppendAttempts {
			return 0, fmt.Errorf("append %s: %w", subject, err)
		}
		s.log.Debug("append retry", "subject", subject, "attempt", attempt, "err", err)
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return 0, fmt.Errorf("append %s: %w", subject, err)
		}
	}
}

// appendEach stores a multi-event append on a server without atomic
// batches: one append per event, each checked against the sequence of the
// one before. A crash between two of them leaves a prefix stored; a retry
// with the same events and expected finds that prefix and completes it.
func (s *Store) appendEach(ctx context.Context, expected uint64, envs []domain.Envelope) (uint64, error) {
	seq := expected
	for i := range envs {
		next, err := s.Append(ctx, seq, envs[i:i+1])
		if err != nil {
			return 0, err
		}
		seq = next
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

func conflict(kind, id string, expected uint64) error {
	return domain.Errorf(domain.ECONFLICT, "version_conflict",
		"%s %s has changed since version %d", strings.TrimSuffix(kind, "s"), id, expected)
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
	case domain.KindKey, domain.KindPrincipal, domain.KindRole:
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
