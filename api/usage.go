package api

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// MaxUsageRecords bounds the records of one POST /v1/usage batch: one
// batch is one group commit, which the server caps at 1000 messages.
const MaxUsageRecords = 500

// usageNamespace is the UUIDv5 namespace of the ids of usage events that
// services publish: a record's event id is derived from its publisher and
// the record id the service chose, so a retried batch carries the same
// Nats-Msg-Id and JetStream stores each record once.
var usageNamespace = uuid.MustParse("6c1d3a1e-52b5-4c1f-9a7e-0b6f3d2a9c41")

// UsageEventID is the id of the event that stores record recordID
// published by principal publisher through POST /v1/usage.
func UsageEventID(publisher, recordID string) uuid.UUID {
	return uuid.NewSHA1(usageNamespace, []byte(publisher+"\x00"+recordID))
}

type usageRequest struct {
	Records []usageRecord `json:"records"`
}

// usageRecord is one verification a service made itself (from its own
// replica) or one request it served with a key.
type usageRecord struct {
	RecordID   string `json:"record_id"`
	KeyID      string `json:"key_id"`
	Outcome    string `json:"outcome"`
	SourceIP   string `json:"source_ip"`
	Permission string `json:"permission"`
	RequestID  string `json:"request_id"`
	Endpoint   string `json:"endpoint"`
	HTTPStatus int    `json:"http_status"`
	Units      int64  `json:"units"`
}

