package api_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections/notary"
)

// mustStartWithNotary starts a harness whose notary checkpoints every
// event, so proofs are available as soon as it has folded them.
func mustStartWithNotary(tb testing.TB) (*harness, *notary.Notary) {
	tb.Helper()
	var n *notary.Notary
	h := mustStartWith(tb, eventstore.Config{NoSync: true}, eventstore.UsageConfig{}, func(c *api.Config) {
		st := c.Store.(*eventstore.Store)
		n = notary.New(st.JetStream(), st, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)),
			notary.Config{Every: 1, Interval: 50 * time.Millisecond}, nil)
		c.Audit = n
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	// Registered after the harness's cleanup, so it runs first: the
	// notary stops before the store it reads.
	tb.Cleanup(func() { cancel(); <-done })
	return h, n
}

// poll retries f until it succeeds or 10 seconds have passed.
func poll(tb testing.TB, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAuditProofOfAKeyEvent proves a key's creation over HTTP and checks
// the proof with nothing but the event's stored bytes and the public key
// the API serves; the same proof does not hold for altered bytes.
func TestAuditProofOfAKeyEvent(t *testing.T) {
	h, _ := mustStartWithNotary(t)
	_, admin := h.principal("admin", domain.RoleKeyAdmin)
	_, auditor := h.principal("auditor", domain.RoleAuditor)
	r := h.do("POST", "/v1/keys", admin, map[string]any{"name": "proved"})
	if r.status != http.StatusCreated {
		t.Fatalf("create key: %d %s", r.status, r.body)
	}
	var k api.CreatedKey
	r.json(t, &k)
	var events struct {
		Events []api.EventView `json:"events"`
	}
	h.do("GET", "/v1/keys/"+k.KeyID+"/events", admin, nil).json(t, &events)
	created := events.Events[0]

	var pv api.ProofView
	poll(t, func() error {
		r := h.do("GET", "/v1/audit/proof?event_id="+created.ID.String(), auditor, nil)
		if r.status != http.StatusOK {
			return fmt.Errorf("proof: %d %s", r.status, r.body)
		}
		r.json(t, &pv)
		return nil
	})
	if pv.Stream != domain.StreamKeys || pv.Seq != created.Seq || pv.Index != created.Seq-1 {
		t.Fatalf("proof of %s sequence %d: %+v", created.Stream, created.Seq, pv)
	}

	var key api.PublicKeyView
	h.do("GET", "/v1/audit/public-key", admin, nil).json(t, &key)
	raw, err := base64.StdEncoding.DecodeString(key.PublicKey)
	if err != nil || len(raw) != ed25519.PublicKeySize || key.KeyID != notary.KeyID(raw) || key.KeyID != pv.Checkpoint.KeyID {
		t.Fatalf("public key %+v (%v), checkpoint key id %s", key, err, pv.Checkpoint.KeyID)
	}
	st, err := h.store.JetStream().Stream(context.Background(), domain.StreamKeys)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetMsg(context.Background(), pv.Seq)
	if err != nil {
		t.Fatal(err)
	}
	p := notary.Proof{Stream: pv.Stream, Seq: pv.Seq, Index: pv.Index, EventID: pv.EventID, Hashes: pv.Hashes,
		Checkpoint: domain.CheckpointPublished{Stream: pv.Checkpoint.Stream, Size: pv.Checkpoint.Size, Root: pv.Checkpoint.Root,
			At: pv.Checkpoint.At, KeyID: pv.Checkpoint.KeyID, Sig: pv.Checkpoint.Signature}}
	if err := notary.CheckProof(p, msg.Data, ed25519.PublicKey(raw)); err != nil {
		t.Fatalf("proof does not verify: %v", err)
	}
	if err := notary.CheckProof(p, bytes.Replace(msg.Data, []byte("proved"), []byte("proven"), 1), ed25519.PublicKey(raw)); err == nil {
		t.Fatal("proof verifies for an altered event")
	}

	var cps struct {
		Checkpoints []api.CheckpointView `json:"checkpoints"`
	}
	h.do("GET", "/v1/audit/checkpoints", auditor, nil).json(t, &cps)
	found := false
	for _, c := range cps.Checkpoints {
		found = found || (c.Stream == domain.StreamKeys && c.Size >= pv.Checkpoint.Size)
	}
	if !found {
		t.Fatalf("no KEYS checkpoint covering %d: %+v", pv.Checkpoint.Size, cps.Checkpoints)
	}
}

// TestAuditErrors checks the permission of each route and that every
// refusal is a problem with a stable code.
func TestAuditErrors(t *testing.T) {
	h, _ := mustStartWithNotary(t)
	_, admin := h.principal("admin", domain.RoleKeyAdmin)
	_, auditor := h.principal("auditor", domain.RoleAuditor)
	for _, c := range []struct {
		path, token string
		status      int
		code        string
	}{
		{"/v1/audit/public-key", "", http.StatusUnauthorized, ""},
		{"/v1/audit/checkpoints", admin, http.StatusForbidden, ""},
		{"/v1/audit/proof?event_id=" + uuid.NewString(), admin, http.StatusForbidden, ""},
		{"/v1/audit/proof?event_id=not-an-id", auditor, http.StatusBadRequest, "invalid_event_id"},
		{"/v1/audit/proof", auditor, http.StatusBadRequest, "invalid_event_id"},
		{"/v1/audit/proof?event_id=" + uuid.NewString(), auditor, http.StatusNotFound, "event_not_found"},
	} {
		r := h.do("GET", c.path, c.token, nil)
		if r.status != c.status {
			t.Errorf("GET %s: %d %s, want %d", c.path, r.status, r.body, c.status)
			continue
		}
		if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("GET %s: content type %q", c.path, ct)
		}
		if c.code != "" {
			if got := r.problemCode(t); got != c.code {
				t.Errorf("GET %s: code %q, want %q", c.path, got, c.code)
			}
		}
	}

	// A node without the notary says so instead of answering empty.
	bare := mustStart(t)
	r := bare.do("GET", "/v1/audit/public-key", bare.root, nil)
	if r.status != http.StatusInternalServerError || r.problemCode(t) != "audit_unavailable" {
		t.Fatalf("without a notary: %d %s", r.status, r.body)
	}
}
