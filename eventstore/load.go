package eventstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go/jetstream"
)

// loadBatch is how many messages one direct-get request asks for.
const loadBatch = 256

// msgGetRequest is JetStream's message get request (nats-server's
// JSApiMsgGetRequest). nats.go v1.55 has no batched direct get, so Load
// speaks the API itself.
type msgGetRequest struct {
	Seq       uint64 `json:"seq,omitempty"`
	LastFor   string `json:"last_by_subj,omitempty"`
	NextFor   string `json:"next_by_subj,omitempty"`
	Batch     int    `json:"batch,omitempty"`
	NoHeaders bool   `json:"no_hdr,omitempty"`
}

type msgGetResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *storedMsg          `json:"message,omitempty"`
}

type storedMsg struct {
	Subject  string `json:"subject"`
	Sequence uint64 `json:"seq"`
	Data     []byte `json:"data,omitempty"`
}

// Load returns every event of one aggregate, oldest first, with Stream and
// Seq set. It reads up to the aggregate's last event at the time of the
// call, so a Load right after an Append sees that append even on a
// replica that lags. An aggregate without events gives an empty slice.
//
// Returns EINVALID for an unknown kind or an id that cannot be a subject
// token.
func (s *Store) Load(ctx context.Context, kind, id string) ([]domain.Envelope, error) {
	if !isLifecycleKind(kind) {
		return nil, domain.Errorf(domain.EINVALID, "bad_aggregate", "unknown aggregate kind %q", kind)
	}
	if !validToken(id) {
		return nil, domain.Errorf(domain.EINVALID, "bad_aggregate", "invalid aggregate id %q", id)
	}
	filter := aggregateFilter(kind, id)
	// The leader answers with the last sequence it has applied, which
	// includes every append acknowledged before this call.
	last, found, err := s.leaderGet(ctx, domain.StreamKeys, msgGetRequest{LastFor: filter, NoHeaders: true})
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", filter, err)
	}
	if !found {
		return nil, nil
	}
	msgs, err := s.directRange(ctx, domain.StreamKeys, filter, last.Sequence)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", filter, err)
	}
	envs := make([]domain.Envelope, 0, len(msgs))
	for _, m := range msgs {
		env, err := domain.UnmarshalEnvelope(m.Data)
		if err != nil {
			return nil, fmt.Errorf("load %s seq %d: %w", filter, m.Sequence, err)
		}
		env.Stream, env.Seq = domain.StreamKeys, m.Sequence
		envs = append(envs, env)
	}
	return envs, nil
}

// leaderGet asks the stream leader for one message. Unlike a direct get,
// which any replica may answer, the leader has applied every publish it
// acknowledged.
func (s *Store) leaderGet(ctx context.Context, stream string, req msgGetRequest) (storedMsg, bool, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return storedMsg{}, false, err
	}
	for attempt := 1; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		resp, err := s.nc.RequestWithContext(rctx, "$JS.API.STREAM.MSG.GET."+stream, body)
		cancel()
		if err == nil {
			var r msgGetResponse
			if err = json.Unmarshal(resp.Data, &r); err == nil {
				switch {
				case r.Error != nil && r.Error.ErrorCode == codeNoMessageFound:
					return storedMsg{}, false, nil
				case r.Error != nil:
					err = r.Error
				case r.Message == nil:
					err = fmt.Errorf("empty message get response")
				default:
					return *r.Message, true, nil
				}
			}
		}
		if ctx.Err() != nil || !transient(err) || attempt >= maxAppendAttempts {
			return storedMsg{}, false, fmt.Errorf("get %s: %w", stream, err)
		}
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return storedMsg{}, false, err
		}
	}
}

// directRange returns the messages on filter up to and including sequence
// upTo, oldest first, using batched direct gets: one request per loadBatch
// messages. A replica that has not yet applied upTo is asked again until
// it has, within the store's timeout.
func (s *Store) directRange(ctx context.Context, stream, filter string, upTo uint64) ([]storedMsg, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	inbox := s.nc.NewInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()

	var out []storedMsg
	next := uint64(1)
	for next <= upTo {
		body, _ := json.Marshal(msgGetRequest{Seq: next, NextFor: filter, Batch: loadBatch})
		if err := s.nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, body); err != nil {
			return nil, err
		}
		progress := false
	batch:
		for {
			m, err := sub.NextMsgWithContext(ctx)
			if err != nil {
				return nil, fmt.Errorf("direct get %s: %w", stream, err)
			}
			switch status := m.Header.Get(hdrStatus); status {
			case "":
			case "204", "404": // End of batch, or nothing at or after next.
				break batch
			default:
				return nil, fmt.Errorf("direct get %s: status %s %s", stream, status, m.Header.Get("Description"))
			}
			seq, err := strconv.ParseUint(m.Header.Get(hdrSequence), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("direct get %s: bad sequence header %q", stream, m.Header.Get(hdrSequence))
			}
			if seq > upTo {
				return out, nil
			}
			out = append(out, storedMsg{Subject: m.Header.Get("Nats-Subject"), Sequence: seq, Data: m.Data})
			next, progress = seq+1, true
			if seq == upTo {
				return out, nil
			}
		}
		if !progress {
			// This replica is behind the leader; it catches up quickly.
			if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
				return nil, fmt.Errorf("direct get %s: replica behind sequence %d: %w", stream, upTo, err)
			}
		}
	}
	return out, nil
}
