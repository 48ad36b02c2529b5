package eventstore

import (
	"context"
	"fmt"

	"github.com/keyledger/keyledger/domain"
	"github.com/nats-io/nats.go"
)

// PublishAlert stores an alert on the ALERTS stream under
// keyledger.alerts.<rule>.<severity>, with the event id as Msg-Id: several
// nodes raising the same alert with the same id store it once. It returns
// the alert's stream sequence. Errors: EINVALID for an event that is not an
// alert.
func (s *Store) PublishAlert(ctx context.Context, env domain.Envelope) (uint64, error) {
	if env.Type != domain.TypeAlertRaised {
		return 0, domain.Errorf(domain.EINVALID, "not_an_alert", "event type %q is not an alert", env.Type)
	}
	return s.publishOne(ctx, env)
}

// PublishCheckpoint stores a signed checkpoint on the CHECKPOINTS stream,
// with the event id as Msg-Id. Errors: EINVALID for another event type.
func (s *Store) PublishCheckpoint(ctx context.Context, env domain.Envelope) (uint64, error) {
	if env.Type != domain.TypeCheckpointPublished {
		return 0, domain.Errorf(domain.EINVALID, "not_a_checkpoint", "event type %q is not a checkpoint", env.Type)
	}
	return s.publishOne(ctx, env)
}

func (s *Store) publishOne(ctx context.Context, env domain.Envelope) (uint64, error) {
	data, err := env.Marshal()
	if err != nil {
		return 0, err
	}
	subject := env.Subject()
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(nats.MsgIdHdr, env.ID.String())
	s.signer.sign(m)
	for attempt := 1; ; attempt++ {
		ack, err := s.pub.publishOne(ctx, m)
		if err == nil {
			return ack.Seq, nil
		}
		if ctx.Err() != nil || !transient(err) || attempt >= maxAppendAttempts {
			return 0, fmt.Errorf("publish %s: %w", subject, err)
		}
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return 0, fmt.Errorf("publish %s: %w", subject, err)
		}
	}
}
