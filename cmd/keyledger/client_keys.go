package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

var keyCommands = map[string]command{
	"create":     {"--name N", "create a key; its token is shown once", runKeysCreate},
	"list":       {"", "list keys (the grid)", runKeysList},
	"show":       {"ID", "show one key", runKeysShow},
	"update":     {"ID", "change a key's name, comments or permissions", runKeysUpdate},
	"regenerate": {"ID", "extend a key's lifetime; --rotate also replaces its secret", runKeysRegenerate},
	"revoke":     {"ID --reason R", "revoke a key at once, for good", runKeysRevoke},
	"disable":    {"ID", "disable a key until it is enabled again", runKeysDisable},
	"enable":     {"ID", "enable a disabled key", runKeysEnable},
	"delete":     {"ID", "revoke and delete a key", runKeysDelete},
	"events":     {"ID", "show a key's history, oldest first", runKeysEvents},
}

// keyRequest is the body of POST /v1/keys. The server rejects unknown
// fields, so the names here must be exactly the server's.
type keyRequest struct {
	Name         string            `json:"name"`
	Comments     string            `json:"comments,omitempty"`
	Permissions  []string          `json:"permissions,omitempty"`
	Role         string            `json:"role,omitempty"`
	LifetimeDays int               `json:"lifetime_days,omitempty"`
	AllowedIPs   []string          `json:"allowed_ips,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`
}

// parseKeysCreate reads the flags of "keys create" into a request.
func (g *globals) parseKeysCreate(name string, args []string) (keyRequest, error) {
	var req keyRequest
	md := kvMap{}
	fs := g.flags(name)
	fs.StringVar(&req.Name, "name", "", "name of the key (required)")
	fs.StringVar(&req.Comments, "comments", "", "free-text comments")
	fs.Var(listFlag{&req.Permissions}, "permission", "permission the key carries (repeatable, or comma-separated; default: all of yours)")
	fs.StringVar(&req.Role, "role", "", "give the key a role's permissions instead of --permission")
	fs.IntVar(&req.LifetimeDays, "lifetime-days", 0, "lifetime in days (default: the server's, 90)")
	fs.Var(listFlag{&req.AllowedIPs}, "allowed-ip", "address or CIDR the key may be used from (repeatable, or comma-separated; default: any)")
	fs.Var(md, "metadata", "key=value to attach (repeatable)")
	if _, err := g.parseCommand(fs, args, "--name N", 0); err != nil {
		return req, err
	}
	switch {
	case strings.TrimSpace(req.Name) == "":
		return req, usageError{"usage: " + fs.Name() + ": --name is required"}
	case cleanText(fs, &req.Name, domain.CleanName) != nil:
		return req, cleanText(fs, &req.Name, domain.CleanName)
	case cleanText(fs, &req.Comments, domain.CleanComments) != nil:
		return req, cleanText(fs, &req.Comments, domain.CleanComments)
	case req.Role != "" && len(req.Permissions) > 0:
		return req, usageError{"usage: " + fs.Name() + ": give --permission or --role, not both"}
	case req.LifetimeDays < 0:
		return req, usageError{"usage: " + fs.Name() + ": --lifetime-days must be positive"}
	}
	if len(md) > 0 {
		req.Metadata = md
	}
	return req, nil
}

func runKeysCreate(ctx context.Context, g *globals, name string, args []string) error {
	req, err := g.parseKeysCreate(name, args)
	if err != nil {
		return err
	}
	var k api.CreatedKey
	raw, err := g.request(ctx, "POST", "/v1/keys", nil, req, &k)
	if err != nil {
		return err
	}
	if g.json {
		g.warnShownOnce()
		return g.printJSON(raw)
	}
	return g.renderToken("Key created.", keyFields(k.KeyView), k.Token)
}

// listRequest is what "keys list" asks for.
type listRequest struct {
	query    url.Values
	allPages bool
}

var listStatuses = []string{"active", "expired", "revoked", "disabled", "deleted", "all"}

