package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// startPProf serves Go's profiler on --pprof, a loopback address only: a
// profile shows what the hot path spends its time on, and nobody else
// should be able to ask.
func (m *Main) startPProf() error {
	if m.PProf == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(m.PProf)
	if err != nil {
		return fmt.Errorf("--pprof %q: %w", m.PProf, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--pprof %q: the profiler listens on loopback only", m.PProf)
	}
	ln, err := net.Listen("tcp", m.PProf)
	if err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	m.Logger.Info("pprof listening", "addr", ln.Addr().String())
	m.stack.add(layerHTTP, "pprof", serveHTTP(&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, ln))
	return nil
}
