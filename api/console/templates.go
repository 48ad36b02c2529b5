package console

import (
	"fmt"
	"html/template"
	"strings"
	"time"

	"github.com/keyledger/keyledger/domain"
)

var funcs = template.FuncMap{
	"date": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04")
	},
	"datep": func(t *time.Time) string {
		if t == nil || t.IsZero() {
			return "never"
		}
		return t.UTC().Format("2006-01-02 15:04")
	},
	"stamp": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000") },
	"iso":   func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"remaining": func(sec int64, status domain.Status) string {
		if status == domain.StatusRevoked || status == domain.StatusDeleted {
			return "—"
		}
		if sec <= 0 {
			return "expired"
		}
		d := time.Duration(sec) * time.Second
		switch {
		case d >= 48*time.Hour:
			return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
		case d >= time.Hour:
			return fmt.Sprintf("%d h", int(d/time.Hour))
		}
		return fmt.Sprintf("%d min", int(d/time.Minute))
	},
	// short shows the end of an id: UUIDv7s of one period share their
	// first (time) digits, their last ones tell keys apart.
	"short": func(id string) string {
		if len(id) > 8 {
			return "…" + id[len(id)-8:]
		}
		return id
	},
	"day": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02")
	},
	"join":     strings.Join,
	"metadata": metadataText,
	"has": func(list []string, s string) bool {
		for _, x := range list {
			if x == s {
				return true
			}
		}
		return false
	},
	"add": func(a, b int) int { return a + b },
	// ucfirst takes any string kind: statuses are domain.Status.
	"ucfirst": func(v any) string {
		s := fmt.Sprint(v)
		if s == "" {
			return s
		}
		return strings.ToUpper(s[:1]) + s[1:]
	},
}

var pageNames = []string{"keys", "key", "created", "logs", "alerts", "principals", "roles", "audit", "error"}

// parsePages parses every page with the layout; a template error is a
// programming error caught by the first test.
func parsePages() map[string]*template.Template {
	pages := map[string]*template.Template{}
	for _, n := range pageNames {
		pages[n] = template.Must(template.New(n).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/dialogs.html", "templates/"+n+".html"))
	}
	pages["login"] = template.Must(template.New("login").Funcs(funcs).ParseFS(templateFS, "templates/login.html"))
	return pages
}
