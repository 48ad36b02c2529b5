package keystate

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// UsageRecorder stores usage events. Publish returns once the events are
// stored durably (or, in an asynchronous mode, accepted into a bounded
// buffer); it never drops an event silently.
type UsageRecorder interface {
	Publish(ctx context.Context, envs ...domain.Envelope) error
}

// Verifier answers verifications from the projection and records every one
// of them, malformed and unknown tokens included, as a usage event.
type Verifier struct {
	State *Projection
	Usage UsageRecorder
	Now   func() time.Time
	NewID func() uuid.UUID
}

// Request is one verification.
type Request struct {
	Token      string
	Permission string
	// IP is the address the token was presented from; the zero value
	// means unknown, which only keys without an IP restriction accept.
	IP netip.Addr
	// Actor is who asked: the verifying service's principal. CallerKey
	// and CallerIP are the key it authenticated with and where it called
	// from, recorded in the verification's event.
	Actor     string
	CallerKey string
	CallerIP  string
	Context   *domain.RequestContext
}

// Result is the outcome of a verification.
type Result struct {
	Code string
	// Key is the key the token named, when it exists (Code is not
	// MALFORMED or NOT_FOUND).
	Key   domain.Key
	Found bool
	// OwnerPermissions are the permissions the key's owner held when it
	// was checked (shared: do not modify); see Permissions.
	OwnerPermissions []string
	// EventID is the id of the usage event that records this verification.
	EventID uuid.UUID

	tokenKeyID uuid.UUID // the id the token names, unless MALFORMED
}

// Permissions are the key's effective permissions: those of its own that
// its owner holds now (domain.EffectivePermissions). Verification answers
// show these, never the key's list alone.
func (r Result) Permissions() []string {
	return domain.EffectivePermissions(r.Key.Permissions, r.OwnerPermissions)
}

// Valid reports whether the verification succeeded.
func (r Result) Valid() bool { return r.Code == domain.OutcomeValid }

// Verify runs the verification path: parse and checksum, lookup, constant-
// time secret comparison, status, source address, permission. The error is
// non-nil only when the usage event could not be recorded; the result must
// then not be acted on, because the log would not show it.
func (v *Verifier) Verify(ctx context.Context, req Request) (Result, error) {
	res, env, err := v.Decide(req)
	if err != nil {
		return Result{}, err
	}
	if err := v.Usage.Publish(ctx, env); err != nil {
		return Result{}, fmt.Errorf("record verification: %w", err)
	}
	return res, nil
}

// Decide computes the outcome and its usage event without recording it.
func (v *Verifier) Decide(req Request) (Result, domain.Envelope, error) {
	now := v.Now()
	res := v.Check(req, now)
	return v.event(req, res, now)
}

// Check computes the outcome of req at now, and nothing else: it neither
// builds nor records the usage event. A replica's hot path runs it and
// records the event on its own terms; Decide is Check and the event.
func (v *Verifier) Check(req Request, now time.Time) Result {
	var res Result
	tok, err := domain.ParseToken(req.Token)
	if err != nil {
		res.Code = domain.OutcomeMalformed
	} else {
		res.tokenKeyID = tok.KeyID
		k, owner, ok := v.State.KeyForVerify(tok.KeyID)
		res.Key, res.Found, res.OwnerPermissions = k, ok, owner.Permissions
		// The key's effective permissions are those of its own that its
		// owner holds now.
		res.Code = domain.Check(k, tok.Secret, now, req.IP, req.Permission, owner.Permissions)
		switch res.Code {
		case domain.OutcomeNotFound:
			res.Key, res.Found = domain.Key{}, false
		case domain.OutcomeValid:
			// A disabled owner's keys stop working with it.
			if owner.Disabled {
				res.Code = domain.OutcomeDisabled
			}
		}
	}
	return res
}

// Event builds the sealed usage event that records res, the outcome Check
// computed for req at now, and returns res with its EventID set. A caller
// that needs the event only on some paths checks first and builds it
// there.
func (v *Verifier) Event(req Request, res Result, now time.Time) (Result, domain.Envelope, error) {
	return v.event(req, res, now)
}

// event builds the usage event that records res, the outcome of req.
func (v *Verifier) event(req Request, res Result, now time.Time) (Result, domain.Envelope, error) {
	keyID := domain.UnknownKeyID
	if res.Code != domain.OutcomeMalformed {
		keyID = res.tokenKeyID.String()
	}
	var ev domain.Event
	if res.Code == domain.OutcomeValid {
		ev = domain.KeyUsed{Code: res.Code, Owner: res.Key.Owner, Permission: req.Permission, CallerKey: req.CallerKey, CallerIP: req.CallerIP}
	} else {
		d := domain.KeyDenied{Code: res.Code, Owner: res.Key.Owner, Permission: req.Permission, CallerKey: req.CallerKey, CallerIP: req.CallerIP}
		if res.Code == domain.OutcomeMalformed || res.Code == domain.OutcomeNotFound || res.Code == domain.OutcomeInvalidSecret {
			// A hash lets alert rules count repeated guesses with one
			// token without the token itself ever being stored.
			d.TokenHash = domain.HashToken(req.Token)
		}
		ev = d
	}
	rc := req.Context
	if req.IP.IsValid() {
		c := domain.RequestContext{SourceIP: req.IP.String()}
		if rc != nil {
			c.RequestID, c.UserAgent = rc.RequestID, rc.UserAgent
		}
		rc = &c
	}
	env, err := domain.NewEnvelope(v.NewID(), keyID, ev, now, req.Actor, rc)
	if err != nil {
		return Result{}, domain.Envelope{}, err
	}
	env.Seal("")
	res.EventID = env.ID
	return res, env, nil
}
