package api_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// TestBootstrapFinishesAfterACrash simulates a first start that stored the
// super administrator but died before its root key: the next Bootstrap
// issues the key to that principal instead of leaving nobody able to log in.
func TestBootstrapFinishesAfterACrash(t *testing.T) {
	h := mustStart(t) // bootstraps an administrator
	ctx := context.Background()
	if tok, created, err := h.srv.Bootstrap(ctx, ""); err != nil || created || tok != "" {
		t.Fatalf("second bootstrap = %q %v %v, want nothing to do", tok, created, err)
	}
	// A second ledger whose first start stopped half-way.
	h2 := mustStartNoBootstrap(t)
	pid := uuid.Must(uuid.NewV7()).String()
	envs, err := domain.DecidePrincipal(domain.Principal{}, domain.CreatePrincipal{Meta: domain.Meta{Actor: "bootstrap"}, PrincipalID: pid, Name: "super administrator", Roles: []string{domain.RoleSuperadmin}}, h2.state.RoleExists, time.Now(), uuid.New)
	must(t, err)
	h2.commit(0, envs)
	tok, created, err := h2.srv.Bootstrap(ctx, "")
	if err != nil || !created {
		t.Fatalf("bootstrap after crash = %v %v", created, err)
	}
	r := h2.do("GET", "/v1/me", tok, nil)
	if r.status != http.StatusOK {
		t.Fatalf("root token after recovery: %d %s", r.status, r.body)
	}
	if n := len(h2.state.Principals()); n != 1 {
		t.Fatalf("%d principals, want the one from before", n)
	}
	// A malformed KEYLEDGER_ROOT_TOKEN is refused.
	h3 := mustStartNoBootstrap(t)
	if _, _, err := h3.srv.Bootstrap(ctx, "klk_short"); err == nil {
		t.Fatal("malformed root token accepted")
	}
}
