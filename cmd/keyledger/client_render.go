package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

// Times in tables are UTC, to the minute; detail views add seconds.
const (
	gridTime   = "2006-01-02 15:04"
	detailTime = "2006-01-02 15:04:05 UTC"
)

func sortedKeys[M ~map[K]V, K cmp.Ordered, V any](m M) []K {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// cell makes a value safe for one table cell: control characters (a tab
// would break the columns, a newline the rows) become spaces and long text
// is cut.
func cell(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if max > 0 {
		if r := []rune(s); len(r) > max {
			s = string(r[:max-1]) + "…"
		}
	}
	if s == "" {
		return "-"
	}
	return s
}

func fmtTime(t time.Time, layout string) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(layout)
}

func fmtTimePtr(t *time.Time, layout, none string) string {
	if t == nil || t.IsZero() {
		return none
	}
	return fmtTime(*t, layout)
}

// fmtRemaining renders a remaining lifetime as its two largest units.
func fmtRemaining(secs int64) string {
	if secs <= 0 {
		return "-"
	}
	d, h, m, s := secs/86400, secs%86400/3600, secs%3600/60, secs%60
	switch {
	case d > 0:
		return fmt.Sprintf("%dd %dh", d, h)
	case h > 0:
		return fmt.Sprintf("%dh %dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm %ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}

func fmtList(l []string, none string) string {
	if len(l) == 0 {
		return none
	}
	return strings.Join(l, ", ")
}

// renderKeyGrid prints the key grid: the columns of the panels keyledger
// grows from.
func renderKeyGrid(w io.Writer, keys []api.KeyView) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tNAME\tOWNER\tSTATUS\tCREATED (UTC)\tEXPIRES (UTC)\tREMAINING\tLAST USED (UTC)")
	for _, k := range keys {
		remaining := "-"
		if k.Status == domain.StatusActive {
			remaining = fmtRemaining(k.RemainingSeconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			cell(k.KeyID, 0), cell(k.Name, 32), cell(k.Owner, 0), k.Status,
			fmtTime(k.CreatedAt, gridTime), fmtTime(k.ExpiresAt, gridTime), remaining,
			fmtTimePtr(k.LastUsedAt, gridTime, "never"))
	}
	return tw.Flush()
}

// field is one line of a detail view; empty values are left out.
type field struct{ name, value string }

func renderFields(w io.Writer, fields []field) error {
	tw := newTable(w)
	for _, f := range fields {
		if f.value == "" {
			continue
		}
		fmt.Fprintf(tw, "%s:\t%s\n", f.name, f.value)
	}
	return tw.Flush()
}

func keyFields(k api.KeyView) []field {
	expires := fmtTime(k.ExpiresAt, detailTime)
	if k.Status == domain.StatusActive {
		expires += " (" + fmtRemaining(k.RemainingSeconds) + " left)"
	}
	revoked := ""
	if k.RevokedAt != nil {
		revoked = fmtTime(*k.RevokedAt, detailTime)
		if k.RevokeReason != "" {
			revoked += " (" + cell(k.RevokeReason, 0) + ")"
		}
	}
	lastUsed := fmtTimePtr(k.LastUsedAt, detailTime, "never")
	if k.LastUsedIP != "" {
		lastUsed += " from " + k.LastUsedIP
	}
	var md []string
	for _, mk := range sortedKeys(k.Metadata) {
		md = append(md, cell(mk, 0)+"="+cell(k.Metadata[mk], 0))
	}
	return []field{
		{"ID", k.KeyID},
		{"Name", cell(k.Name, 0)},
		{"Owner", k.Owner},
		{"Status", string(k.Status)},
		{"Comments", strings.TrimSpace(cellOrEmpty(k.Comments))},
		{"Role", k.Role},
		{"Permissions", fmtList(k.Permissions, "none")},
		{"Allowed IPs", fmtList(k.AllowedIPs, "any")},
		{"Metadata", strings.Join(md, ", ")},
		{"Lifetime", fmt.Sprintf("%d days", k.LifetimeDays)},
		{"Created", fmtTime(k.CreatedAt, detailTime) + " by " + cell(k.CreatedBy, 0)},
		{"Expires", expires},
		{"Updated", fmtTime(k.UpdatedAt, detailTime)},
		{"Revoked", revoked},
		{"Deleted", fmtTimePtr(k.DeletedAt, detailTime, "")},
		{"Old secret valid until", fmtTimePtr(k.RotationGraceEnd, detailTime, "")},
		{"Last used", lastUsed},
		{"Version", fmt.Sprint(k.Version)},
	}
}

func cellOrEmpty(s string) string {
	if s == "" {
		return ""
	}
	return cell(s, 0)
}

func renderKey(w io.Writer, k api.KeyView) error { return renderFields(w, keyFields(k)) }

// renderToken prints a token the server has just issued: the key's details,
// then the token alone on the last line so it is easy to copy.
func (g *globals) renderToken(header string, fields []field, token string) error {
	fmt.Fprintln(g.stdout, header)
	if err := renderFields(g.stdout, fields); err != nil {
		return err
	}
	g.warnShownOnce()
	_, err := fmt.Fprintf(g.stdout, "Token: %s\n", token)
	return err
}

// eventDetail summarises an event's data for the events table; hashes are
// left out because they are long and say nothing to a person reading.
func eventDetail(typ string, data json.RawMessage) string {
	var m map[string]any
	if json.Unmarshal(data, &m) != nil {
		return cell(string(data), 100)
	}
	var parts []string
	if typ == domain.TypeKeyRegenerated {
		// A regeneration leads with what it did to the expiry.
		old, _ := m["previous_expires_at"].(string)
		if old == "" {
			old = "?"
		}
		newExp, _ := m["expires_at"].(string)
		parts = append(parts, "expiry "+old+" -> "+newExp)
		delete(m, "previous_expires_at")
		delete(m, "expires_at")
	}
	for _, k := range sortedKeys(m) {
		if strings.Contains(k, "hash") {
			continue
		}
		v, _ := json.Marshal(m[k])
		parts = append(parts, k+"="+string(v))
	}
	return cell(strings.Join(parts, " "), 100)
}

func renderEvents(w io.Writer, events []api.EventView) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "SEQ\tTIME (UTC)\tTYPE\tACTOR\tSOURCE IP\tDETAIL")
	for _, e := range events {
		ip := "-"
		if e.Context != nil && e.Context.SourceIP != "" {
			ip = e.Context.SourceIP
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, fmtTime(e.Time, "2006-01-02 15:04:05.000"),
			cell(e.Type, 0), cell(e.Actor, 0), ip, eventDetail(e.Type, e.Data))
	}
	return tw.Flush()
}

func principalFields(p api.PrincipalView) []field {
	status := "active"
	if p.Disabled {
		status = "disabled"
	}
	return []field{
		{"ID", p.ID},
		{"Name", cell(p.Name, 0)},
		{"Status", status},
		{"Roles", fmtList(p.Roles, "none")},
		{"Permissions", fmtList(p.Permissions, "none")},
		{"Active keys", fmt.Sprintf("%d of at most %d", p.ActiveKeys, p.MaxKeys)},
		{"Created", fmtTime(p.CreatedAt, detailTime) + " by " + cell(p.CreatedBy, 0)},
		{"Version", fmt.Sprint(p.Version)},
	}
}

func renderPrincipals(w io.Writer, ps []api.PrincipalView) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tNAME\tROLES\tSTATUS\tKEYS\tCREATED (UTC)")
	for _, p := range ps {
		status := "active"
		if p.Disabled {
			status = "disabled"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\n", p.ID, cell(p.Name, 32), cell(strings.Join(p.Roles, ","), 40),
			status, p.ActiveKeys, p.MaxKeys, fmtTime(p.CreatedAt, gridTime))
	}
	return tw.Flush()
}

func renderRoles(w io.Writer, rs []api.RoleView) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tBUILT-IN\tPERMISSIONS\tDESCRIPTION")
	for _, r := range rs {
		builtIn := "no"
		if r.BuiltIn {
			builtIn = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cell(r.Name, 0), builtIn, cell(strings.Join(r.Permissions, ","), 0), cell(r.Description, 60))
	}
	return tw.Flush()
}
