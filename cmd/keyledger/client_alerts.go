package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/keyledger/keyledger/api"
)

const (
	alertsListArgs = "[--rule R ...] [--severity S ...] [--min-severity S] [--key ID] [--since D] [--limit N] [--cursor C]"
	alertsTailArgs = "[--rule R ...] [--min-severity S]"
)

var alertCommands = map[string]command{
	"list": {alertsListArgs, "list raised alerts, newest first", runAlertsList},
	"tail": {alertsTailArgs, "print alerts as they are raised, until interrupted", runAlertsTail},
}

func runAlertsList(ctx context.Context, g *globals, name string, args []string) error {
	var rules, sevs, keys []string
	var minSev, cursor string
	var since time.Duration
	limit := 0
	fs := g.flags(name)
	fs.Var(listFlag{&rules}, "rule", "only this rule (repeatable, or comma-separated)")
	fs.Var(listFlag{&sevs}, "severity", "only this severity: low, medium, high, critical (repeatable, or comma-separated)")
	fs.StringVar(&minSev, "min-severity", "", "only this severity and above")
	fs.Var(listFlag{&keys}, "key", "only alerts about this key id (repeatable, or comma-separated)")
	fs.DurationVar(&since, "since", 0, "only alerts raised within this long (e.g. 24h)")
	fs.IntVar(&limit, "limit", 0, "alerts per page (1-1000)")
	fs.StringVar(&cursor, "cursor", "", "continue after a previous page")
	if _, err := g.parseCommand(fs, args, alertsListArgs, 0); err != nil {
		return err
	}
	q := url.Values{}
	for _, r := range rules {
		q.Add("rule", r)
	}
	for _, s := range sevs {
		q.Add("severity", s)
	}
	for _, k := range keys {
		q.Add("key_id", k)
	}
	if minSev != "" {
		q.Set("min_severity", minSev)
	}
	if since < 0 {
		return usageError{"usage: --since must be positive"}
	}
	if since > 0 {
		q.Set("from", time.Now().Add(-since).UTC().Format(time.RFC3339Nano))
	}
	if limit != 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	var page api.AlertPage
	raw, err := c.do(ctx, "GET", "/v1/alerts", q, nil, &page)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(raw)
	}
	tw := newTable(g.stdout)
	fmt.Fprintln(tw, "TIME\tSEVERITY\tRULE\tKEYS\tSOURCES\tSUMMARY")
	for _, a := range page.Alerts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", fmtTime(a.Time, time.RFC3339), a.Severity, a.Rule,
			cell(fmtList(a.KeyIDs, "-"), 40), cell(fmtList(a.SourceIPs, "-"), 40), cell(a.Summary, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if page.NextCursor != "" {
		fmt.Fprintf(g.stderr, "more: --cursor %s\n", page.NextCursor)
	}
	return nil
}

// runAlertsTail reads the server's alert stream (server-sent events) and
// prints each alert as it arrives: a line for people, or its JSON with --json.
func runAlertsTail(ctx context.Context, g *globals, name string, args []string) error {
	var rules []string
	var minSev string
	fs := g.flags(name)
	fs.Var(listFlag{&rules}, "rule", "only this rule (repeatable, or comma-separated)")
	fs.StringVar(&minSev, "min-severity", "", "only this severity and above")
	if _, err := g.parseCommand(fs, args, alertsTailArgs, 0); err != nil {
		return err
	}
	c, err := g.newClient(true)
	if err != nil {
		return err
	}
	q := url.Values{}
	for _, r := range rules {
		q.Add("rule", r)
	}
	if minSev != "" {
		q.Set("min_severity", minSev)
	}
	u := *c.base
	u.Path += "/v1/alerts/stream"
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, "GET", u.String(), nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", "Bearer "+c.token)
	// A stream has no overall deadline; the server sends keep-alives.
	resp, err := (&http.Client{Transport: c.http.Transport}).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return &apiError{Code: "unreachable", Detail: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return problemError(resp, raw)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if g.json {
			fmt.Fprintln(g.stdout, data)
			continue
		}
		var a api.AlertView
		if err := json.Unmarshal([]byte(data), &a); err != nil {
			return &apiError{Code: "bad_response", Detail: err.Error()}
		}
		fmt.Fprintf(g.stdout, "%s %-8s %-20s %s\n", fmtTime(a.Time, time.RFC3339), a.Severity, a.Rule, a.Summary)
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return &apiError{Code: "unreachable", Detail: err.Error()}
	}
	return &apiError{Code: "stream_closed", Detail: "the server closed the alert stream"}
}
