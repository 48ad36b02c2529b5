package api

import (
	"net/http"

	"github.com/keyledger/keyledger/api/view"
	"github.com/keyledger/keyledger/domain"
)

// PrincipalView is a principal as the API shows it.
type PrincipalView = view.PrincipalView

func (s *Server) principalView(p domain.Principal) PrincipalView {
	max := p.MaxKeys
	if max == 0 {
		max = s.cfg.MaxActiveKeys
	}
	return PrincipalView{
		ID: p.ID, Name: p.Name, Email: p.Email, Roles: nonNil(p.Roles), Permissions: nonNil(s.cfg.State.PrincipalPermissions(p.ID)),
		MaxKeys: max, ActiveKeys: s.cfg.State.ActiveKeys(p.ID), Disabled: p.Disabled,
		CreatedAt: p.CreatedAt, CreatedBy: p.CreatedBy, Version: p.Version,
	}
}

type createPrincipalRequest struct {
	Name    string   `json:"name"`
	Email   string   `json:"email"`
	Roles   []string `json:"roles"`
	MaxKeys int      `json:"max_keys"`
	// CredentialLifetimeDays is the lifetime of the first credential.
	CredentialLifetimeDays int `json:"credential_lifetime_days"`
}

// CreatedPrincipal answers POST /v1/principals; Credential carries the
// principal's first token, shown only here.
type CreatedPrincipal struct {
	PrincipalView
	Credential CreatedKey `json:"credential"`
}

