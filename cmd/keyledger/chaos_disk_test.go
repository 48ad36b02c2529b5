package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore/disktest"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// TestChaosFullDisk runs a node whose data dir (JetStream included) is a
// small file system, fills it up under load with a file of its own, then
// deletes that file. While the disk is full, writes answer 503, /readyz
// fails event_store, and no verification
// answers 200 without its event stored; once space returns the same
// process writes again, and nothing it acknowledged is lost.
func TestChaosFullDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("fault suite: builds and runs the binary")
	}
	backend := chlogtest.MustConnect(t)
	database := "chaos_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	// The long version's minutes of load need room of their own beside
	// the filler: the ledger itself must not fill the disk.
	size := 64 << 20
	if *chaosLong {
		size = 512 << 20
	}
	dir := disktest.SmallFS(t, size)
	root := domain.FormatToken(uuid.Must(uuid.NewV7()), randomSecret(t))
	// The recovery probe creates keys: the long version's load must not
	// bring its principal to the plan limit first.
	n := startChaosNode(t, dir, "KEYLEDGER_ROOT_TOKEN="+root, "KEYLEDGER_CLICKHOUSE="+backend, "KEYLEDGER_CLICKHOUSE_DATABASE="+database,
		"KEYLEDGER_MAX_ACTIVE_KEYS=1000000")
	pid := n.srv.Load().cmd.Process.Pid
	l := chaosSetup(t, n, root)

	r := chaosResult{Fault: fmt.Sprintf("full disk (%d MiB tmpfs)", size>>20)}
	var filler string
	var saw503, sawNotReady atomic.Bool
	r.Recover = underLoad(t, l, &r, func() time.Time {
		filler = disktest.Fill(t, dir)
		// The disk is full until a write has been refused with 503 and
		// /readyz says why, then for a phase.
		checkFor(t, time.Minute, 20*time.Millisecond, func() error {
			if s, b := n.call(l.admin, "POST", "/v1/keys", map[string]any{"name": "full", "permissions": []string{"orders.read"}}); s == http.StatusServiceUnavailable {
				var p api.Problem
				// The command's own append answers store_unavailable;
				// mostly it is refused before, when the record of the
				// caller's authentication cannot be stored ("unavailable").
				if json.Unmarshal(b, &p) == nil && (p.Code == "store_unavailable" || p.Code == "unavailable") {
					saw503.Store(true)
				}
			} else if s == http.StatusCreated {
				// Acknowledged: it must survive like the load's own.
				var k api.CreatedKey
				must(t, json.Unmarshal(b, &k))
				l.mu.Lock()
				l.acked[k.KeyID]++
				l.mu.Unlock()
			}
			if s, rd := readiness(n, ""); s == http.StatusServiceUnavailable && rd.Checks["event_store"] != "ok" && rd.Checks["event_store"] != "" {
				sawNotReady.Store(true)
			}
			if !saw503.Load() || !sawNotReady.Load() {
				return fmt.Errorf("no refused write yet (503 %v, readyz event_store failing %v)", saw503.Load(), sawNotReady.Load())
			}
			return nil
		})
		waitFor(chaosPhase())
		must(t, os.Remove(filler))
		return time.Now()
	}, func() error {
		select {
		case <-n.srv.Load().exited:
			t.Fatalf("keyledger exited on a full disk:\n%s", n.srv.Load().stderr.String())
		default:
		}
		if s, rd := readiness(n, ""); s != http.StatusOK || rd.Checks["event_store"] != "ok" {
			return fmt.Errorf("readyz %d %v", s, rd.Checks)
		}
		s, b := n.call(l.admin, "POST", "/v1/keys", map[string]any{"name": "back", "permissions": []string{"orders.read"}})
		if s != http.StatusCreated {
			return fmt.Errorf("create key after the disk emptied: %d %s", s, b)
		}
		var k api.CreatedKey
		must(t, json.Unmarshal(b, &k))
		l.mu.Lock()
		l.acked[k.KeyID]++
		l.mu.Unlock()
		return nil
	})
	if got := n.srv.Load().cmd.Process.Pid; got != pid {
		t.Fatalf("keyledger was restarted (pid %d, then %d); it must recover by itself", pid, got)
	}
	var back struct {
		After time.Duration `json:"after"` // slog writes a duration in nanoseconds
	}
	if !logLine(n.srv.Load().stderr.String(), "the event store writes again", &back) {
		t.Error(`no "the event store writes again" in the log`)
	}
	// The rest of the time to recover is the subscriptions noticing that
	// their consumers went with the restart (two missed heartbeats).
	t.Logf("the event store wrote again %s after it first refused a write", back.After)
	l.check(t, backend, database, &r)
	logChaosTable(t, []chaosResult{r})
}
