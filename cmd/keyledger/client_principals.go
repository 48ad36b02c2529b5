package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

var principalCommands = map[string]command{
	"create":  {"--name N --role R", "create a principal and its first credential (shown once)", runPrincipalsCreate},
	"list":    {"", "list principals", runPrincipalsList},
	"show":    {"ID", "show one principal", runPrincipalsShow},
	"update":  {"ID", "change a principal's name, roles or key limit", runPrincipalsUpdate},
	"disable": {"ID", "stop a principal from acting", runPrincipalsDisable},
	"enable":  {"ID", "let a disabled principal act again", runPrincipalsEnable},
	"issue-credential": {"ID [--name N] [--lifetime-days D]",
		"issue a principal a new credential with all its permissions (shown once; superadmin)", runPrincipalsIssueCredential},
}

var roleCommands = map[string]command{
	"list":   {"", "list built-in and custom roles", runRolesList},
	"create": {"--name N --permission P ...", "define a custom role", runRolesCreate},
	"update": {"NAME --permission P ...", "replace a custom role's permissions", runRolesUpdate},
	"delete": {"NAME", "delete a custom role", runRolesDelete},
}

type principalRequest struct {
	Name                   string   `json:"name"`
	Roles                  []string `json:"roles"`
	MaxKeys                int      `json:"max_keys,omitempty"`
	CredentialLifetimeDays int      `json:"credential_lifetime_days,omitempty"`
}

func (g *globals) parsePrincipalsCreate(name string, args []string) (principalRequest, error) {
	var req principalRequest
	fs := g.flags(name)
	fs.StringVar(&req.Name, "name", "", "name of the principal (required)")
	fs.Var(listFlag{&req.Roles}, "role", "role of the principal (required; repeatable, or comma-separated)")
	fs.IntVar(&req.MaxKeys, "max-keys", 0, "most active keys it may hold (default: the server's plan limit)")
	fs.IntVar(&req.CredentialLifetimeDays, "credential-lifetime-days", 0, "lifetime of its first credential (default: the server's)")
	if _, err := g.parseCommand(fs, args, "--name N --role R [--role R2] [--max-keys N]", 0); err != nil {
		return req, err
	}
	switch {
	case strings.TrimSpace(req.Name) == "":
		return req, usageError{"usage: " + fs.Name() + ": --name is required"}
	case cleanText(fs, &req.Name, domain.CleanName) != nil:
		return req, cleanText(fs, &req.Name, domain.CleanName)
	case len(req.Roles) == 0:
		return req, usageError{"usage: " + fs.Name() + ": at least one --role is required"}
	case req.MaxKeys < 0 || req.CredentialLifetimeDays < 0:
		return req, usageError{"usage: " + fs.Name() + ": --max-keys and --credential-lifetime-days must be positive"}
	}
	return req, nil
}

func runPrincipalsCreate(ctx context.Context, g *globals, name string, args []string) error {
	req, err := g.parsePrincipalsCreate(name, args)
	if err != nil {
		return err
	}
	var p api.CreatedPrincipal
	raw, err := g.request(ctx, "POST", "/v1/principals", nil, req, &p)
	if err != nil {
		return err
	}
	if g.json {
		g.warnShownOnce()
		return g.printJSON(raw)
	}
	fields := append(principalFields(p.PrincipalView),
		field{"Credential", p.Credential.KeyID},
		field{"Credential expires", fmtTime(p.Credential.ExpiresAt, detailTime)})
	return g.renderToken("Principal created.", fields, p.Credential.Token)
}

// listCommand is a command without arguments that prints a list.
func listCommand[T any](path string, render func(io.Writer, T) error) func(context.Context, *globals, string, []string) error {
	return func(ctx context.Context, g *globals, name string, args []string) error {
		if _, err := g.parseCommand(g.flags(name), args, "", 0); err != nil {
			return err
		}
		return show(ctx, g, "GET", path, nil, "", render)
	}
}

var (
	runPrincipalsList = listCommand("/v1/principals", func(w io.Writer, out struct {
		Principals []api.PrincipalView `json:"principals"`
	}) error {
		return renderPrincipals(w, out.Principals)
	})
	runRolesList = listCommand("/v1/roles", func(w io.Writer, out struct {
		Roles []api.RoleView `json:"roles"`
	}) error {
		return renderRoles(w, out.Roles)
	})
)

