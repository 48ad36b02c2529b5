package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"strings"

	"github.com/keyledger/keyledger/api"
)

var principalCommands = map[string]command{
	"create":  {"--name N --role R", "create a principal and its first credential (shown once)", runPrincipalsCreate},
	"list":    {"", "list principals", runPrincipalsList},
	"show":    {"ID", "show one principal", runPrincipalsShow},
	"update":  {"ID", "change a principal's name, roles or key limit", runPrincipalsUpdate},
	"disable": {"ID", "stop a principal from acting", runPrincipalsDisable},
	"enable":  {"ID", "let a disabled principal act again", runPrincipalsEnable},
}

var roleCommands = map[string]command{
	"list":   {"", "list built-in and custom roles", runRolesList},
	"create": {"NAME --permission P ...", "define a custom role", roleWrite(true)},
	"update": {"NAME --permission P ...", "replace a custom role's permissions", roleWrite(false)},
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
	fs := newFlagSet("keyledger " + name)
	g.register(fs, "token-file")
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
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	var p api.CreatedPrincipal
	raw, err := c.do(ctx, "POST", "/v1/principals", nil, req, &p)
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

func runPrincipalsList(ctx context.Context, g *globals, name string, args []string) error {
	fs := newFlagSet("keyledger " + name)
	g.register(fs, "token-file")
	if _, err := g.parseCommand(fs, args, "", 0); err != nil {
		return err
	}
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	var out struct {
		Principals []api.PrincipalView `json:"principals"`
	}
	raw, err := c.do(ctx, "GET", "/v1/principals", nil, nil, &out)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(raw)
	}
	return renderPrincipals(g.stdout, out.Principals)
}

// principalCommand sends a command on one principal and prints it.
func (g *globals) principalCommand(ctx context.Context, method, path string, body any, header string) error {
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	var p api.PrincipalView
	raw, err := c.do(ctx, method, path, nil, body, &p)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(raw)
	}
	if header != "" {
		fmt.Fprintln(g.stdout, header)
	}
	return renderFields(g.stdout, principalFields(p))
}

func (g *globals) principalPath(fs *flag.FlagSet, args []string, argNames string) (string, error) {
	pos, err := g.parseCommand(fs, args, argNames, 1)
	if err != nil {
		return "", err
	}
	return "/v1/principals/" + url.PathEscape(pos[0]), nil
}

func runPrincipalsShow(ctx context.Context, g *globals, name string, args []string) error {
	fs := newFlagSet("keyledger " + name)
	g.register(fs, "token-file")
	path, err := g.principalPath(fs, args, "ID")
	if err != nil {
		return err
	}
	return g.principalCommand(ctx, "GET", path, nil, "")
}

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
	fs := newFlagSet("keyledger " + name)
	g.register(fs, "token-file")
	fs.StringVar(&newName, "name", "", "new name")
	fs.Var(listFlag{&roles}, "role", "the principal's new roles (repeatable, or comma-separated; replaces them all)")
	fs.IntVar(&maxKeys, "max-keys", 0, "new limit of active keys (0: the server's plan limit)")
	path, err := g.principalPath(fs, args, "ID [--name N] [--role R ...] [--max-keys N]")
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
	return path, req, nil
}

func runPrincipalsUpdate(ctx context.Context, g *globals, name string, args []string) error {
	path, req, err := g.parsePrincipalsUpdate(name, args)
	if err != nil {
		return err
	}
	return g.principalCommand(ctx, "PATCH", path, req, "Principal updated.")
}

func runPrincipalsDisable(ctx context.Context, g *globals, name string, args []string) error {
	var reason string
	fs := newFlagSet("keyledger " + name)
	g.register(fs, "token-file")
	fs.StringVar(&reason, "reason", "", "why (recorded in the principal's history)")
	path, err := g.principalPath(fs, args, "ID [--reason R]")
	if err != nil {
		return err
	}
	var body any
	if reason != "" {
		body = reasonRequest{Reason: reason}
	}
	return g.principalCommand(ctx, "POST", path+"/disable", body, "Principal disabled.")
}

