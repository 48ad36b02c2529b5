package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
)

// TestUsageBatchIsIdempotentAndRejectsPerRecord sends one batch twice: the
// valid records are stored once each (one copy in JetStream and in
// ClickHouse, with the service's fields), and each bad record comes back
// with its own reason while the others are stored.
func TestUsageBatchIsIdempotentAndRejectsPerRecord(t *testing.T) {
	h := mustStartWithLog(t)
	gwID, gw := h.principal("gateway", domain.RoleVerifier)
	_, adm := h.principal("payments", domain.RoleKeyAdmin)
	k := createKey(t, h, adm, map[string]any{"name": "checkout"})

	batch := map[string]any{"records": []map[string]any{
		{"record_id": "gw-1", "key_id": k.KeyID, "outcome": "VALID", "source_ip": "10.1.2.3", "permission": "orders.read",
			"request_id": "req-1", "endpoint": "GET /orders/{id}", "http_status": 200, "units": 3},
		{"record_id": "gw-2", "key_id": k.KeyID, "outcome": "INSUFFICIENT_PERMISSIONS", "permission": "orders.write",
			"endpoint": "POST /orders", "http_status": 403},
		{"record_id": "gw-3", "key_id": uuid.NewString(), "outcome": "VALID"},
		{"record_id": "gw-4", "key_id": "not-a-key", "outcome": "VALID"},
		{"record_id": "", "key_id": k.KeyID, "outcome": "VALID"},
		{"record_id": "gw-6", "key_id": k.KeyID, "outcome": "FINE"},
		{"record_id": "gw-7", "key_id": k.KeyID, "outcome": "VALID", "source_ip": "10.1.2.300"},
		{"record_id": "gw-8", "key_id": k.KeyID, "outcome": "VALID", "http_status": 42},
		{"record_id": "gw-1", "key_id": k.KeyID, "outcome": "VALID"},
	}}
	wantCodes := []string{"", "", "key_not_found", "invalid_key_id", "missing_record_id", "invalid_outcome", "invalid_ip", "invalid_http_status", "duplicate_record_id"}

	before := h.events(domain.StreamUsage)
	var first api.UsageResponse
	for round := range 2 {
		r := h.do("POST", "/v1/usage", gw, batch)
		if r.status != http.StatusOK {
			t.Fatalf("round %d: %d %s", round, r.status, r.body)
		}
		var out api.UsageResponse
		r.json(t, &out)
		if got, want := out.Stored, 2; got != want {
			t.Errorf("round %d: stored %d, want %d", round, got, want)
		}
		if got, want := out.Rejected, len(wantCodes)-2; got != want {
			t.Errorf("round %d: rejected %d, want %d", round, got, want)
		}
		for i, res := range out.Results {
			if res.Index != i || res.Code != wantCodes[i] || res.Stored != (wantCodes[i] == "") {
				t.Errorf("round %d: result %d = %+v, want code %q", round, i, res, wantCodes[i])
			}
			if res.Code != "" && res.Detail == "" {
				t.Errorf("round %d: result %d has no detail", round, i)
			}
		}
		if round == 0 {
			first = out
		} else if out.Results[0].EventID != first.Results[0].EventID || out.Results[1].EventID != first.Results[1].EventID {
			t.Errorf("a retried record got another event id: %+v then %+v", first.Results[:2], out.Results[:2])
		}
	}
	// Two records, and the service's two authentications.
	if got, want := h.events(domain.StreamUsage)-before, uint64(4); got != want {
		t.Errorf("USAGE grew by %d events, want %d", got, want)
	}
	h.syncLog()

	// Count raw rows, not FINAL ones: ClickHouse must hold one copy, not
	// two that a merge would fold.
	var n uint64
	err := h.ch.Conn().QueryRow(context.Background(),
		`SELECT count() FROM `+chlog.Table+` WHERE key_id = ? AND kind = 'usage' AND service = ?`, k.KeyID, gwID).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("ClickHouse holds %d usage rows of the service for the key, want 2", n)
	}
	row, err := h.ch.Event(context.Background(), first.Results[0].EventID)
	if err != nil {
		t.Fatal(err)
	}
	if row.Type != domain.TypeKeyUsed || row.Actor != gwID || row.Service != gwID || row.SourceIP != "10.1.2.3" || row.RequestID != "req-1" || row.Outcome != "VALID" {
		t.Errorf("stored row %+v", row)
	}
	var data struct {
		Data domain.KeyUsed `json:"data"`
	}
	if err := json.Unmarshal([]byte(row.Raw), &data); err != nil {
		t.Fatal(err)
	}
	if got, want := data.Data.ServiceUsage, (domain.ServiceUsage{RecordID: "gw-1", Endpoint: "GET /orders/{id}", HTTPStatus: 200, Units: 3}); got != want {
		t.Errorf("service fields %+v, want %+v", got, want)
	}
	denied, err := h.ch.Event(context.Background(), first.Results[1].EventID)
	if err != nil {
		t.Fatal(err)
	}
	if denied.Type != domain.TypeKeyDenied || denied.Outcome != domain.OutcomeInsufficientPermissions {
		t.Errorf("denied row %+v", denied)
	}
}

// TestUsageNeedsPublishPermission: a key-admin may not publish usage, and
// a batch that is not a batch is refused as a whole.
func TestUsageNeedsPublishPermission(t *testing.T) {
	h := mustStart(t)
	_, adm := h.principal("payments", domain.RoleKeyAdmin)
	_, gw := h.principal("gateway", domain.RoleVerifier)
	k := createKey(t, h, adm, map[string]any{"name": "checkout"})
	one := map[string]any{"records": []map[string]any{{"record_id": "a", "key_id": k.KeyID, "outcome": "VALID"}}}
	if r := h.do("POST", "/v1/usage", adm, one); r.status != http.StatusForbidden || r.problemCode(t) != "insufficient_permissions" {
		t.Errorf("key-admin: %d %s", r.status, r.body)
	}
	many := make([]map[string]any, api.MaxUsageRecords+1)
	for i := range many {
		many[i] = map[string]any{"record_id": strings.Repeat("r", 1), "key_id": k.KeyID, "outcome": "VALID"}
	}
	for body, code := range map[string]string{
		`{"records":[]}`:  "no_records",
		`{"records":{}}`:  "invalid_json",
		`{"recs":[]}`:     "invalid_json",
		mustJSON(t, many): "too_many_records",
	} {
		if r := h.do("POST", "/v1/usage", gw, body); r.status/100 != 4 || r.problemCode(t) != code {
			t.Errorf("%.40s: %d %s, want %s", body, r.status, r.body, code)
		}
	}
}

func mustJSON(t *testing.T, records []map[string]any) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{"records": records})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
