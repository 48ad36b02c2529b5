package main

import (
	"log/slog"
	"os"
	"runtime/debug"
)

// serveGCPercent is the garbage collector's target for serve when GOGC is
// not set: the heap may grow to three times what is live between
// collections, instead of twice. Under verification load most of what the
// node allocates (requests, events, audit-log rows) is garbage within a
// second, so the default of 100 spends CPU on collections. A higher target
// costs memory in proportion to what is live: with 100k keys and 1M KEYS
// events a node held 0.83 GB at 100, 1.2 GB at 200 and 2.2 GB at 400, 25 s
// after its start, for no CPU saved beyond 200 that the served benchmark
// could tell from its noise.
const serveGCPercent = 200

// tuneGC applies serveGCPercent unless the operator chose with GOGC.
func tuneGC(log *slog.Logger) {
	if os.Getenv("GOGC") != "" {
		return
	}
	debug.SetGCPercent(serveGCPercent)
	log.Debug("gc target set", "gogc", serveGCPercent)
}
