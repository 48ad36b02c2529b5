package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/keyledger/keyledger/api"
)

const logsSearchArgs = "[--key ID ...] [--owner P] [--actor A] [--action A ...] [--outcome CODE ...] [--ip IP|CIDR] [--from T] [--to T] [--since D] [--q TEXT] [--limit N] [--cursor C] [--all-pages] [--format table|json|ndjson|csv] [--output FILE]"

var logCommands = map[string]command{
	"search": {logsSearchArgs, "search the audit log, newest first, or export it", runLogsSearch},
}

// logsQuery turns the flags of "logs search" into query parameters.
type logsQuery struct {
	keys, actions, outcomes       stringList
	owner, actor, ip, q, from, to string
	cursor, format, output        string
	since                         time.Duration
	limit                         int
	allPages                      bool
}

func (g *globals) parseLogsSearch(name string, args []string) (logsQuery, url.Values, error) {
	var lq logsQuery
	fs := newFlagSet("keyledger " + name)
	g.register(fs, "token-file")
	fs.Var(&lq.keys, "key", "only events of this key id (repeatable)")
	fs.StringVar(&lq.owner, "owner", "", "only events of keys owned by this principal id")
	fs.StringVar(&lq.actor, "actor", "", "only events caused by this principal or service")
	fs.Var(&lq.actions, "action", "created, regenerated, updated, disabled, enabled, revoked, deleted, used, denied, raised (repeatable)")
	fs.Var(&lq.outcomes, "outcome", "verification outcome code, e.g. REVOKED (repeatable)")
	fs.StringVar(&lq.ip, "ip", "", "source address or CIDR")
	fs.StringVar(&lq.from, "from", "", "from this time (RFC 3339)")
	fs.StringVar(&lq.to, "to", "", "until this time (RFC 3339)")
	fs.DurationVar(&lq.since, "since", 0, "within this long (e.g. 168h); sets --from")
	fs.StringVar(&lq.q, "q", "", "free text over name, comments and reason")
	fs.IntVar(&lq.limit, "limit", 0, "events per page (1-1000)")
	fs.StringVar(&lq.cursor, "cursor", "", "continue after a previous page")
	fs.BoolVar(&lq.allPages, "all-pages", false, "follow cursors to the end")
	fs.StringVar(&lq.format, "format", "table", "table, json, ndjson or csv (ndjson and csv stream the whole export)")
	fs.StringVar(&lq.output, "output", "", "write to this file instead of standard output")
	if _, err := g.parseCommand(fs, args, logsSearchArgs, 0); err != nil {
		return lq, nil, err
	}
	if g.json {
		lq.format = "json"
	}
	v := url.Values{}
	for _, k := range lq.keys {
		v.Add("key_id", k)
	}
	for _, a := range lq.actions {
		v.Add("action", a)
	}
	for _, o := range lq.outcomes {
		v.Add("outcome", o)
	}
	for name, val := range map[string]string{"owner": lq.owner, "actor": lq.actor, "ip": lq.ip, "q": lq.q, "cursor": lq.cursor} {
		if val != "" {
			v.Set(name, val)
		}
	}
	for name, val := range map[string]string{"from": lq.from, "to": lq.to} {
		if val == "" {
			continue
		}
		if _, err := time.Parse(time.RFC3339Nano, val); err != nil {
			return lq, nil, usageError{fmt.Sprintf("usage: --%s %q is not an RFC 3339 time like 2026-01-02T15:04:05Z", name, val)}
		}
		v.Set(name, val)
	}
	if lq.since < 0 {
		return lq, nil, usageError{"usage: --since must be positive"}
	}
	if lq.since > 0 {
		if lq.from != "" {
			return lq, nil, usageError{"usage: give --since or --from, not both"}
		}
		v.Set("from", time.Now().Add(-lq.since).UTC().Format(time.RFC3339Nano))
	}
	if lq.limit != 0 {
		if lq.limit < 1 || lq.limit > 1000 {
			return lq, nil, usageError{"usage: --limit must be between 1 and 1000"}
		}
		v.Set("limit", strconv.Itoa(lq.limit))
	}
	switch lq.format {
	case "table", "json":
	case "ndjson", "csv":
		v.Set("format", lq.format)
		if lq.allPages || lq.cursor != "" {
			return lq, nil, usageError{"usage: --format " + lq.format + " exports everything at once; --all-pages and --cursor are for pages"}
		}
	default:
		return lq, nil, usageError{fmt.Sprintf("usage: --format %q: use table, json, ndjson or csv", lq.format)}
	}
	return lq, v, nil
}