func (g *globals) parseKeysList(name string, args []string) (listRequest, error) {
	var (
		status, q, cursor, owner string
		limit                    int
		all                      bool
	)
	fs := g.flags(name)
	fs.StringVar(&status, "status", "", "only keys with this status: "+strings.Join(listStatuses, ", ")+" (default: all but deleted)")
	fs.StringVar(&q, "q", "", "only keys whose name, comments or id contain this text")
	fs.IntVar(&limit, "limit", 0, "keys per page, 1 to 500 (default: the server's, 100)")
	fs.StringVar(&cursor, "cursor", "", "page to start from (printed after a page that has more)")
	fs.StringVar(&owner, "owner", "", "only keys of this principal id (needs api.key.view.any)")
	fs.BoolVar(&all, "all-pages", false, "follow the cursor to the last page")
	if _, err := g.parseCommand(fs, args, "", 0); err != nil {
		return listRequest{}, err
	}
	v := url.Values{}
	if status != "" {
		ok := false
		for _, s := range listStatuses {
			ok = ok || s == status
		}
		if !ok {
			return listRequest{}, usageError{fmt.Sprintf("usage: %s: --status must be one of %s", fs.Name(), strings.Join(listStatuses, ", "))}
		}
		v.Set("status", status)
	}
	if q != "" {
		v.Set("q", q)
	}
	limitSet := false
	fs.Visit(func(f *flag.Flag) { limitSet = limitSet || f.Name == "limit" })
	if limitSet {
		if limit < 1 {
			return listRequest{}, usageError{fmt.Sprintf("usage: %s: --limit must be positive", fs.Name())}
		}
		v.Set("limit", strconv.Itoa(limit))
	}
	if cursor != "" {
		v.Set("cursor", cursor)
	}
	if owner != "" {
		v.Set("owner", owner)
	}
	return listRequest{query: v, allPages: all}, nil
}

func runKeysList(ctx context.Context, g *globals, name string, args []string) error {
	req, err := g.parseKeysList(name, args)
	if err != nil {
		return err
	}
	var all api.KeyPage
	all.Keys = []api.KeyView{}
	for {
		var page api.KeyPage
		raw, err := g.request(ctx, "GET", "/v1/keys", req.query, nil, &page)
		if err != nil {
			return err
		}
		if !req.allPages {
			if g.json {
				return g.printJSON(raw)
			}
			if err := renderKeyGrid(g.stdout, page.Keys); err != nil {
				return err
			}
			if page.NextCursor != "" {
				fmt.Fprintf(g.stdout, "\nMore keys follow: add --cursor %s (or use --all-pages).\n", page.NextCursor)
			}
			return nil
		}
		all.Keys = append(all.Keys, page.Keys...)
		if page.NextCursor == "" {
			break
		}
		if page.NextCursor == req.query.Get("cursor") {
			return &apiError{Code: "bad_response", Detail: "the server returned the same cursor twice"}
		}
		req.query.Set("cursor", page.NextCursor)
	}
	if g.json {
		b, err := json.MarshalIndent(all, "", "  ")
		if err != nil {
			return err
		}
		return g.printJSON(b)
	}
	return renderKeyGrid(g.stdout, all.Keys)
}

const keysPath = "/v1/keys/"

// keyIDCommand parses the flags of a command on one key and returns the
// key's path.
func (g *globals) keyIDCommand(fs *flag.FlagSet, args []string, argNames string) (string, error) {
	return g.idPath(fs, args, argNames, keysPath)
}

// keyUpdateRequest is the body of PATCH /v1/keys/{id}: only the fields
// given on the command line are sent.
type keyUpdateRequest struct {
	Name        *string   `json:"name,omitempty"`
	Comments    *string   `json:"comments,omitempty"`
	Permissions *[]string `json:"permissions,omitempty"`
}

func runKeysUpdate(ctx context.Context, g *globals, name string, args []string) error {
	var (
		newName, comments string
		perms             []string
	)
	fs := g.flags(name)
	fs.StringVar(&newName, "name", "", "new name")
	fs.StringVar(&comments, "comments", "", "new comments")
	fs.Var(listFlag{&perms}, "permission", "the key's new permissions (repeatable, or comma-separated; replaces them all)")
	path, err := g.keyIDCommand(fs, args, "ID [--name N] [--comments C] [--permission P ...]")
	if err != nil {
		return err
	}
	var req keyUpdateRequest
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "name":
			req.Name = &newName
		case "comments":
			req.Comments = &comments
		case "permission":
			req.Permissions = &perms
		}
	})
	if req == (keyUpdateRequest{}) {
		return usageError{"usage: " + fs.Name() + ": give at least one of --name, --comments, --permission"}
	}
	if req.Name != nil {
		if err := cleanText(fs, req.Name, domain.CleanName); err != nil {
			return err
		}
	}
	if req.Comments != nil {
		if err := cleanText(fs, req.Comments, domain.CleanComments); err != nil {
			return err
		}
	}
	return g.keyCommand(ctx, "PATCH", path, req, "Key updated.")
}

