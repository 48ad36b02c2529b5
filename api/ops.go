package api

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
)

//go:embed openapi.json
var openapiJSON []byte

//go:embed docs.html
var docsHTML []byte

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz reports whether every readiness check passes: projections caught
// up with their streams, the usage log reachable, the audit sink not stuck.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var problems []string
	for _, check := range s.cfg.Ready {
		if err := check(ctx); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "problems": problems})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openapiJSON)
}

func (s *Server) docs(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(docsHTML)
}

// OpenAPI returns the served OpenAPI document.
func OpenAPI() []byte { return append([]byte(nil), openapiJSON...) }

// Bootstrap makes sure a super administrator exists and can act. On a
// ledger with no principals it creates one with a root key and returns the
// root token: rootToken when given (it must be a well-formed token), else a
// new one. The principal and its key are two appends; a start that died
// between them left a super administrator without keys, and the next start
// finishes the job by issuing the root key then. created is false when a
// super administrator with keys already exists; the token is then empty.
func (s *Server) Bootstrap(ctx context.Context, rootToken string) (token string, created bool, err error) {
	var admin domain.Principal
	for _, p := range s.cfg.State.Principals() {
		if slices.Contains(p.Roles, domain.RoleSuperadmin) {
			if keys, _ := s.cfg.State.List(keystate.Filter{Owner: p.ID, Status: "all", Now: s.cfg.Now()}); len(keys) > 0 {
				return "", false, nil
			}
			admin = p
		}
	}
	if !admin.Exists() && len(s.cfg.State.Principals()) > 0 {
		return "", false, nil
	}
	var tok domain.Token
	if rootToken != "" {
		tok, err = domain.ParseToken(rootToken)
		if err != nil {
			return "", false, fmt.Errorf("KEYLEDGER_ROOT_TOKEN: %w", err)
		}
		token = rootToken
	} else {
		tok = domain.Token{KeyID: uuid.Must(uuid.NewV7()), Secret: newSecret()}
		token = domain.FormatToken(tok.KeyID, tok.Secret)
	}
	m := domain.Meta{Actor: "bootstrap"}
	if !admin.Exists() {
		pid := uuid.Must(uuid.NewV7()).String()
		admin, err = s.execPrincipal(ctx, pid, domain.CreatePrincipal{Meta: m, PrincipalID: pid, Name: "super administrator", Roles: []string{domain.RoleSuperadmin}})
		if err != nil {
			return "", false, fmt.Errorf("create super administrator: %w", err)
		}
	}
	_, err = s.execKey(ctx, tok.KeyID.String(), domain.CreateKey{
		Meta: m, KeyID: tok.KeyID.String(), Owner: admin.ID, Name: "root", Comments: "bootstrap credential of the super administrator",
		Role: domain.RoleSuperadmin, Permissions: domain.BuiltinRoles[domain.RoleSuperadmin],
		LifetimeDays: domain.MaxLifetimeDays, SecretHash: domain.HashSecret(tok.Secret),
	})
	if err != nil {
		var de *domain.Error
		if errors.As(err, &de) && de.Reason == "key_exists" {
			return "", false, fmt.Errorf("root key %s already exists: %w", tok.KeyID, err)
		}
		return "", false, fmt.Errorf("create root key: %w", err)
	}
	return token, true, nil
}