func runLogsSearch(ctx context.Context, g *globals, name string, args []string) error {
	lq, v, err := g.parseLogsSearch(name, args)
	if err != nil {
		return err
	}
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	out, commit, err := openOutput(lq.output, g.stdout)
	if err != nil {
		return err
	}
	defer commit(false)
	if lq.format == "ndjson" || lq.format == "csv" {
		if err := c.stream(ctx, "/v1/logs", v, out); err != nil {
			return err
		}
		return commit(true)
	}
	var all []api.LogEntry
	for {
		var page api.LogPage
		raw, err := c.do(ctx, "GET", "/v1/logs", v, nil, &page)
		if err != nil {
			return err
		}
		if lq.format == "json" && !lq.allPages {
			if _, err := out.Write(raw); err != nil {
				return err
			}
			return commit(true)
		}
		all = append(all, page.Events...)
		if !lq.allPages || page.NextCursor == "" {
			if lq.format == "json" {
				if err := writeIndentedJSON(out, api.LogPage{Events: all}); err != nil {
					return err
				}
				return commit(true)
			}
			if err := renderLog(out, all); err != nil {
				return err
			}
			if page.NextCursor != "" {
				fmt.Fprintf(g.stderr, "more: --cursor %s\n", page.NextCursor)
			}
			return commit(true)
		}
		v.Set("cursor", page.NextCursor)
	}
}

// stream copies a response body to w as it arrives: an export of any size
// passes through without being held in memory.
func (c *client) stream(ctx context.Context, path string, q url.Values, w io.Writer) error {
	u := *c.base
	u.Path += path
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, "GET", u.String(), nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("User-Agent", "keyledger-cli")
	resp, err := (&http.Client{Transport: c.http.Transport}).Do(req)
	if err != nil {
		return &apiError{Code: "unreachable", Detail: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return problemError(resp, raw)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return &apiError{Code: "export_incomplete", Detail: err.Error()}
	}
	return nil
}

// openOutput returns where to write: stdout, or a temporary file beside
// name that commit(true) renames into place, so a failed export never
// leaves a half-written file under the name asked for.
func openOutput(name string, stdout io.Writer) (io.Writer, func(ok bool) error, error) {
	if name == "" || name == "-" {
		return stdout, func(bool) error { return nil }, nil
	}
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return nil, nil, fmt.Errorf("--output: %w", err)
	}
	done := false
	return f, func(ok bool) error {
		if done {
			return nil
		}
		done = true
		cerr := f.Close()
		if !ok || cerr != nil {
			os.Remove(f.Name())
			return cerr
		}
		if err := os.Rename(f.Name(), name); err != nil {
			os.Remove(f.Name())
			return fmt.Errorf("--output: %w", err)
		}
		return nil
	}, nil
}

func writeIndentedJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// renderLog prints log entries as a table for people.
func renderLog(w io.Writer, es []api.LogEntry) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "TIME\tACTION\tOUTCOME\tKEY\tACTOR\tSOURCE\tDETAIL")
	for _, e := range es {
		detail := e.Reason
		if detail == "" {
			detail = e.Name
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", fmtTime(e.Time, "2006-01-02 15:04:05.000"), e.Action,
			orDash(e.Outcome), e.KeyID, cell(e.Actor, 36), orDash(e.SourceIP), cell(detail, 60))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
