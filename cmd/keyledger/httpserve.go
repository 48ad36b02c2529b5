package main

import (
	"context"
	"crypto/tls"
	"flag"
	"log/slog"
	"net/http"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// httpFlags bound what a client of the HTTP listener may cost: how long it
// may take to send a request, to read an answer and to hold an idle
// connection, how many failed authentications one address may make, and
// how many alert streams may be open.
type httpFlags struct {
	HTTPReadTimeout  time.Duration
	HTTPWriteTimeout time.Duration
	HTTPIdleTimeout  time.Duration
	// AuthFailureBudget failed authentications per address and
	// AuthFailureWindow are recorded one by one; past it 429.
	AuthFailureBudget int
	AuthFailureWindow time.Duration
	// AlertStreamsPerPrincipal and AlertStreamsTotal cap the open
	// GET /v1/alerts/stream connections; past them 429.
	AlertStreamsPerPrincipal int
	AlertStreamsTotal        int
}

// The headers of a request are read within readHeaderTimeout and may take
// maxHeaderBytes at most (a larger one is answered 431).
const (
	readHeaderTimeout = 10 * time.Second
	maxHeaderBytes    = 32 << 10
)

func (c *httpFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&c.HTTPReadTimeout, "http-read-timeout", 30*time.Second, "longest a client may take to send a whole request, body included")
	fs.DurationVar(&c.HTTPWriteTimeout, "http-write-timeout", 60*time.Second, "longest an answer may take to write, from the end of its request (alert streams and log exports instead bound each write)")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", 60*time.Second, "longest a keep-alive connection may wait idle for its next request")
	fs.IntVar(&c.AuthFailureBudget, "auth-failure-budget", 20, "failed authentications one address may make per --auth-failure-window, each recorded; past it 429 too_many_failures and one summary event")
	fs.DurationVar(&c.AuthFailureWindow, "auth-failure-window", time.Minute, "window of --auth-failure-budget")
	fs.IntVar(&c.AlertStreamsPerPrincipal, "alert-streams-per-principal", 4, "alert streams one principal may hold open; past it 429")
	fs.IntVar(&c.AlertStreamsTotal, "alert-streams", 256, "alert streams this node serves at once; past it 429")
}

// apiLimits are the API's share of the HTTP limits.
func (c *httpFlags) apiLimits(cfg *api.Config) {
	cfg.AuthFailures = api.FailureLimits{Budget: c.AuthFailureBudget, Window: c.AuthFailureWindow}
	cfg.AlertStreams = api.AlertStreamLimits{PerPrincipal: c.AlertStreamsPerPrincipal, Total: c.AlertStreamsTotal, WriteTimeout: c.HTTPWriteTimeout}
}

// httpServer is the HTTP listener's server with every limit set.
func (m *Main) httpServer(h http.Handler, tlsCfg *tls.Config) *http.Server {
	return &http.Server{
		Handler: h, TLSConfig: tlsCfg,
		ReadHeaderTimeout: min(readHeaderTimeout, m.HTTPReadTimeout),
		ReadTimeout:       m.HTTPReadTimeout,
		WriteTimeout:      m.HTTPWriteTimeout,
		IdleTimeout:       m.HTTPIdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(m.Logger.Handler(), slog.LevelWarn),
	}
}

// alertFeed tails the ALERTS stream: the API holds one such subscription
// per node and fans it out to every alert stream.
type alertFeed struct{ store *eventstore.Store }

func (f alertFeed) TailAlerts(ctx context.Context, fn func(domain.Envelope) error) error {
	last, err := f.store.LastSeq(ctx, domain.StreamAlerts)
	if err != nil {
		return err
	}
	sub, err := f.store.Subscribe(ctx, domain.StreamAlerts, last+1, func(env domain.Envelope) error {
		if env.Forged != nil {
			return nil // quarantined: no node wrote it
		}
		return fn(env)
	})
	if err != nil {
		return err
	}
	<-sub.Done()
	return sub.Err()
}