func renderPrincipal(w io.Writer, p api.PrincipalView) error {
	return renderFields(w, principalFields(p))
}

const principalsPath = "/v1/principals/"

var (
	runPrincipalsShow   = idCommand("GET", principalsPath, "", "", renderPrincipal)
	runPrincipalsEnable = idCommand("POST", principalsPath, "/enable", "Principal enabled.", renderPrincipal)
)

type principalUpdateRequest struct {
	Name    *string   `json:"name,omitempty"`
	Roles   *[]string `json:"roles,omitempty"`
	MaxKeys *int      `json:"max_keys,omitempty"`
}

func (g *globals) parsePrincipalsUpdate(name string, args []string) (string, principalUpdateRequest, error) {
	var (
		req     principalUpdateRequest
		newName string
		roles   []string
		maxKeys int
	)
	fs := g.flags(name)
	fs.StringVar(&newName, "name", "", "new name")
	fs.Var(listFlag{&roles}, "role", "the principal's new roles (repeatable, or comma-separated; replaces them all)")
	fs.IntVar(&maxKeys, "max-keys", 0, "new limit of active keys (0: the server's plan limit)")
	path, err := g.idPath(fs, args, "ID [--name N] [--role R ...] [--max-keys N]", principalsPath)
	if err != nil {
		return "", req, err
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "name":
			req.Name = &newName
		case "role":
			req.Roles = &roles
		case "max-keys":
			req.MaxKeys = &maxKeys
		}
	})
	if req == (principalUpdateRequest{}) {
		return "", req, usageError{"usage: " + fs.Name() + ": give at least one of --name, --role, --max-keys"}
	}
	if maxKeys < 0 {
		return "", req, usageError{"usage: " + fs.Name() + ": --max-keys must not be negative"}
	}
	if req.Name != nil {
		if err := cleanText(fs, req.Name, domain.CleanName); err != nil {
			return "", req, err
		}
	}
	return path, req, nil
}

func runPrincipalsUpdate(ctx context.Context, g *globals, name string, args []string) error {
	path, req, err := g.parsePrincipalsUpdate(name, args)
	if err != nil {
		return err
	}
	return show(ctx, g, "PATCH", path, req, "Principal updated.", renderPrincipal)
}

func runPrincipalsDisable(ctx context.Context, g *globals, name string, args []string) error {
	var reason string
	fs := g.flags(name)
	fs.StringVar(&reason, "reason", "", "why (recorded in the principal's history)")
	path, err := g.idPath(fs, args, "ID [--reason R]", principalsPath)
	if err != nil {
		return err
	}
	return show(ctx, g, "POST", path+"/disable", reasonBody(reason), "Principal disabled.", renderPrincipal)
}

type roleRequest struct {
	Name        string   `json:"name,omitempty"`
	Permissions []string `json:"permissions"`
	Description *string  `json:"description,omitempty"`
}

// parseRole reads the flags of "roles create" (--name N, like "principals
// create") and "roles update" (NAME, like every command on an existing
// thing) and returns the role's name.
func (g *globals) parseRole(name string, args []string, create bool) (string, roleRequest, error) {
	var (
		req  roleRequest
		desc string
	)
	fs := g.flags(name)
	fs.Var(listFlag{&req.Permissions}, "permission", "permission of the role (required; repeatable, or comma-separated)")
	fs.StringVar(&desc, "description", "", "what the role is for")
	argNames, nargs := "NAME --permission P ... [--description D]", 1
	if create {
		fs.StringVar(&req.Name, "name", "", "name of the role (required)")
		argNames, nargs = "--name N --permission P ... [--description D]", -1
	}
	pos, err := g.parseCommand(fs, args, argNames, nargs)
	switch {
	case err != nil:
		return "", req, err
	case create && len(pos) > 0:
		return "", req, usageError{fmt.Sprintf("usage: %s: the name is a flag: --name %s", fs.Name(), pos[0])}
	case create && strings.TrimSpace(req.Name) == "":
		return "", req, usageError{"usage: " + fs.Name() + ": --name is required"}
	case len(req.Permissions) == 0:
		return "", req, usageError{"usage: " + fs.Name() + ": at least one --permission is required"}
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "description" {
			req.Description = &desc
		}
	})
	if create {
		return req.Name, req, nil
	}
	return pos[0], req, nil
}