func (s *Server) createPrincipal(w http.ResponseWriter, r *http.Request, c caller) {
	var req createPrincipalRequest
	if err := decode(r, &req); err != nil {
		s.problem(w, r, err)
		return
	}
	if req.CredentialLifetimeDays < 0 || req.CredentialLifetimeDays > domain.MaxLifetimeDays {
		s.problem(w, r, domain.Errorf(domain.EINVALID, "lifetime_out_of_range", "credential_lifetime_days must be between 1 and %d (0 for the default)", domain.MaxLifetimeDays))
		return
	}
	p, k, tok, err := s.cfg.Commands.CreatePrincipal(r.Context(), domain.CreatePrincipal{
		Meta: domain.Meta{Actor: c.ID(), Context: s.requestContext(r)}, Name: req.Name, Email: req.Email, Roles: req.Roles, MaxKeys: req.MaxKeys,
	}, req.CredentialLifetimeDays)
	if err != nil {
		s.problem(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/principals/"+p.ID)
	writeJSON(w, http.StatusCreated, CreatedPrincipal{PrincipalView: s.principalView(p), Credential: CreatedKey{KeyView: s.view(k, s.cfg.Now()), Token: tok}})
}

func (s *Server) listPrincipals(w http.ResponseWriter, r *http.Request, _ caller) {
	ps := s.cfg.State.Principals()
	out := make([]PrincipalView, 0, len(ps))
	for _, p := range ps {
		out = append(out, s.principalView(p))
	}
	writeJSON(w, http.StatusOK, map[string]any{"principals": out})
}

func (s *Server) findPrincipal(id string) (domain.Principal, error) {
	p, ok := s.cfg.State.Principal(id)
	if !ok {
		return domain.Principal{}, domain.Errorf(domain.ENOTFOUND, "principal_not_found", "principal not found")
	}
	return p, nil
}

func (s *Server) getPrincipal(w http.ResponseWriter, r *http.Request, _ caller) {
	p, err := s.findPrincipal(r.PathValue("id"))
	if err != nil {
		s.problem(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.principalView(p))
}

type updatePrincipalRequest struct {
	Name    *string   `json:"name"`
	Email   *string   `json:"email"`
	Roles   *[]string `json:"roles"`
	MaxKeys *int      `json:"max_keys"`
}

func (s *Server) principalCommand(w http.ResponseWriter, r *http.Request, c caller, build func(domain.Meta) (domain.Command, error)) {
	p, err := s.findPrincipal(r.PathValue("id"))
	if err != nil {
		s.problem(w, r, err)
		return
	}
	cmd, err := build(domain.Meta{Actor: c.ID(), Context: s.requestContext(r)})
	if err != nil {
		s.problem(w, r, err)
		return
	}
	p, err = s.cfg.Commands.ChangePrincipal(r.Context(), p.ID, cmd)
	if err != nil {
		s.problem(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.principalView(p))
}

func (s *Server) updatePrincipal(w http.ResponseWriter, r *http.Request, c caller) {
	s.principalCommand(w, r, c, func(m domain.Meta) (domain.Command, error) {
		var req updatePrincipalRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return domain.UpdatePrincipal{Meta: m, Name: req.Name, Email: req.Email, Roles: req.Roles, MaxKeys: req.MaxKeys}, nil
	})
}

func (s *Server) disablePrincipal(w http.ResponseWriter, r *http.Request, c caller) {
	s.principalCommand(w, r, c, func(m domain.Meta) (domain.Command, error) {
		var req reasonRequest
		if err := decodeOptional(r, &req); err != nil {
			return nil, err
		}
		return domain.DisablePrincipal{Meta: m, Reason: req.Reason}, nil
	})
}

func (s *Server) enablePrincipal(w http.ResponseWriter, r *http.Request, c caller) {
	s.principalCommand(w, r, c, func(m domain.Meta) (domain.Command, error) {
		if err := decodeOptional(r, &struct{}{}); err != nil {
			return nil, err
		}
		return domain.EnablePrincipal{Meta: m}, nil
	})
}

// RoleView is a role as the API shows it.
type RoleView struct {
	Name        string   `json:"name"`
	Permissions []string `json:"permissions"`
	Description string   `json:"description,omitempty"`
	BuiltIn     bool     `json:"built_in"`
}

func (s *Server) listRoles(w http.ResponseWriter, r *http.Request, _ caller) {
	var out []RoleView
	for _, ro := range s.cfg.State.Roles() {
		out = append(out, RoleView{Name: ro.Name, Permissions: nonNil(ro.Permissions), Description: ro.Description, BuiltIn: ro.BuiltIn})
	}
	writeJSON(w, http.StatusOK, map[string]any{"roles": out})
}

type roleRequest struct {
	Name        string   `json:"name"`
	Permissions []string `json:"permissions"`
	Description *string  `json:"description"`
}

func (s *Server) roleCommand(w http.ResponseWriter, r *http.Request, c caller, name string, build func(domain.Meta) domain.Command, status int) {
	ro, err := s.cfg.Commands.ChangeRole(r.Context(), name, build(domain.Meta{Actor: c.ID(), Context: s.requestContext(r)}))
	if err != nil {
		s.problem(w, r, err)
		return
	}
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return
	}
	writeJSON(w, status, RoleView{Name: ro.Name, Permissions: nonNil(ro.Permissions), Description: ro.Description})
}

func (s *Server) createRole(w http.ResponseWriter, r *http.Request, c caller) {
	var req roleRequest
	if err := decode(r, &req); err != nil {
		s.problem(w, r, err)
		return
	}
	desc := ""
	if req.Description != nil {
		desc = *req.Description
	}
	s.roleCommand(w, r, c, req.Name, func(m domain.Meta) domain.Command {
		return domain.CreateRole{Meta: m, Name: req.Name, Permissions: req.Permissions, Description: desc}
	}, http.StatusCreated)
}

func (s *Server) updateRole(w http.ResponseWriter, r *http.Request, c caller) {
	var req roleRequest
	if err := decode(r, &req); err != nil {
		s.problem(w, r, err)
		return
	}
	s.roleCommand(w, r, c, r.PathValue("name"), func(m domain.Meta) domain.Command {
		return domain.UpdateRole{Meta: m, Permissions: req.Permissions, Description: req.Description}
	}, http.StatusOK)
}

func (s *Server) deleteRole(w http.ResponseWriter, r *http.Request, c caller) {
	s.roleCommand(w, r, c, r.PathValue("name"), func(m domain.Meta) domain.Command {
		return domain.DeleteRole{Meta: m}
	}, http.StatusNoContent)
}

// MeView answers GET /v1/me: who the token belongs to.
type MeView struct {
	Principal PrincipalView `json:"principal"`
	Key       KeyView       `json:"key"`
}

func (s *Server) me(w http.ResponseWriter, r *http.Request, c caller) {
	writeJSON(w, http.StatusOK, MeView{Principal: s.principalView(c.Principal), Key: s.view(c.Key, s.cfg.Now())})
}

type issueCredentialRequest struct {
	Name         string `json:"name"`
	Comments     string `json:"comments"`
	LifetimeDays int    `json:"lifetime_days"`
}

// issueCredential issues a new credential to an existing principal, one
// that carries every permission it holds: how a principal that revoked,
// lost or let expire its credentials gets back in. The token is shown only
// in this answer; the issue is recorded as key.created by the caller and
// principal.key_issued with credential set.
func (s *Server) issueCredential(w http.ResponseWriter, r *http.Request, c caller) {
	p, err := s.findPrincipal(r.PathValue("id"))
	if err != nil {
		s.problem(w, r, err)
		return
	}
	var req issueCredentialRequest
	if err := decodeOptional(r, &req); err != nil {
		s.problem(w, r, err)
		return
	}
	k, tok, err := s.cfg.Commands.IssueCredential(r.Context(), c, p.ID, domain.CreateKey{
		Meta:         domain.Meta{Actor: c.ID(), Context: s.requestContext(r)},
		Name:         req.Name,
		Comments:     req.Comments,
		LifetimeDays: req.LifetimeDays,
	})
	if err != nil {
		s.problem(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/keys/"+k.ID)
	writeJSON(w, http.StatusCreated, CreatedKey{KeyView: s.view(k, s.cfg.Now()), Token: tok})
}
