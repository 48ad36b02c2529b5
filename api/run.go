package api

import (
	"context"
	"sync"
)

// Run keeps the server's background work going until ctx ends: the node's
// one alert subscription that feeds every alert stream, and the storing of
// failed-authentication summaries as their windows end. When ctx ends it
// ends the alert streams, stores every summary left and returns nil. A
// server that serves must be run: without it alert streams receive nothing
// and summaries are never stored.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if s.hub != nil {
		wg.Go(func() { s.hub.run(ctx) })
	}
	wg.Go(func() { s.runFailureSummaries(ctx) })
	wg.Wait()
	return nil
}
