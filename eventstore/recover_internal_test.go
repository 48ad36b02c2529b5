package eventstore

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// TestDiskProblem reads health answers the way the disk supervisor does.
// nats-server's readiness check of a server without a listener fails at
// random on a busy machine ("startup did not complete": its 1ms timer
// fired before the check ran again); the supervisor restarted JetStream
// for it under the load of a large catch-up. It is not the disk's problem.
func TestDiskProblem(t *testing.T) {
	race := server.HealthzError{Type: server.HealthzErrorConn, Error: "failed to be ready for connections after 1ms: startup did not complete"}
	broken := server.HealthzError{Type: server.HealthzErrorStream, Account: "$G", Stream: "USAGE", Error: "JetStream stream 'USAGE' has a write error"}
	for _, c := range []struct {
		name string
		h    server.HealthStatus
		want string
	}{
		{"healthy", server.HealthStatus{StatusCode: 200, Status: "ok"}, ""},
		{"readiness race", server.HealthStatus{StatusCode: 500, Status: "error", Errors: []server.HealthzError{race}}, ""},
		{"stream write error", server.HealthStatus{StatusCode: 503, Status: "error", Errors: []server.HealthzError{broken}}, "write error"},
	} {
		if got := diskProblem(&c.h); (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: problem %q, want %q", c.name, got, c.want)
		}
	}

	// A live, healthy server: nothing, and the detailed answer is what
	// diskProblem reads.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Open(ctx, Config{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if why := (&diskSupervisor{s: s}).problem(); why != "" {
		t.Errorf("a healthy server has a disk problem: %s", why)
	}
}
