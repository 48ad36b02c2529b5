package command

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/keystate"
)

// CreatePrincipal creates a principal and its first credential, a key that
// carries every permission of the principal's roles, in one atomic append:
// no crash leaves a principal without a credential. cmd.PrincipalID is
// drawn by the service. credentialDays is the credential's lifetime (0: the
// default). It returns the principal, its credential and the credential's
// token, shown only here.
//
// Principal names are unique regardless of case (domain.SameName); this
// node decides creations and renames one at a time, so two of them racing
// here cannot both take a name.
//
// Errors: EINVALID (bad input, unknown_role, lifetime_out_of_range),
// ECONFLICT (principal_name_taken, version_conflict).
func (s *Service) CreatePrincipal(ctx context.Context, cmd domain.CreatePrincipal, credentialDays int) (domain.Principal, domain.Key, string, error) {
	cmd.PrincipalID = uuid.Must(uuid.NewV7()).String()
	keyID, secret := uuid.Must(uuid.NewV7()), newSecret()
	s.names.Lock()
	defer s.names.Unlock()
	_, err := s.Update(ctx, domain.KindPrincipal, cmd.PrincipalID, func(a Aggregate) ([]domain.Envelope, error) {
		if _, taken := s.state.PrincipalNamed(cmd.Name, ""); taken {
			return nil, domain.ErrPrincipalNameTaken(cmd.Name)
		}
		return s.decidePrincipalWithKey(a.Principal, cmd, domain.CreateKey{
			Meta: cmd.Meta, KeyID: keyID.String(), Owner: cmd.PrincipalID, Name: "initial credential",
			Comments: "issued with the principal", LifetimeDays: credentialDays, SecretHash: domain.HashSecret(secret),
		})
	})
	if err != nil {
		return domain.Principal{}, domain.Key{}, "", err
	}
	p, _ := s.state.Principal(cmd.PrincipalID)
	k, _ := s.state.Key(keyID.String())
	return p, k, domain.FormatToken(keyID, secret), nil
}

// decidePrincipalWithKey returns the events of a new principal and its
// first key. The key gets every permission of the principal's roles unless
// key.Permissions or key.Role say otherwise. The first key needs no
// principal.key_issued: nobody can hold a token of the principal, and so
// race its plan limit, before this append has landed.
func (s *Service) decidePrincipalWithKey(p domain.Principal, cmd domain.CreatePrincipal, key domain.CreateKey) ([]domain.Envelope, error) {
	now := s.cfg.Now()
	penvs, err := domain.DecidePrincipal(p, cmd, s.state.RoleExists, now, s.cfg.NewID)
	if err != nil {
		return nil, err
	}
	if key.Permissions == nil && key.Role == "" {
		key.Permissions = s.rolePermissions(cmd.Roles)
	}
	kenvs, err := domain.Decide(domain.Key{}, key, now, s.cfg.NewID)
	if err != nil {
		return nil, err
	}
	return append(penvs, kenvs...), nil
}