// UsageResult is the answer for one record, at the record's index.
type UsageResult struct {
	Index    int    `json:"index"`
	RecordID string `json:"record_id"`
	Stored   bool   `json:"stored"`
	// EventID is the id of the event that stores the record: the same
	// for a retried record, which is stored only once.
	EventID string `json:"event_id,omitempty"`
	// Code and Detail say why the record was rejected.
	Code   string `json:"code,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// UsageResponse answers POST /v1/usage.
type UsageResponse struct {
	Stored   int           `json:"stored"`
	Rejected int           `json:"rejected"`
	Results  []UsageResult `json:"results"`
}

// publishUsage stores usage records a service observed. Each record is
// validated on its own; the valid ones are stored in one group commit,
// marked with the publishing service, and the answer lists every record's
// fate.
func (s *Server) publishUsage(w http.ResponseWriter, r *http.Request, c caller, pending authEvent) {
	// The service's own authentication is stored in the same group
	// commit as its records.
	var req usageRequest
	if err := decode(r, &req); err != nil {
		s.publishOrFail(w, r, pending, err)
		return
	}
	if len(req.Records) == 0 {
		s.publishOrFail(w, r, pending, domain.Errorf(domain.EINVALID, "no_records", "records must hold at least one record"))
		return
	}
	if len(req.Records) > MaxUsageRecords {
		s.publishOrFail(w, r, pending, domain.Errorf(domain.EINVALID, "too_many_records", "at most %d records per batch, got %d", MaxUsageRecords, len(req.Records)))
		return
	}
	now := s.cfg.Now()
	out := UsageResponse{Results: make([]UsageResult, len(req.Records))}
	envs, err := s.authEvents(pending)
	if err != nil {
		s.problem(w, r, err)
		return
	}
	seen := make(map[string]bool, len(req.Records))
	for i, rec := range req.Records {
		res := UsageResult{Index: i, RecordID: rec.RecordID}
		env, err := s.usageEvent(c.Principal.ID, rec, now)
		if err == nil && seen[rec.RecordID] {
			err = domain.Errorf(domain.EINVALID, "duplicate_record_id", "record_id %q appears twice in this batch", rec.RecordID)
		}
		if err != nil {
			res.Code, res.Detail = domain.ErrorReason(err), domain.ErrorMessage(err)
			out.Rejected++
		} else {
			seen[rec.RecordID] = true
			res.Stored, res.EventID = true, env.ID.String()
			envs = append(envs, env)
			out.Stored++
		}
		out.Results[i] = res
	}
	if err := s.publishOnce(r.Context(), envs); err != nil {
		s.log.ErrorContext(r.Context(), "publish service usage", "records", len(envs), "err", err)
		s.problem(w, r, errUnavailable)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// usageEvent validates one record and builds its event.
func (s *Server) usageEvent(publisher string, rec usageRecord, now time.Time) (domain.Envelope, error) {
	if err := checkText("record_id", rec.RecordID, 1, 128); err != nil {
		return domain.Envelope{}, err
	}
	id, err := uuid.Parse(rec.KeyID)
	if err != nil || id.String() != rec.KeyID {
		return domain.Envelope{}, domain.Errorf(domain.EINVALID, "invalid_key_id", "key_id %q is not a key id", rec.KeyID)
	}
	k, found := s.cfg.State.Key(rec.KeyID)
	if !found {
		return domain.Envelope{}, domain.Errorf(domain.ENOTFOUND, "key_not_found", "no key %s", rec.KeyID)
	}
	if !slices.Contains(domain.Outcomes, rec.Outcome) {
		return domain.Envelope{}, domain.Errorf(domain.EINVALID, "invalid_outcome", "outcome %q is not an outcome code", rec.Outcome)
	}
	if rec.Permission != "" && !domain.ValidPermission(rec.Permission) {
		return domain.Envelope{}, domain.Errorf(domain.EINVALID, "invalid_permission", "invalid permission %q", rec.Permission)
	}
	rc := domain.RequestContext{}
	if rec.SourceIP != "" {
		a, err := netip.ParseAddr(strings.TrimSpace(rec.SourceIP))
		if err != nil || a.Zone() != "" {
			return domain.Envelope{}, domain.Errorf(domain.EINVALID, "invalid_ip", "source_ip %q is not an IP address", rec.SourceIP)
		}
		rc.SourceIP = a.Unmap().String()
	}
	if err := checkText("request_id", rec.RequestID, 0, 128); err != nil {
		return domain.Envelope{}, err
	}
	rc.RequestID = rec.RequestID
	if err := checkText("endpoint", rec.Endpoint, 0, 256); err != nil {
		return domain.Envelope{}, err
	}
	if rec.HTTPStatus != 0 && (rec.HTTPStatus < 100 || rec.HTTPStatus > 599) {
		return domain.Envelope{}, domain.Errorf(domain.EINVALID, "invalid_http_status", "http_status %d is not an HTTP status", rec.HTTPStatus)
	}
	if rec.Units < 0 {
		return domain.Envelope{}, domain.Errorf(domain.EINVALID, "invalid_units", "units must not be negative")
	}
	su := domain.ServiceUsage{RecordID: rec.RecordID, Endpoint: rec.Endpoint, HTTPStatus: rec.HTTPStatus, Units: rec.Units}
	var ev domain.Event
	if rec.Outcome == domain.OutcomeValid {
		ev = domain.KeyUsed{Code: rec.Outcome, Owner: k.Owner, Permission: rec.Permission, Service: publisher, ServiceUsage: su}
	} else {
		ev = domain.KeyDenied{Code: rec.Outcome, Owner: k.Owner, Permission: rec.Permission, Service: publisher, ServiceUsage: su}
	}
	var ctx *domain.RequestContext
	if rc != (domain.RequestContext{}) {
		ctx = &rc
	}
	env, err := domain.NewEnvelope(UsageEventID(publisher, rec.RecordID), rec.KeyID, ev, now, publisher, ctx)
	if err != nil {
		return domain.Envelope{}, err
	}
	env.Seal("")
	return env, nil
}

// checkText checks a free-text field's length (in bytes) and that it has
// no control characters.
func checkText(field, v string, minLen, maxLen int) error {
	if len(v) < minLen || len(v) > maxLen {
		if minLen > 0 && v == "" {
			return domain.Errorf(domain.EINVALID, "missing_"+field, "%s is required", field)
		}
		return domain.Errorf(domain.EINVALID, "invalid_"+field, "%s must be %d to %d bytes", field, minLen, maxLen)
	}
	if strings.IndexFunc(v, unicode.IsControl) >= 0 {
		return domain.Errorf(domain.EINVALID, "invalid_"+field, "%s must not contain control characters", field)
	}
	return nil
}

// OnceRecorder is a usage recorder that also stores events idempotently:
// a batch of records retried with the same record ids stores none twice
// (eventstore.UsagePublisher.PublishOnce).
type OnceRecorder interface {
	PublishOnce(ctx context.Context, envs ...domain.Envelope) error
}

// publishOnce stores the events of services' usage records, once each.
func (s *Server) publishOnce(ctx context.Context, envs []domain.Envelope) error {
	if o, ok := s.cfg.Usage.(OnceRecorder); ok {
		return o.PublishOnce(ctx, envs...)
	}
	return s.cfg.Usage.Publish(ctx, envs...)
}