func runPrincipalsEnable(ctx context.Context, g *globals, name string, args []string) error {
	fs := newFlagSet("keyledger " + name)
	g.register(fs, "token-file")
	path, err := g.principalPath(fs, args, "ID")
	if err != nil {
		return err
	}
	return g.principalCommand(ctx, "POST", path+"/enable", nil, "Principal enabled.")
}

func runRolesList(ctx context.Context, g *globals, name string, args []string) error {
	fs := newFlagSet("keyledger " + name)
	g.register(fs, "token-file")
	if _, err := g.parseCommand(fs, args, "", 0); err != nil {
		return err
	}
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	var out struct {
		Roles []api.RoleView `json:"roles"`
	}
	raw, err := c.do(ctx, "GET", "/v1/roles", nil, nil, &out)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(raw)
	}
	return renderRoles(g.stdout, out.Roles)
}

type roleRequest struct {
	Name        string   `json:"name,omitempty"`
	Permissions []string `json:"permissions"`
	Description *string  `json:"description,omitempty"`
}

// roleWrite is "roles create" (POST /v1/roles) and "roles update"
// (PUT /v1/roles/{name}).
func roleWrite(create bool) func(context.Context, *globals, string, []string) error {
	return func(ctx context.Context, g *globals, name string, args []string) error {
		var (
			req  roleRequest
			desc string
		)
		fs := newFlagSet("keyledger " + name)
		g.register(fs, "token-file")
		fs.Var(listFlag{&req.Permissions}, "permission", "permission of the role (required; repeatable, or comma-separated)")
		fs.StringVar(&desc, "description", "", "what the role is for")
		pos, err := g.parseCommand(fs, args, "NAME --permission P ... [--description D]", 1)
		if err != nil {
			return err
		}
		if len(req.Permissions) == 0 {
			return usageError{"usage: " + fs.Name() + ": at least one --permission is required"}
		}
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "description" {
				req.Description = &desc
			}
		})
		c, err := g.newClient(true)
		if err != nil {
			return err
		}
		method, path, header := "PUT", "/v1/roles/"+url.PathEscape(pos[0]), "Role updated."
		if create {
			method, path, header = "POST", "/v1/roles", "Role created."
			req.Name = pos[0]
		}
		var r api.RoleView
		raw, err := c.do(ctx, method, path, nil, req, &r)
		if err != nil {
			return err
		}
		if g.json {
			return g.printJSON(raw)
		}
		fmt.Fprintln(g.stdout, header)
		return renderRoles(g.stdout, []api.RoleView{r})
	}
}

func runRolesDelete(ctx context.Context, g *globals, name string, args []string) error {
	fs := newFlagSet("keyledger " + name)
	g.register(fs, "token-file")
	pos, err := g.parseCommand(fs, args, "NAME", 1)
	if err != nil {
		return err
	}
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	if _, err := c.do(ctx, "DELETE", "/v1/roles/"+url.PathEscape(pos[0]), nil, nil, nil); err != nil {
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
	fs := newFlagSet("keyledger " + name)
	g.register(fs, "token-file")
	if _, err := g.parseCommand(fs, args, "", 0); err != nil {
		return err
	}
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	var me api.MeView
	raw, err := c.do(ctx, "GET", "/v1/me", nil, nil, &me)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(raw)
	}
	fields := principalFields(me.Principal)
	fields = append(fields,
		field{"Key", me.Key.KeyID + " (" + cell(me.Key.Name, 0) + ")"},
		field{"Key permissions", fmtList(me.Key.Permissions, "none")},
		field{"Key expires", fmtTime(me.Key.ExpiresAt, detailTime)})
	return renderFields(g.stdout, fields)
}