// rolePermissions is the union of the roles' permissions.
func (s *Service) rolePermissions(roles []string) []string {
	var out []string
	for _, name := range roles {
		if r, ok := s.role(name); ok {
			out = append(out, r.Permissions...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ChangePrincipal applies a principal command (update, disable, enable) to
// principal id. Errors: ENOTFOUND (principal_not_found), EINVALID,
// ECONFLICT (principal_name_taken, principal_already_disabled,
// principal_not_disabled, version_conflict).
func (s *Service) ChangePrincipal(ctx context.Context, id string, cmd domain.Command) (domain.Principal, error) {
	switch cmd.(type) {
	case domain.UpdatePrincipal, domain.DisablePrincipal, domain.EnablePrincipal:
	default:
		return domain.Principal{}, domain.Errorf(domain.EINVALID, "unknown_command", "%T is not a change of a principal", cmd)
	}
	if _, err := uuid.Parse(id); err != nil {
		return domain.Principal{}, domain.Errorf(domain.ENOTFOUND, "principal_not_found", "principal not found")
	}
	if u, ok := cmd.(domain.UpdatePrincipal); ok && u.Name != nil {
		s.names.Lock()
		defer s.names.Unlock()
	}
	_, err := s.Update(ctx, domain.KindPrincipal, id, func(a Aggregate) ([]domain.Envelope, error) {
		if u, ok := cmd.(domain.UpdatePrincipal); ok && u.Name != nil {
			if _, taken := s.state.PrincipalNamed(*u.Name, id); taken {
				return nil, domain.ErrPrincipalNameTaken(*u.Name)
			}
		}
		return domain.DecidePrincipal(a.Principal, cmd, s.state.RoleExists, s.cfg.Now(), s.cfg.NewID)
	})
	if err != nil {
		return domain.Principal{}, err
	}
	p, _ := s.state.Principal(id)
	return p, nil
}

// ChangeRole applies a role command (create, update, delete) to the custom
// role name. Errors: EINVALID, ENOTFOUND (role_not_found), ECONFLICT
// (role_exists, role_builtin, version_conflict).
func (s *Service) ChangeRole(ctx context.Context, name string, cmd domain.Command) (domain.Role, error) {
	switch cmd.(type) {
	case domain.CreateRole, domain.UpdateRole, domain.DeleteRole:
	default:
		return domain.Role{}, domain.Errorf(domain.EINVALID, "unknown_command", "%T is not a change of a role", cmd)
	}
	_, err := s.Update(ctx, domain.KindRole, name, func(a Aggregate) ([]domain.Envelope, error) {
		return domain.DecideRole(a.Role, name, cmd, s.cfg.Now(), s.cfg.NewID)
	})
	if err != nil {
		return domain.Role{}, err
	}
	r, _ := s.state.Role(name)
	return r, nil
}

// Bootstrap makes sure a super administrator exists and can act. On a
// ledger with no principals it creates one and its root key in one atomic
// append and returns the root token: rootToken when given (it must be a
// well-formed token), else a new one. A ledger written by an older
// keyledger may hold a super administrator without keys (two appends then,
// and a crash between them); Bootstrap issues the root key to it. created
// is false when a super administrator with keys already exists; the token
// is then empty.
func (s *Service) Bootstrap(ctx context.Context, rootToken string) (token string, created bool, err error) {
	var admin domain.Principal
	for _, p := range s.state.Principals() {
		if slices.Contains(p.Roles, domain.RoleSuperadmin) {
			if keys, _ := s.state.List(keystate.Filter{Owner: p.ID, Status: "all", Now: s.cfg.Now()}); len(keys) > 0 {
				return "", false, nil
			}
			admin = p
		}
	}
	if !admin.Exists() && len(s.state.Principals()) > 0 {
		return "", false, nil
	}
	var tok domain.Token
	if rootToken != "" {
		tok, err = domain.ParseToken(rootToken)
		if err != nil {
			return "", false, fmt.Errorf("KEYLEDGER_ROOT_TOKEN: %w (generate one with `keyledger token new`)", err)
		}
		token = rootToken
	} else {
		tok = domain.Token{KeyID: uuid.Must(uuid.NewV7()), Secret: newSecret()}
		token = domain.FormatToken(tok.KeyID, tok.Secret)
	}
	m := domain.Meta{Actor: "bootstrap"}
	root := domain.CreateKey{
		Meta: m, KeyID: tok.KeyID.String(), Name: "root", Comments: "bootstrap credential of the super administrator",
		Role: domain.RoleSuperadmin, Permissions: domain.BuiltinRoles[domain.RoleSuperadmin],
		LifetimeDays: domain.MaxLifetimeDays, SecretHash: domain.HashSecret(tok.Secret),
	}
	if admin.Exists() {
		root.Owner = admin.ID
		_, err = s.Update(ctx, domain.KindPrincipal, admin.ID, func(a Aggregate) ([]domain.Envelope, error) {
			return s.decideIssue(a, root)
		})
	} else {
		pid := uuid.Must(uuid.NewV7()).String()
		root.Owner = pid
		_, err = s.Update(ctx, domain.KindPrincipal, pid, func(a Aggregate) ([]domain.Envelope, error) {
			return s.decidePrincipalWithKey(a.Principal, domain.CreatePrincipal{
				Meta: m, PrincipalID: pid, Name: "super administrator", Roles: []string{domain.RoleSuperadmin},
			}, root)
		})
	}
	if err != nil {
		if de := (*domain.Error)(nil); errors.As(err, &de) && de.Reason == "key_exists" {
			return "", false, fmt.Errorf("root key %s already exists: %w", tok.KeyID, err)
		}
		return "", false, fmt.Errorf("create super administrator: %w", err)
	}
	return token, true, nil
}