// keyCommand sends a command on one key and prints the key it returns.
func (g *globals) keyCommand(ctx context.Context, method, path string, body any, header string) error {
	return show(ctx, g, method, path, body, header, renderKey)
}

type regenerateRequest struct {
	Rotate      bool   `json:"rotate,omitempty"`
	GracePeriod string `json:"grace_period,omitempty"`
}

func (g *globals) parseKeysRegenerate(name string, args []string) (string, regenerateRequest, error) {
	var req regenerateRequest
	fs := g.flags(name)
	fs.BoolVar(&req.Rotate, "rotate", false, "also replace the key's secret: a new token is shown once")
	fs.StringVar(&req.GracePeriod, "grace-period", "", "with --rotate, how long the old token keeps working, like 1h or 30m (default: not at all)")
	path, err := g.keyIDCommand(fs, args, "ID [--rotate [--grace-period D]]")
	if err != nil {
		return "", req, err
	}
	if req.GracePeriod != "" {
		if !req.Rotate {
			return "", req, usageError{"usage: " + fs.Name() + ": --grace-period needs --rotate"}
		}
		if d, err := time.ParseDuration(req.GracePeriod); err != nil || d < 0 {
			return "", req, usageError{fmt.Sprintf("usage: %s: --grace-period %q is not a duration like 1h or 30m", fs.Name(), req.GracePeriod)}
		}
	}
	return path + "/regenerate", req, nil
}

func runKeysRegenerate(ctx context.Context, g *globals, name string, args []string) error {
	path, req, err := g.parseKeysRegenerate(name, args)
	if err != nil {
		return err
	}
	var k api.CreatedKey
	raw, err := g.request(ctx, "POST", path, nil, req, &k)
	if err != nil {
		return err
	}
	if k.Token == "" {
		if g.json {
			return g.printJSON(raw)
		}
		fmt.Fprintln(g.stdout, "Key regenerated: it now expires "+fmtTime(k.ExpiresAt, detailTime)+"; its token is unchanged.")
		return renderKey(g.stdout, k.KeyView)
	}
	if g.json {
		g.warnShownOnce()
		return g.printJSON(raw)
	}
	header := "Key rotated: the old token stops working now."
	if k.RotationGraceEnd != nil {
		header = "Key rotated: the old token keeps working until " + fmtTime(*k.RotationGraceEnd, detailTime) + "."
	}
	return g.renderToken(header, keyFields(k.KeyView), k.Token)
}

type reasonRequest struct {
	Reason string `json:"reason"`
}

// reasonBody is the body of a command whose reason is optional.
func reasonBody(reason string) any {
	if reason == "" {
		return nil
	}
	return reasonRequest{Reason: reason}
}

// reasonCommand is revoke, disable and delete: a key id and a reason.
func reasonCommand(method, suffix string, required bool, header string) func(context.Context, *globals, string, []string) error {
	return func(ctx context.Context, g *globals, name string, args []string) error {
		var reason string
		fs := g.flags(name)
		argNames := "ID [--reason R]"
		help := "why (recorded in the key's history)"
		if required {
			argNames = "ID --reason R"
			help += " (required)"
		}
		fs.StringVar(&reason, "reason", "", help)
		path, err := g.keyIDCommand(fs, args, argNames)
		if err != nil {
			return err
		}
		if required && strings.TrimSpace(reason) == "" {
			return usageError{"usage: " + fs.Name() + ": --reason is required"}
		}
		return g.keyCommand(ctx, method, path+suffix, reasonBody(reason), header)
	}
}

var (
	runKeysRevoke  = reasonCommand("POST", "/revoke", true, "Key revoked.")
	runKeysDisable = reasonCommand("POST", "/disable", false, "Key disabled.")
	runKeysDelete  = reasonCommand("DELETE", "", false, "Key deleted.")
)

// KeyEvents is the body of GET /v1/keys/{id}/events.
type keyEvents struct {
	KeyID  string          `json:"key_id"`
	Events []api.EventView `json:"events"`
}

var (
	runKeysShow   = idCommand("GET", keysPath, "", "", renderKey)
	runKeysEnable = idCommand("POST", keysPath, "/enable", "Key enabled.", renderKey)
	runKeysEvents = idCommand("GET", keysPath, "/events", "", func(w io.Writer, ev keyEvents) error {
		return renderEvents(w, ev.Events)
	})
)
