package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/keyledger/keyledger/api"
)

// /readyz fails only on required checks; an optional one (the audit log)
// makes it "degraded" and fails only when selected with ?check=.
func TestReadyzChecks(t *testing.T) {
	var logDown, stateBehind error
	srv := api.New(api.Config{Checks: []api.Check{
		{Name: "key_state", Run: func(context.Context) error { return stateBehind }},
		{Name: "audit_log", Optional: true, Run: func(context.Context) error { return logDown }},
	}})
	get := func(path string) (int, api.Readiness) {
		t.Helper()
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		var r api.Readiness
		if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v: %s", path, err, rec.Body)
		}
		return rec.Code, r
	}
	for _, c := range []struct {
		name                 string
		logDown, stateBehind error
		path                 string
		status               int
		want                 string
	}{
		{"all well", nil, nil, "/readyz", 200, "ready"},
		{"audit log down: still routed", errors.New("ClickHouse does not answer"), nil, "/readyz", 200, "degraded"},
		{"audit log down: log route", errors.New("ClickHouse does not answer"), nil, "/readyz?check=audit_log", 503, "not ready"},
		{"audit log up: log route", nil, errors.New("behind"), "/readyz?check=audit_log", 200, "ready"},
		{"key state behind", nil, errors.New("key-state projection at 1 of 2"), "/readyz", 503, "not ready"},
		{"unknown check", nil, nil, "/readyz?check=nope", 404, "not ready"},
	} {
		logDown, stateBehind = c.logDown, c.stateBehind
		status, r := get(c.path)
		if status != c.status || r.Status != c.want {
			t.Errorf("%s: %s answers %d %q, want %d %q (%+v)", c.name, c.path, status, r.Status, c.status, c.want, r)
		}
		if c.logDown != nil && c.path == "/readyz" && r.Checks["audit_log"] != c.logDown.Error() {
			t.Errorf("%s: checks = %v, want the audit log's reason", c.name, r.Checks)
		}
	}
}
