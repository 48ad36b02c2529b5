package command

import (
	"context"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// CreateKey issues a key to the actor's own principal, within its plan
// limit. The service draws the key id and the secret and resolves the
// key's permissions (cmd.Permissions, cmd.Role's, or by default all of the
// owner's; always a subset of the owner's); cmd's KeyID, Owner and
// SecretHash are ignored. The key's creation and the owner's record of it
// (principal.key_issued, which moves the owner's version) are one atomic
// append, so concurrent creations never pass the limit together.
//
// It returns the key and its token, shown only here. Errors: EFORBIDDEN
// (insufficient_permissions, permission_not_held,
// superadmin_cannot_issue_keys), EINVALID (bad input),
// ELIMIT (plan_limit_reached), ECONFLICT (version_conflict after every
// attempt lost its race).
func (s *Service) CreateKey(ctx context.Context, a domain.Actor, cmd domain.CreateKey) (domain.Key, string, error) {
	if err := a.AuthorizeCreate(); err != nil {
		return domain.Key{}, "", err
	}
	id := uuid.Must(uuid.NewV7())
	secret := newSecret()
	cmd.KeyID, cmd.Owner, cmd.SecretHash = id.String(), a.Principal.ID, domain.HashSecret(secret)
	_, err := s.Update(ctx, domain.KindPrincipal, a.Principal.ID, func(owner Aggregate) ([]domain.Envelope, error) {
		return s.decideCreate(owner, cmd)
	})
	if err != nil {
		return domain.Key{}, "", err
	}
	k, _ := s.state.Key(cmd.KeyID)
	return k, domain.FormatToken(id, secret), nil
}

// decideCreate returns the events of a new key of owner: the key's
// creation, then the owner's record of it. In that order the projection
// has counted the key by the time it shows the owner's new version, so a
// command that reads that version reads a count that includes the key.
func (s *Service) decideCreate(owner Aggregate, cmd domain.CreateKey) ([]domain.Envelope, error) {
	p := owner.Principal
	if !p.Exists() {
		return nil, domain.Errorf(domain.ENOTFOUND, "principal_not_found", "principal not found")
	}
	role, found := s.role(cmd.Role)
	perms, err := domain.KeyPermissions(s.state.PrincipalPermissions(p.ID), cmd.Role, role.Permissions, found, cmd.Permissions)
	if err != nil {
		return nil, err
	}
	cmd.Permissions = perms
	return s.decideIssue(owner, cmd)
}

// decideIssue returns the events of a new key of owner whose permissions
// are settled.
func (s *Service) decideIssue(owner Aggregate, cmd domain.CreateKey) ([]domain.Envelope, error) {
	return s.decideIssueAs(owner, cmd, false)
}

// decideIssueAs is decideIssue; credential marks a key an administrator
// issues to owner.
func (s *Service) decideIssueAs(owner Aggregate, cmd domain.CreateKey, credential bool) ([]domain.Envelope, error) {
	p := owner.Principal
	if !p.Exists() {
		return nil, domain.Errorf(domain.ENOTFOUND, "principal_not_found", "principal not found")
	}
	now := s.cfg.Now()
	keyEvents, err := domain.Decide(domain.Key{}, cmd, now, s.cfg.NewID)
	if err != nil {
		return nil, err
	}
	issued, err := domain.DecidePrincipal(p, domain.IssueKey{
		Meta: cmd.Meta, KeyID: cmd.KeyID, ActiveKeys: s.state.ActiveKeys(p.ID), Limit: p.KeyLimit(s.cfg.MaxActiveKeys),
		Credential: credential,
	}, s.state.RoleExists, now, s.cfg.NewID)
	if err != nil {
		return nil, err
	}
	return append(keyEvents, issued...), nil
}

func (s *Service) role(name string) (domain.Role, bool) {
	if name == "" {
		return domain.Role{}, false
	}
	r, ok := s.state.Role(name)
	return r, ok && !r.Deleted
}

// ChangeKey applies a key command other than creation to key id on behalf
// of the actor, after domain.Authorize with the command's permission. A
// RegenerateKey with Rotate gets a fresh secret, whose token is returned
// (and shown only then); an UpdateKey's permissions are checked against
// the owner's. It returns the key as it is after the command.
//
// Errors: ENOTFOUND (key_not_found, also for another principal's key the
// actor may not see), EFORBIDDEN (insufficient_permissions,
// permission_not_held, cross_owner_forbidden), ECONFLICT (key_revoked,
// key_deleted, key_already_disabled, key_not_disabled, last_credential;
// version_conflict after every
// attempt lost its race), EINVALID (bad input).
func (s *Service) ChangeKey(ctx context.Context, a domain.Actor, id string, cmd domain.Command) (domain.Key, string, error) {
	perm := domain.PermissionFor(cmd)
	if perm == "" || perm == domain.PermKeyCreate {
		return domain.Key{}, "", domain.Errorf(domain.EINVALID, "unknown_command", "%T is not a change of a key", cmd)
	}
	if _, err := uuid.Parse(id); err != nil {
		return domain.Key{}, "", domain.ErrKeyNotFound
	}
	switch cmd.(type) {
	case domain.RevokeKey, domain.DisableKey, domain.DeleteKey:
		// Two of a principal's credentials taken away at once could each
		// see the other still active: this node decides such commands on
		// one's own keys one at a time, each after the last is applied.
		if k, _ := s.state.Key(id); k.Owner == a.Principal.ID {
			s.ownKeys.Lock()
			defer s.ownKeys.Unlock()
		}
	}
	var token string
	_, err := s.Update(ctx, domain.KindKey, id, func(agg Aggregate) ([]domain.Envelope, error) {
		k := agg.Key
		if err := a.Authorize(k, perm); err != nil {
			return nil, err
		}
		now := s.cfg.Now()
		if err := domain.GuardLastCredential(a, k, cmd, s.state.Credentials(k.Owner, now, k.ID), now); err != nil {
			return nil, err
		}
		// Each attempt completes its own copy: a retry draws a new secret.
		do := cmd
		token = ""
		switch c := cmd.(type) {
		case domain.RegenerateKey:
			if c.Rotate {
				secret := newSecret()
				c.SecretHash = domain.HashSecret(secret)
				token = domain.FormatToken(uuid.MustParse(k.ID), secret)
			}
			do = c
		case domain.UpdateKey:
			if c.Permissions != nil {
				perms, err := domain.KeyPermissions(s.state.PrincipalPermissions(k.Owner), "", nil, false, *c.Permissions)
				if err != nil {
					return nil, err
				}
				c.Permissions = &perms
			}
			do = c
		}
		return domain.Decide(k, do, now, s.cfg.NewID)
	})
	if err != nil {
		return domain.Key{}, "", err
	}
	k, _ := s.state.Key(id)
	return k, token, nil
}

// IssueCredential issues a new credential to principal owner on behalf of
// the actor, an administrator (api.principal.manage, which the route
// checks): a key carrying every permission the owner holds now, recorded
// as key.created by the actor and principal.key_issued with credential
// set, within the owner's plan limit. It is how a principal that lost or
// locked away its credentials gets back in. cmd's Name, Comments and
// LifetimeDays are used; the rest is drawn here. It returns the key and its
// token, shown only here.
//
// Errors: ENOTFOUND (principal_not_found), EFORBIDDEN (credential_to_self),
// EINVALID (bad input), ELIMIT (plan_limit_reached), ECONFLICT
// (version_conflict).
func (s *Service) IssueCredential(ctx context.Context, a domain.Actor, owner string, cmd domain.CreateKey) (domain.Key, string, error) {
	if owner == a.Principal.ID {
		return domain.Key{}, "", domain.Errorf(domain.EFORBIDDEN, "credential_to_self",
			"a principal cannot issue a credential to itself: keys of one's own are created with POST /v1/keys")
	}
	if _, err := uuid.Parse(owner); err != nil {
		return domain.Key{}, "", domain.Errorf(domain.ENOTFOUND, "principal_not_found", "principal not found")
	}
	id := uuid.Must(uuid.NewV7())
	secret := newSecret()
	cmd.KeyID, cmd.Owner, cmd.SecretHash, cmd.Role = id.String(), owner, domain.HashSecret(secret), ""
	if cmd.Name == "" {
		cmd.Name = "credential"
	}
	_, err := s.Update(ctx, domain.KindPrincipal, owner, func(agg Aggregate) ([]domain.Envelope, error) {
		if !agg.Principal.Exists() {
			return nil, domain.Errorf(domain.ENOTFOUND, "principal_not_found", "principal not found")
		}
		c := cmd
		c.Permissions = s.state.PrincipalPermissions(owner)
		return s.decideIssueAs(agg, c, true)
	})
	if err != nil {
		return domain.Key{}, "", err
	}
	k, _ := s.state.Key(cmd.KeyID)
	return k, domain.FormatToken(id, secret), nil
}
