package main

import (
	"log/slog"
	"os"
	"runtime/debug"
)

// serveGCPercent is the garbage collector's target for serve when GOGC is
// not set: the heap may grow to five times what is live between
// collections, instead of twice. Under verification load most of what the
// node allocates (requests, events, audit-log columns) is garbage within a
// second, so the default of 100 spends CPU on collections and on giving
// memory back to the kernel only to fault it in again.
const serveGCPercent = 400

// tuneGC applies serveGCPercent unless the operator chose with GOGC.
func tuneGC(log *slog.Logger) {
	if os.Getenv("GOGC") != "" {
		return
	}
	debug.SetGCPercent(serveGCPercent)
	log.Debug("gc target set", "gogc", serveGCPercent)
}
