package api

import (
	"context"
	_ "embed"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

//go:embed openapi.json
var openapiJSON []byte

//go:embed docs.html
var docsHTML []byte

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// Check is one named readiness check of /readyz.
//
// The checks a node runs (cmd/keyledger wires them; README "Health and
// metrics" says what each means to an operator):
//   - event_store: the event store can take writes (the embedded server's
//     disk is not full, the connection to NATS is up), so commands and
//     durable verifications can be stored;
//   - key_state: the key-state projection has applied every KEYS event, so
//     verifications and commands answer from current state;
//   - audit_chain: the notary has found no event that fails to verify;
//   - audit_log: ClickHouse answers (and the managed server is running), so
//     /v1/logs can search;
//   - audit_sink: the audit log trails JetStream by at most --max-sink-lag
//     events.
//
// Verifications and lifecycle commands never read ClickHouse (their events
// wait in JetStream for the sink), so the audit-log checks are Optional: a
// node whose ClickHouse is down still answers /readyz with 200 ("degraded")
// and keeps its verification traffic, while /readyz?check=audit_log
// answers 503 for whatever routes log searches.
type Check struct {
	// Name is what /readyz reports the check under and what ?check=
	// selects.
	Name string
	// Optional checks are reported without failing /readyz; they fail
	// only the requests that select them with ?check=.
	Optional bool
	// Run returns why the check fails, or nil.
	Run ReadyCheck
}

// Readiness is the body of /readyz.
type Readiness struct {
	// Status is "ready", "degraded" (only optional checks fail; still
	// 200) or "not ready" (503).
	Status string `json:"status"`
	// Checks maps each check run to "ok" or why it failed.
	Checks map[string]string `json:"checks,omitempty"`
	// Problems says why each failing check failed.
	Problems []string `json:"problems,omitempty"`
}

// readyz runs the readiness checks: every one, or those named by
// ?check=a,b. It answers 503 when a selected check fails, except that
// without ?check= an Optional check only makes the answer "degraded".
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := append([]Check(nil), s.cfg.Checks...)
	for i, c := range s.cfg.Ready {
		checks = append(checks, Check{Name: fmt.Sprintf("check_%d", i+1), Run: c})
	}
	selected := checks
	if q := r.URL.Query().Get("check"); q != "" {
		selected = nil
		for _, name := range strings.Split(q, ",") {
			i := slices.IndexFunc(checks, func(c Check) bool { return c.Name == strings.TrimSpace(name) })
			if i < 0 {
				writeJSON(w, http.StatusNotFound, Readiness{Status: "not ready", Problems: []string{fmt.Sprintf("no readiness check %q", name)}})
				return
			}
			c := checks[i]
			c.Optional = false
			selected = append(selected, c)
		}
	}
	// The checks run at once: each may wait on a server that is down, and
	// together they must stay within the probe's deadline.
	errs := make([]error, len(selected))
	var wg sync.WaitGroup
	for i, c := range selected {
		wg.Go(func() { errs[i] = c.Run(ctx) })
	}
	wg.Wait()
	out := Readiness{Status: "ready", Checks: map[string]string{}}
	status := http.StatusOK
	for i, c := range selected {
		if errs[i] == nil {
			out.Checks[c.Name] = "ok"
			continue
		}
		out.Checks[c.Name] = errs[i].Error()
		out.Problems = append(out.Problems, c.Name+": "+errs[i].Error())
		if c.Optional {
			if status == http.StatusOK {
				out.Status = "degraded"
			}
			continue
		}
		out.Status, status = "not ready", http.StatusServiceUnavailable
	}
	writeJSON(w, status, out)
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openapiJSON)
}

func (s *Server) docs(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(docsHTML)
}

// OpenAPI returns the served OpenAPI document.
func OpenAPI() []byte { return append([]byte(nil), openapiJSON...) }

// Bootstrap makes sure a super administrator exists and can act (see the
// command service's Bootstrap).
func (s *Server) Bootstrap(ctx context.Context, rootToken string) (token string, created bool, err error) {
	return s.cfg.Commands.Bootstrap(ctx, rootToken)
}
