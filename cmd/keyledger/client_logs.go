package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/keyledger/keyledger/domain"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keyledger/keyledger/api"
)

const logsSearchArgs = "[--key ID ...] [--owner P] [--actor A] [--action A ...] [--outcome CODE ...] [--ip IP|CIDR] " +
	"[--from T] [--to T] [--since D] [--q TEXT] [--limit N] [--cursor C] [--all-pages] [--format table|json|ndjson|csv] [--output FILE]"

var logCommands = map[string]command{
	// The full synopsis is long; "logs search -h" shows it with every flag.
	"search": {"[filters] [--all-pages] [--format F] [--output FILE]", "search the audit log, newest first, or export it as NDJSON or CSV", runLogsSearch},
}

// maxLogLimit is the largest page GET /v1/logs serves.
const maxLogLimit = 1000

var logFormats = []string{"table", "json", "ndjson", "csv"}

// logsRequest is what "logs search" asks for.
type logsRequest struct {
	query    url.Values
	format   string // table, json, ndjson or csv
	allPages bool
	output   string // file to write; empty or "-" is standard output
}

// exported reports whether the server streams the whole answer as an
// export rather than in pages.
func (r logsRequest) exported() bool { return r.format == "ndjson" || r.format == "csv" }

// parseLogsSearch reads the flags of "logs search". now is the time --since
// counts back from. What can be checked without the server (times,
// durations, addresses, the page size, the format) is checked here, so a
// typo is a usage error (exit 2) rather than a round trip.
func (g *globals) parseLogsSearch(name string, args []string, now time.Time) (logsRequest, error) {
	var (
		keys, actions, outcomes                          []string
		owner, actor, ip, from, to, text, cursor, format string
		output                                           string
		since                                            time.Duration
		limit                                            int
		all                                              bool
	)
	fs := g.flags(name)
	fs.Var(listFlag{&keys}, "key", "only events of this key id (repeatable, or comma-separated)")
	fs.StringVar(&owner, "owner", "", "only events of keys owned by this principal id")
	fs.StringVar(&actor, "actor", "", "only events done by this principal id (or verifying service)")
	fs.Var(listFlag{&actions}, "action", "only this action: created, regenerated, updated, disabled, enabled, revoked, deleted, used, denied, ... (repeatable)")
	fs.Var(listFlag{&outcomes}, "outcome", "only this outcome code, like VALID or REVOKED (repeatable)")
	fs.StringVar(&ip, "ip", "", "only events from this source address or CIDR")
	fs.StringVar(&from, "from", "", "only events at or after this RFC 3339 time, like 2026-03-01T00:00:00Z")
	fs.StringVar(&to, "to", "", "only events before this RFC 3339 time")
	fs.DurationVar(&since, "since", 0, "only events within this long before now, like 24h (instead of --from)")
	fs.StringVar(&text, "q", "", "only events whose key name, comments or reason contain this text")
	fs.IntVar(&limit, "limit", 0, fmt.Sprintf("events per page, 1 to %d (default: the server's, 100); caps an ndjson or csv export", maxLogLimit))
	fs.StringVar(&cursor, "cursor", "", "page to start from (printed after a page that has more)")
	fs.BoolVar(&all, "all-pages", false, "follow the cursor to the last page (table and json)")
	fs.StringVar(&format, "format", "", "table (default), json, or ndjson or csv to stream the whole export")
	fs.StringVar(&output, "output", "", "write to this file instead of standard output; it appears only once complete")
	if _, err := g.parseCommand(fs, args, logsSearchArgs, 0); err != nil {
		return logsRequest{}, err
	}
	bad := func(format string, a ...any) (logsRequest, error) {
		return logsRequest{}, usageError{"usage: " + fs.Name() + ": " + fmt.Sprintf(format, a...)}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	req := logsRequest{query: url.Values{}, format: format, allPages: all, output: output}
	switch {
	case format == "" && g.json:
		req.format = "json"
	case format == "":
		req.format = "table"
	case !slices.Contains(logFormats, format):
		return bad("--format must be one of %s", strings.Join(logFormats, ", "))
	case g.json && format != "json":
		return bad("--json and --format %s disagree", format)
	}
	if req.exported() {
		if all {
			return bad("--all-pages is for table and json: an ndjson or csv export is complete already")
		}
		req.query.Set("format", req.format)
	}
	q := req.query
	for _, k := range keys {
		q.Add("key_id", k)
	}
	for _, a := range actions {
		q.Add("action", a)
	}
	for _, o := range outcomes {
		q.Add("outcome", o)
	}
	for name, v := range map[string]string{"owner": owner, "actor": actor, "q": text, "cursor": cursor} {
		if v = strings.TrimSpace(v); v != "" {
			q.Set(name, v)
		}
	}
	if ip = strings.TrimSpace(ip); ip != "" {
		if !validSource(ip) {
			return bad("--ip %q is not an address or CIDR", ip)
		}
		q.Set("ip", ip)
	}
	var fromT, toT time.Time
	for _, t := range []struct {
		name string
		s    string
		dst  *time.Time
	}{{"from", from, &fromT}, {"to", to, &toT}} {
		if t.s = strings.TrimSpace(t.s); t.s == "" {
			continue
		}
		v, err := time.Parse(time.RFC3339Nano, t.s)
		if err != nil {
			return bad("--%s %q is not an RFC 3339 time like 2026-03-01T00:00:00Z", t.name, t.s)
		}
		*t.dst = v
		q.Set(t.name, t.s)
	}
	if set["since"] {
		switch {
		case since <= 0:
			return bad("--since must be positive, like 24h")
		case !fromT.IsZero():
			return bad("give --since or --from, not both")
		}
		fromT = now.Add(-since).UTC()
		q.Set("from", fromT.Format(time.RFC3339Nano))
	}
	if !fromT.IsZero() && !toT.IsZero() && !fromT.Before(toT) {
		return bad("the start (--from or --since) must be before --to")
	}
	if set["limit"] {
		if limit < 1 || limit > maxLogLimit {
			return bad("--limit must be between 1 and %d", maxLogLimit)
		}
		q.Set("limit", strconv.Itoa(limit))
	}
	return req, nil
}

// validSource is the server's rule for the ip parameter.
func validSource(s string) bool {
	_, err := domain.ParsePrefix(s)
	return err == nil
}

func runLogsSearch(ctx context.Context, g *globals, name string, args []string) error {
	req, err := g.parseLogsSearch(name, args, time.Now())
	if err != nil {
		return err
	}
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	var out io.Writer = g.stdout
	var file *atomicFile
	if req.output != "" && req.output != "-" {
		if file, err = createAtomic(req.output); err != nil {
			return err
		}
		// Anything but a complete answer leaves no file behind: a
		// truncated export must not pass for a whole one.
		defer file.abort()
		out = file
	}
	if req.exported() {
		err = c.export(ctx, req, out)
	} else {
		err = g.searchPages(ctx, c, req, out)
	}
	if err != nil {
		return err
	}
	if file != nil {
		return file.commit()
	}
	return nil
}

// rawLogPage is a page of GET /v1/logs with its events as the server wrote
// them, so that --json passes on every field, even ones this client does
// not know yet.
type rawLogPage struct {
	Events     []json.RawMessage `json:"events"`
	NextCursor string            `json:"next_cursor"`
}

// searchPages prints one page, or every page with --all-pages, as a table
// or as JSON. Pages are written as they arrive; every page's JSON is
// decoded only as far as the output needs.
func (g *globals) searchPages(ctx context.Context, c *client, req logsRequest, w io.Writer) error {
	var tw *tabwriter.Writer
	if req.format == "table" {
		tw = newLogTable(w)
	}
	events := 0
	for {
		raw, err := c.do(ctx, "GET", "/v1/logs", req.query, nil, nil)
		if err != nil {
			return err
		}
		var next string
		switch {
		case req.format == "json" && !req.allPages:
			_, err := fmt.Fprintf(w, "%s\n", bytes.TrimRight(raw, "\n"))
			return err
		case req.format == "json":
			var page rawLogPage
			if err := json.Unmarshal(raw, &page); err != nil {
				return &apiError{Code: "bad_response", Detail: fmt.Sprintf("GET /v1/logs: %v", err)}
			}
			for _, e := range page.Events {
				if err := writeIndentedEvent(w, e, events == 0); err != nil {
					return err
				}
				events++
			}
			next = page.NextCursor
		default:
			var page api.LogPage
			if err := json.Unmarshal(raw, &page); err != nil {
				return &apiError{Code: "bad_response", Detail: fmt.Sprintf("GET /v1/logs: %v", err)}
			}
			writeLogRows(tw, page.Events)
			next = page.NextCursor
		}
		if next == "" || !req.allPages {
			if tw != nil {
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if next != "" {
				fmt.Fprintf(g.stderr, "more: --cursor %s\n", next)
			}
			break
		}
		if next == req.query.Get("cursor") {
			return &apiError{Code: "bad_response", Detail: "the server returned the same cursor twice"}
		}
		req.query.Set("cursor", next)
	}
	if req.format == "json" {
		end := "\n  ]\n}\n"
		if events == 0 {
			end = "{\n  \"events\": []\n}\n"
		}
		_, err := io.WriteString(w, end)
		return err
	}
	return nil
}

// writeIndentedEvent writes one event of an --all-pages JSON answer, which
// is laid out like a single page of the server's: {"events": [...]}.
func writeIndentedEvent(w io.Writer, e json.RawMessage, first bool) error {
	var b bytes.Buffer
	if first {
		b.WriteString("{\n  \"events\": [\n    ")
	} else {
		b.WriteString(",\n    ")
	}
	if err := json.Indent(&b, e, "    ", "  "); err != nil {
		return &apiError{Code: "bad_response", Detail: fmt.Sprintf("GET /v1/logs: %v", err)}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// The log table shows times to the millisecond: a verification and the
// revocation that follows it are often in the same second.
const logTime = "2006-01-02 15:04:05.000"

func newLogTable(w io.Writer) *tabwriter.Writer {
	tw := newTable(w)
	fmt.Fprintln(tw, "TIME (UTC)\tACTION\tOUTCOME\tKEY\tACTOR\tSOURCE IP\tREASON / NAME")
	return tw
}

// writeLogRows adds events to a log table. The last column is the reason
// of a revocation, a denial or a change when there is one, else the key's
// name, which is what tells a person which key a row is about.
func writeLogRows(tw *tabwriter.Writer, events []api.LogEntry) {
	for _, e := range events {
		detail := e.Reason
		if detail == "" {
			detail = e.Name
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", fmtTime(e.Time, logTime), cell(e.Action, 0), cell(e.Outcome, 0),
			cell(e.KeyID, 0), cell(e.Actor, 40), cell(e.SourceIP, 0), cell(detail, 60))
	}
}

func renderLogTable(w io.Writer, events []api.LogEntry) error {
	tw := newLogTable(w)
	writeLogRows(tw, events)
	return tw.Flush()
}

// exportTransport is the transport of exports: they have no overall
// deadline, since an export of any size may take a while, but the server
// must start answering within a minute.
var exportTransport = func() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = time.Minute
	return t
}()

// exportTypes are the media types the server sends an export as.
var exportTypes = map[string]string{"ndjson": "application/x-ndjson", "csv": "text/csv"}

// export copies the server's ndjson or csv export to w as it arrives,
// without holding it in memory. An export that breaks off midway is an
// error, never a short but apparently complete file.
func (c *client) export(ctx context.Context, req logsRequest, w io.Writer) error {
	u := *c.base
	u.Path += "/v1/logs"
	u.RawQuery = req.query.Encode()
	hreq, err := http.NewRequestWithContext(ctx, "GET", u.String(), nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	hreq.Header.Set("Accept", exportTypes[req.format]+", application/problem+json")
	hreq.Header.Set("User-Agent", "keyledger-cli")
	if c.token != "" {
		hreq.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := (&http.Client{Transport: exportTransport}).Do(hreq)
	if err != nil {
		return &apiError{Code: "unreachable", Detail: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return problemError(resp, raw)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != exportTypes[req.format] {
		return &apiError{Code: "bad_response", Detail: fmt.Sprintf("GET /v1/logs: the export is %q, want %s", mt, exportTypes[req.format])}
	}
	ew := &errWriter{w: w}
	n, err := io.Copy(ew, resp.Body)
	switch {
	case ew.err != nil:
		return &apiError{Code: "output", Detail: ew.err.Error()}
	case err != nil:
		return &apiError{Code: "export_truncated", Detail: fmt.Sprintf("the export broke off after %d bytes: %v", n, err)}
	}
	return nil
}

// errWriter remembers a write error, so that a failed copy can say whether
// the server or the destination failed.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil && e.err == nil {
		e.err = err
	}
	return n, err
}

// atomicFile is an output file that appears under its name only once it is
// complete: it is written as a temporary file in the same directory and
// renamed over the name by commit.
type atomicFile struct {
	*os.File
	path string
	done bool
}

// createAtomic starts writing path. The file is readable by its owner only
// (audit logs name actors and source addresses) unless it replaces a file,
// whose permissions it keeps.
func createAtomic(path string) (*atomicFile, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, &apiError{Code: "output", Detail: err.Error()}
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
		_ = f.Chmod(fi.Mode().Perm())
	}
	return &atomicFile{File: f, path: path}, nil
}

// commit makes the file durable and puts it in place.
func (a *atomicFile) commit() error {
	err := a.Sync()
	if cerr := a.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(a.Name(), a.path)
	}
	if err != nil {
		_ = os.Remove(a.Name())
		return &apiError{Code: "output", Detail: err.Error()}
	}
	a.done = true
	return nil
}

// abort removes the temporary file unless commit put it in place.
func (a *atomicFile) abort() {
	if a.done {
		return
	}
	_ = a.Close()
	_ = os.Remove(a.Name())
}
