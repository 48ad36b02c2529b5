package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// load sends b.N POST requests to url from conc concurrent clients over
// keep-alive loopback connections and reports requests/s and p99 latency.
// The same generator drives every handler compared below.
func load(b *testing.B, url, token string, body []byte, conc int) {
	tr := &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+token)
				t0 := time.Now()
				res, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					failed.Add(1)
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d requests failed", n, b.N)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
}

// BenchmarkVerifyHTTP compares POST /v1/verify on a real node (embedded
// JetStream with fsync on every write, usage events group-committed before
// each answer) with a bare net/http handler that returns a fixed JSON body,
// both driven by the same load generator in the same run.
func BenchmarkVerifyHTTP(b *testing.B) {
	const conc = 32
	b.Run("bare", func(b *testing.B) {
		fixed, _ := json.Marshal(map[string]any{"valid": true, "code": "VALID", "key_id": "01a21a52-3c6c-751b-9f8c-81c09ab34616"})
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(fixed)
		}))
		defer ts.Close()
		load(b, ts.URL, "x", []byte(`{"token":"x"}`), conc)
	})
	for _, mode := range []struct {
		name  string
		async bool
	}{{"keyledger-durable", false}, {"keyledger-async", true}} {
		b.Run(mode.name, func(b *testing.B) {
			h := mustStartWith(b, eventstore.Config{}, eventstore.UsageConfig{Async: mode.async})
			_, verifier := h.principal("verifier", domain.RoleVerifier, domain.RoleKeyAdmin)
			k := createKey(nil, h, verifier, map[string]any{"name": "bench", "permissions": []string{"api.verify"}})
			body, _ := json.Marshal(map[string]string{"token": k.Token, "permission": "api.verify", "ip": "10.0.0.1"})
			load(b, h.ts.URL+"/v1/verify", verifier, body, conc)
		})
	}
}

// discardUsage accepts usage events and keeps only their count. It stands
// in for the usage publisher in BenchmarkVerifyHandler so that the figure
// is the handler's own CPU and allocations; storing the event is measured
// by BenchmarkVerifyHTTP and the eventstore benchmarks.
type discardUsage struct{ n atomic.Int64 }

func (d *discardUsage) Publish(_ context.Context, envs ...domain.Envelope) error {
	d.n.Add(int64(len(envs)))
	return nil
}

// BenchmarkVerifyHandler is one POST /v1/verify through the server's
// handler, in process and without a listener: authentication, decoding,
// the decision, the usage event and the answer.
func BenchmarkVerifyHandler(b *testing.B) {
	usage := &discardUsage{}
	h := mustStartWith(b, eventstore.Config{NoSync: true}, eventstore.UsageConfig{}, func(c *api.Config) { c.Usage = usage })
	_, verifier := h.principal("verifier", domain.RoleVerifier, domain.RoleKeyAdmin)
	k := createKey(nil, h, verifier, map[string]any{"name": "bench", "permissions": []string{"api.verify"}, "allowed_ips": []string{"10.0.0.0/8"}})
	body, _ := json.Marshal(map[string]string{"token": k.Token, "permission": "api.verify", "ip": "10.0.0.1"})
	before := usage.n.Load()
	b.ReportAllocs()
	for b.Loop() {
		req, _ := http.NewRequest("POST", "/v1/verify", bytes.NewReader(body))
		req.RemoteAddr = "192.0.2.1:1234"
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+verifier)
		rec := httptest.NewRecorder()
		h.srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || !bytes.Contains(rec.Body.Bytes(), []byte(`"valid":true`)) {
			b.Fatalf("verify: %d %s", rec.Code, rec.Body)
		}
	}
	if got := usage.n.Load() - before; got != int64(b.N) {
		b.Fatalf("%d usage events for %d verifications", got, b.N)
	}
}