func renderRole(w io.Writer, r api.RoleView) error { return renderRoles(w, []api.RoleView{r}) }

func runRolesCreate(ctx context.Context, g *globals, name string, args []string) error {
	_, req, err := g.parseRole(name, args, true)
	if err != nil {
		return err
	}
	return show(ctx, g, "POST", "/v1/roles", req, "Role created.", renderRole)
}

func runRolesUpdate(ctx context.Context, g *globals, name string, args []string) error {
	role, req, err := g.parseRole(name, args, false)
	if err != nil {
		return err
	}
	return show(ctx, g, "PUT", "/v1/roles/"+url.PathEscape(role), req, "Role updated.", renderRole)
}

func runRolesDelete(ctx context.Context, g *globals, name string, args []string) error {
	pos, err := g.parseCommand(g.flags(name), args, "NAME", 1)
	if err != nil {
		return err
	}
	if _, err := g.request(ctx, "DELETE", "/v1/roles/"+url.PathEscape(pos[0]), nil, nil, nil); err != nil {
		return err
	}
	if g.json {
		b, _ := json.Marshal(map[string]string{"deleted": pos[0]})
		return g.printJSON(b)
	}
	_, err = fmt.Fprintf(g.stdout, "Role %s deleted.\n", pos[0])
	return err
}

func runWhoami(ctx context.Context, g *globals, name string, args []string) error {
	if _, err := g.parseCommand(g.flags(name), args, "", 0); err != nil {
		return err
	}
	return show(ctx, g, "GET", "/v1/me", nil, "", func(w io.Writer, me api.MeView) error {
		fields := principalFields(me.Principal)
		fields = append(fields,
			field{"Key", me.Key.KeyID + " (" + cell(me.Key.Name, 0) + ")"},
			field{"Key permissions", fmtList(me.Key.Permissions, "none")},
			field{"Key expires", fmtTime(me.Key.ExpiresAt, detailTime)})
		return renderFields(w, fields)
	})
}

// credentialRequest is the body of POST /v1/principals/{id}/credentials.
type credentialRequest struct {
	Name         string `json:"name,omitempty"`
	Comments     string `json:"comments,omitempty"`
	LifetimeDays int    `json:"lifetime_days,omitempty"`
}

func (g *globals) parsePrincipalsIssueCredential(name string, args []string) (string, credentialRequest, error) {
	var req credentialRequest
	fs := g.flags(name)
	fs.StringVar(&req.Name, "name", "", "name of the credential (default: credential)")
	fs.StringVar(&req.Comments, "comments", "", "free-text comments, such as why it was issued")
	fs.IntVar(&req.LifetimeDays, "lifetime-days", 0, "lifetime in days (default: the server's, 90)")
	path, err := g.idPath(fs, args, "ID [--name N] [--comments C] [--lifetime-days D]", principalsPath)
	if err != nil {
		return "", req, err
	}
	if req.Name != "" {
		if err := cleanText(fs, &req.Name, domain.CleanName); err != nil {
			return "", req, err
		}
	}
	if err := cleanText(fs, &req.Comments, domain.CleanComments); err != nil {
		return "", req, err
	}
	if req.LifetimeDays < 0 {
		return "", req, usageError{"usage: " + fs.Name() + ": --lifetime-days must be positive"}
	}
	return path + "/credentials", req, nil
}

func runPrincipalsIssueCredential(ctx context.Context, g *globals, name string, args []string) error {
	path, req, err := g.parsePrincipalsIssueCredential(name, args)
	if err != nil {
		return err
	}
	var k api.CreatedKey
	raw, err := g.request(ctx, "POST", path, nil, req, &k)
	if err != nil {
		return err
	}
	if g.json {
		g.warnShownOnce()
		return g.printJSON(raw)
	}
	return g.renderToken("Credential issued to principal "+k.Owner+".", keyFields(k.KeyView), k.Token)
}
