package console

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// page is what every template gets.
type page struct {
	Title      string
	Nav        string
	Me         me
	CSRF       string
	Flash      flash
	AlertBadge int
	Path       string
	owners     map[string]string
	Data       any
}

// Can reports whether the signed-in principal may use perm.
func (p page) Can(perm string) bool { return p.Me.can(perm) }

// CanOn reports whether it may use perm on k.
func (p page) CanOn(k key, perm string) bool { return p.Me.canOn(k, perm) }

// Own reports whether k belongs to the signed-in principal.
func (p page) Own(k key) bool { return k.Owner == p.Me.Principal.ID }

// Owner names a principal by e-mail or name when known, else by id.
func (p page) Owner(id string) string {
	if n, ok := p.owners[id]; ok {
		return n
	}
	return id
}

// ownerLabel names a principal as the grid shows owners: its e-mail when
// it has one, else its name.
func ownerLabel(pr principal) string {
	if pr.Email != "" {
		return pr.Email
	}
	return pr.Name
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, s *session, name string, p page) {
	p.Me, p.CSRF, p.Path = s.me, s.csrf, r.URL.RequestURI()
	p.Flash = c.sessions.popFlash(s.id)
	if p.owners == nil {
		p.owners = map[string]string{}
	}
	p.owners[s.me.Principal.ID] = ownerLabel(s.me.Principal)
	if s.me.can(domain.PermAlertView) {
		p.AlertBadge = c.criticalSince(r, s)
	}
	var buf bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		c.log.ErrorContext(r.Context(), "console: render", "page", name, "err", err)
		http.Error(w, "the page could not be drawn", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = buf.WriteTo(w)
}

// refresh reloads who the session is (roles may have changed since sign
// in); a token that no longer works ends the session.
func (c *Console) refresh(w http.ResponseWriter, r *http.Request, s *session) bool {
	var m me
	if err := c.call(r, s, "GET", "/v1/me", nil, &m); err != nil {
		if st := statusOf(err); st == http.StatusUnauthorized || st == http.StatusForbidden {
			c.sessions.end(s.id)
			c.setCookie(w, r, sessionCookie, "", "/", -1)
			http.Redirect(w, r, query("/login", "reason", "ended"), http.StatusSeeOther)
			return false
		}
		c.fail(w, r, s, err)
		return false
	}
	s.me = m
	c.sessions.update(s.id, func(x *session) { x.me = m })
	return true
}

func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *session, err error) {
	st := statusOf(err)
	if st >= 500 {
		c.log.ErrorContext(r.Context(), "console: API call failed", "path", r.URL.Path, "err", err)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(st)
	var buf bytes.Buffer
	p := page{Title: http.StatusText(st), Me: s.me, CSRF: s.csrf, Data: err.Error(), owners: map[string]string{}}
	if e := c.pages["error"].ExecuteTemplate(&buf, "layout", p); e == nil {
		_, _ = buf.WriteTo(w)
	}
}

// done ends a form post: a message for the next page, then back.
func (c *Console) done(w http.ResponseWriter, r *http.Request, s *session, err error, ok, back string) {
	f := flash{Kind: "ok", Text: ok}
	if err != nil {
		f = flash{Kind: "error", Text: err.Error()}
	}
	c.sessions.update(s.id, func(x *session) { x.flash = f })
	http.Redirect(w, r, safeBack(back, "/"), http.StatusSeeOther)
}

// ---- sign-in ----

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	nonce := randomID()
	c.setCookie(w, r, loginCookie, nonce, "/login", 600)
	data := map[string]string{"CSRF": nonce, "Next": safeBack(r.URL.Query().Get("next"), "/")}
	switch r.URL.Query().Get("reason") {
	case "ended":
		data["Info"] = "Your session has ended. Sign in again."
	case "out":
		data["Info"] = "You are signed out."
	}
	c.renderLogin(w, data, http.StatusOK)
}

func (c *Console) renderLogin(w http.ResponseWriter, data map[string]string, status int) {
	var buf bytes.Buffer
	if err := c.pages["login"].ExecuteTemplate(&buf, "login", data); err != nil {
		http.Error(w, "the page could not be drawn", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	ck, err := r.Cookie(loginCookie)
	if err != nil || !sameOrigin(r) || !tokenEqual(r.PostFormValue(csrfField), ck.Value) {
		http.Error(w, "this form has expired or did not come from the console; reload the page and try again", http.StatusForbidden)
		return
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	next := safeBack(r.PostFormValue("next"), "/")
	retry := func(msg string, status int) {
		nonce := randomID()
		c.setCookie(w, r, loginCookie, nonce, "/login", 600)
		c.renderLogin(w, map[string]string{"CSRF": nonce, "Next": next, "Error": msg}, status)
	}
	if token == "" {
		retry("Paste a keyledger token to sign in.", http.StatusBadRequest)
		return
	}
	probe := &session{token: token}
	var m me
	if err := c.call(r, probe, "GET", "/v1/me", nil, &m); err != nil {
		msg := "That token was not accepted."
		if statusOf(err) >= 500 {
			msg = "keyledger could not check the token right now; try again."
		}
		retry(msg, statusOf(err))
		return
	}
	s := c.sessions.create(token, m)
	c.setCookie(w, r, loginCookie, "", "/login", -1)
	c.setCookie(w, r, sessionCookie, s.id, "/", 0)
	c.log.InfoContext(r.Context(), "console: signed in", "principal", m.Principal.ID, "key_id", m.Key.KeyID)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	c.sessions.end(s.id)
	c.setCookie(w, r, sessionCookie, "", "/", -1)
	c.log.InfoContext(r.Context(), "console: signed out", "principal", s.me.Principal.ID)
	http.Redirect(w, r, "/login?reason=out", http.StatusSeeOther)
}

// ---- keys ----

var pageSizes = []int{10, 25, 50, 100}

type keysData struct {
	Keys                []key
	Q, Status, Sort     string
	Dir                 string
	Page, Size, Pages   int
	Total, From, To     int
	Statuses            []string
	Sizes               []int
	Roles               []role
	Perms               []string
	DefaultDays, MaxDay int
	OpenCreate          bool
	Another             bool
}

// URL returns the grid's address with one parameter changed.
func (d keysData) URL(kv ...string) string {
	v := url.Values{}
	set := func(k, val, def string) {
		if val != "" && val != def {
			v.Set(k, val)
		}
	}
	cur := map[string]string{"q": d.Q, "status": d.Status, "sort": d.Sort, "dir": d.Dir, "page": strconv.Itoa(d.Page), "size": strconv.Itoa(d.Size)}
	for i := 0; i+1 < len(kv); i += 2 {
		cur[kv[i]] = kv[i+1]
	}
	set("q", cur["q"], "")
	set("status", cur["status"], "all")
	set("sort", cur["sort"], "created")
	set("dir", cur["dir"], "desc")
	set("page", cur["page"], "1")
	set("size", cur["size"], "25")
	if len(v) == 0 {
		return "/"
	}
	return "/?" + v.Encode()
}

// SortURL is the address that sorts by col, flipping the direction when
// the grid is sorted by it already.
func (d keysData) SortURL(col string) string {
	dir := "desc"
	if d.Sort == col && d.Dir == "desc" {
		dir = "asc"
	}
	return d.URL("sort", col, "dir", dir, "page", "1")
}

// Arrow marks the sorted column.
func (d keysData) Arrow(col string) string {
	if d.Sort != col {
		return ""
	}
	if d.Dir == "asc" {
		return "▲"
	}
	return "▼"
}

// AriaSort is the column's aria-sort value.
func (d keysData) AriaSort(col string) string {
	switch {
	case d.Sort != col:
		return "none"
	case d.Dir == "asc":
		return "ascending"
	}
	return "descending"
}

// allKeys pages through /v1/keys. The API lists in id order; the grid
// sorts by date, so it reads every key the caller may see (a principal
// has at most its plan limit of them).
func (c *Console) allKeys(r *http.Request, s *session, q, status string) ([]key, error) {
	var out []key
	cursor := ""
	for range 200 {
		var kp keyPage
		if err := c.call(r, s, "GET", query("/v1/keys", "limit", "500", "q", q, "status", status, "cursor", cursor), nil, &kp); err != nil {
			return nil, err
		}
		out = append(out, kp.Keys...)
		if kp.NextCursor == "" {
			break
		}
		cursor = kp.NextCursor
	}
	return out, nil
}

func (c *Console) ownerNames(r *http.Request, s *session) map[string]string {
	names := map[string]string{}
	if !s.me.can(domain.PermPrincipalManage) {
		return names
	}
	var pl struct {
		Principals []principal `json:"principals"`
	}
	if err := c.call(r, s, "GET", "/v1/principals", nil, &pl); err == nil {
		for _, p := range pl.Principals {
			names[p.ID] = ownerLabel(p)
		}
	}
	return names
}

func (c *Console) roles(r *http.Request, s *session) []role {
	var rl struct {
		Roles []role `json:"roles"`
	}
	_ = c.call(r, s, "GET", "/v1/roles", nil, &rl)
	return rl.Roles
}

func (c *Console) keysPage(w http.ResponseWriter, r *http.Request, s *session) {
	if !c.refresh(w, r, s) {
		return
	}
	v := r.URL.Query()
	d := keysData{Q: strings.TrimSpace(v.Get("q")), Status: v.Get("status"), Sort: v.Get("sort"), Dir: v.Get("dir"),
		Statuses: []string{"all", "active", "disabled", "expired", "revoked"}, Sizes: pageSizes,
		DefaultDays: domain.DefaultLifetimeDays, MaxDay: domain.MaxLifetimeDays,
		OpenCreate: v.Get("create") == "1", Another: v.Get("create") == "1"}
	if !slices.Contains(d.Statuses, d.Status) {
		d.Status = "all"
	}
	if !slices.Contains([]string{"created", "expires", "last_used"}, d.Sort) {
		d.Sort = "created"
	}
	if d.Dir != "asc" {
		d.Dir = "desc"
	}
	d.Size, _ = strconv.Atoi(v.Get("size"))
	if !slices.Contains(pageSizes, d.Size) {
		d.Size = 25
	}
	d.Page, _ = strconv.Atoi(v.Get("page"))
	apiStatus := d.Status
	if apiStatus == "all" {
		apiStatus = ""
	}
	keys, err := c.allKeys(r, s, d.Q, apiStatus)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	at := func(k key) time.Time {
		switch d.Sort {
		case "expires":
			return k.ExpiresAt
		case "last_used":
			if k.LastUsedAt != nil {
				return *k.LastUsedAt
			}
			return time.Time{}
		}
		return k.CreatedAt
	}
	slices.SortStableFunc(keys, func(a, b key) int {
		o := at(a).Compare(at(b))
		if o == 0 {
			o = cmp.Compare(a.KeyID, b.KeyID)
		}
		if d.Dir == "desc" {
			return -o
		}
		return o
	})
	d.Total = len(keys)
	d.Pages = max(1, (d.Total+d.Size-1)/d.Size)
	d.Page = min(max(d.Page, 1), d.Pages)
	lo := (d.Page - 1) * d.Size
	hi := min(lo+d.Size, d.Total)
	d.Keys = keys[lo:hi]
	d.From, d.To = lo+1, hi
	if d.Total == 0 {
		d.From = 0
	}
	if s.me.can(domain.PermKeyCreate) {
		d.Roles = c.roles(r, s)
		d.Perms = s.me.Key.Permissions
	}
	c.render(w, r, s, "keys", page{Title: "API keys", Nav: "keys", owners: c.ownerNames(r, s), Data: d})
}

// splitList reads addresses or permissions typed one a line or separated
// by commas or spaces.
func splitList(s string) []string {
	out := []string{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == '\r' || r == ' ' || r == '\t' }) {
		out = append(out, f)
	}
	return out
}

// parseMetadata reads key=value lines.
func parseMetadata(s string) (map[string]string, error) {
	md := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("metadata line %q is not key=value", line)
		}
		md[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return md, nil
}

// MetadataText writes metadata back as key=value lines.
func metadataText(md map[string]string) string {
	ks := make([]string, 0, len(md))
	for k := range md {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	var b strings.Builder
	for _, k := range ks {
		fmt.Fprintf(&b, "%s=%s\n", k, md[k])
	}
	return b.String()
}

type createdData struct {
	Key     key
	Token   string
	Next    string
	What    string
	Rotated bool
}

func (c *Console) createKey(w http.ResponseWriter, r *http.Request, s *session) {
	body := map[string]any{"name": r.PostFormValue("name"), "comments": r.PostFormValue("comments")}
	if d := strings.TrimSpace(r.PostFormValue("lifetime_days")); d != "" {
		n, err := strconv.Atoi(d)
		if err != nil {
			c.done(w, r, s, fmt.Errorf("lifetime must be a number of days"), "", "/?create=1")
			return
		}
		body["lifetime_days"] = n
	}
	switch r.PostFormValue("privileges") {
	case "role":
		body["role"] = r.PostFormValue("role")
	case "permissions":
		body["permissions"] = append([]string{}, r.PostForm["permission"]...)
	}
	if ips := splitList(r.PostFormValue("allowed_ips")); len(ips) > 0 {
		body["allowed_ips"] = ips
	}
	md, err := parseMetadata(r.PostFormValue("metadata"))
	if err != nil {
		c.done(w, r, s, err, "", "/?create=1")
		return
	}
	if len(md) > 0 {
		body["metadata"] = md
	}
	var k key
	if err := c.call(r, s, "POST", "/v1/keys", body, &k); err != nil {
		c.done(w, r, s, err, "", "/?create=1")
		return
	}
	next := "/"
	if r.PostFormValue("another") != "" {
		next = "/?create=1"
	}
	c.render(w, r, s, "created", page{Title: "Key created", Nav: "keys", Data: createdData{Key: k, Token: k.Token, Next: next, What: "key"}})
}

type keyData struct {
	Key      key
	Events   []event
	Roles    []role
	Perms    []string
	Metadata string
	IPs      string
	Chart    *chart
	ChartErr string
}

func (c *Console) keyPage(w http.ResponseWriter, r *http.Request, s *session) {
	if !c.refresh(w, r, s) {
		return
	}
	id := r.PathValue("id")
	var d keyData
	if err := c.call(r, s, "GET", "/v1/keys/"+url.PathEscape(id), nil, &d.Key); err != nil {
		c.fail(w, r, s, err)
		return
	}
	var evs struct {
		Events []event `json:"events"`
	}
	if err := c.call(r, s, "GET", "/v1/keys/"+url.PathEscape(id)+"/events", nil, &evs); err != nil {
		c.fail(w, r, s, err)
		return
	}
	slices.Reverse(evs.Events)
	d.Events = evs.Events
	d.Metadata, d.IPs = metadataText(d.Key.Metadata), strings.Join(d.Key.AllowedIPs, "\n")
	if s.me.canOn(d.Key, domain.PermKeyUpdate) {
		d.Roles, d.Perms = c.roles(r, s), s.me.Key.Permissions
	}
	if s.me.can(domain.PermLogView) {
		ch, err := c.usageChart(r, s, id)
		if err != nil {
			d.ChartErr = "Usage is not available: " + err.Error()
		}
		d.Chart = ch
	}
	c.render(w, r, s, "key", page{Title: d.Key.Name, Nav: "keys", owners: c.ownerNames(r, s), Data: d})
}

func (c *Console) keyAction(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	path := "/v1/keys/" + url.PathEscape(id)
	back := safeBack(r.PostFormValue("back"), "/keys/"+url.PathEscape(id))
	var err error
	msg := ""
	switch r.PathValue("action") {
	case "edit":
		body := map[string]any{"name": r.PostFormValue("name"), "comments": r.PostFormValue("comments"),
			"allowed_ips": splitList(r.PostFormValue("allowed_ips"))}
		md, perr := parseMetadata(r.PostFormValue("metadata"))
		if perr != nil {
			c.done(w, r, s, perr, "", back)
			return
		}
		body["metadata"] = md
		if r.PostFormValue("privileges") == "permissions" {
			body["permissions"] = append([]string{}, r.PostForm["permission"]...)
		}
		err, msg = c.call(r, s, "PATCH", path, body, nil), "Key updated."
		if statusOf(err) == http.StatusBadRequest && strings.Contains(err.Error(), "changes nothing") {
			err, msg = nil, "Nothing changed."
		}
	case "disable":
		err, msg = c.call(r, s, "POST", path+"/disable", map[string]string{"reason": r.PostFormValue("reason")}, nil), "Key disabled: it no longer verifies until it is enabled."
	case "enable":
		err, msg = c.call(r, s, "POST", path+"/enable", map[string]string{}, nil), "Key enabled."
	case "revoke":
		err, msg = c.call(r, s, "POST", path+"/revoke", map[string]string{"reason": r.PostFormValue("reason")}, nil), "Key revoked."
	case "delete":
		if r.PostFormValue("confirm") != "delete" {
			c.done(w, r, s, fmt.Errorf("type delete to confirm"), "", back)
			return
		}
		err = c.call(r, s, "DELETE", query(path, "reason", r.PostFormValue("reason")), nil, nil)
		msg, back = "Key deleted.", safeBack(r.PostFormValue("after"), "/")
	case "regenerate":
		body := map[string]any{}
		if r.PostFormValue("rotate") != "" {
			body["rotate"] = true
			if g := strings.TrimSpace(r.PostFormValue("grace_period")); g != "" {
				body["grace_period"] = g
			}
		}
		var k key
		if err := c.call(r, s, "POST", path+"/regenerate", body, &k); err != nil {
			c.done(w, r, s, err, "", back)
			return
		}
		if k.Token != "" {
			c.render(w, r, s, "created", page{Title: "New token", Nav: "keys", Data: createdData{Key: k, Token: k.Token, Next: "/keys/" + url.PathEscape(id), What: "key", Rotated: true}})
			return
		}
		msg = "Lifetime extended to " + k.ExpiresAt.UTC().Format("2006-01-02 15:04") + " UTC."
	default:
		http.NotFound(w, r)
		return
	}
	c.done(w, r, s, err, msg, back)
}

// ---- logs ----

var logParams = []string{"key_id", "owner", "actor", "action", "outcome", "ip", "from", "to", "q"}

type logsData struct {
	F        map[string]string
	Events   []logEntry
	Next     string
	Export   map[string]string
	Actions  []string
	Outcomes []string
	Err      string
	Searched bool
}

// logQuery turns the console's log filters into API parameters. Times
// from a datetime-local field are UTC.
func logQuery(v url.Values) (url.Values, map[string]string) {
	out := url.Values{}
	shown := map[string]string{}
	for _, p := range logParams {
		var vals []string
		for _, x := range v[p] {
			for _, part := range strings.Split(x, ",") {
				if part = strings.TrimSpace(part); part != "" {
					vals = append(vals, part)
				}
			}
		}
		if len(vals) == 0 {
			continue
		}
		shown[p] = strings.Join(vals, ", ")
		if p == "from" || p == "to" {
			if t, err := time.Parse("2006-01-02T15:04", vals[0]); err == nil {
				vals = []string{t.UTC().Format(time.RFC3339)}
			}
		}
		out[p] = []string{strings.Join(vals, ",")}
	}
	return out, shown
}

func (c *Console) logsPage(w http.ResponseWriter, r *http.Request, s *session) {
	if !c.refresh(w, r, s) {
		return
	}
	q, shown := logQuery(r.URL.Query())
	d := logsData{F: shown, Actions: []string{"created", "regenerated", "updated", "disabled", "enabled", "revoked", "deleted", "used", "denied", "raised"},
		Outcomes: domain.Outcomes, Searched: len(q) > 0}
	exp := url.Values{}
	for k, v := range q {
		exp[k] = v
	}
	d.Export = map[string]string{}
	for _, f := range []string{"csv", "ndjson"} {
		exp.Set("format", f)
		d.Export[f] = "/logs/export?" + exp.Encode()
	}
	api := url.Values{}
	for k, v := range q {
		api[k] = v
	}
	api.Set("limit", "50")
	if cur := r.URL.Query().Get("cursor"); cur != "" {
		api.Set("cursor", cur)
	}
	var lp logPage
	if err := c.call(r, s, "GET", "/v1/logs?"+api.Encode(), nil, &lp); err != nil {
		if st := statusOf(err); st == http.StatusUnauthorized || st == http.StatusForbidden && !s.me.can(domain.PermLogView) {
			c.fail(w, r, s, err)
			return
		}
		d.Err = err.Error()
	}
	d.Events = lp.Events
	if lp.NextCursor != "" {
		nv := r.URL.Query()
		nv.Set("cursor", lp.NextCursor)
		d.Next = "/logs?" + nv.Encode()
	}
	c.render(w, r, s, "logs", page{Title: "Search in logs", Nav: "logs", owners: c.ownerNames(r, s), Data: d})
}

func (c *Console) logsExport(w http.ResponseWriter, r *http.Request, s *session) {
	q, _ := logQuery(r.URL.Query())
	f := r.URL.Query().Get("format")
	if f != "csv" && f != "ndjson" {
		f = "csv"
	}
	q.Set("format", f)
	if f == "ndjson" {
		w.Header().Set("Content-Disposition", `attachment; filename="keyledger-log.ndjson"`)
	}
	c.relay(w, r, s, "/v1/logs?"+q.Encode())
}

// ---- alerts ----

type alertsData struct {
	F          map[string]string
	Alerts     []alert
	Next       string
	Severities []string
	Err        string
}

func (c *Console) criticalSince(r *http.Request, s *session) int {
	from := ""
	if !s.alertsSeen.IsZero() {
		from = s.alertsSeen.UTC().Format(time.RFC3339Nano)
	}
	var ap alertPage
	if err := c.call(r, s, "GET", query("/v1/alerts", "severity", domain.SeverityCritical, "from", from, "limit", "100"), nil, &ap); err != nil {
		return 0
	}
	return len(ap.Alerts)
}

func (c *Console) alertsPage(w http.ResponseWriter, r *http.Request, s *session) {
	if !c.refresh(w, r, s) {
		return
	}
	v := r.URL.Query()
	d := alertsData{F: map[string]string{}, Severities: domain.Severities}
	api := url.Values{}
	for _, p := range []string{"rule", "min_severity", "key_id", "from", "to"} {
		if x := strings.TrimSpace(v.Get(p)); x != "" {
			d.F[p] = x
			if p == "from" || p == "to" {
				if t, err := time.Parse("2006-01-02T15:04", x); err == nil {
					x = t.UTC().Format(time.RFC3339)
				}
			}
			api.Set(p, x)
		}
	}
	api.Set("limit", "50")
	if cur := v.Get("cursor"); cur != "" {
		api.Set("cursor", cur)
	}
	var ap alertPage
	if err := c.call(r, s, "GET", "/v1/alerts?"+api.Encode(), nil, &ap); err != nil {
		if statusOf(err) == http.StatusForbidden || statusOf(err) == http.StatusUnauthorized {
			c.fail(w, r, s, err)
			return
		}
		d.Err = err.Error()
	}
	d.Alerts = ap.Alerts
	if ap.NextCursor != "" {
		nv := r.URL.Query()
		nv.Set("cursor", ap.NextCursor)
		d.Next = "/alerts?" + nv.Encode()
	}
	now := c.cfg.Now()
	c.sessions.update(s.id, func(x *session) { x.alertsSeen = now })
	s.alertsSeen = now
	c.render(w, r, s, "alerts", page{Title: "Alerts", Nav: "alerts", Data: d})
}

func (c *Console) alertsStream(w http.ResponseWriter, r *http.Request, s *session) {
	c.relay(w, r, s, "/v1/alerts/stream")
}

// ---- principals and roles (super administrator) ----

type principalsData struct {
	Principals []principal
	Roles      []role
}

func (c *Console) principalsPage(w http.ResponseWriter, r *http.Request, s *session) {
	if !c.refresh(w, r, s) {
		return
	}
	var pl struct {
		Principals []principal `json:"principals"`
	}
	if err := c.call(r, s, "GET", "/v1/principals", nil, &pl); err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, r, s, "principals", page{Title: "Principals", Nav: "principals", Data: principalsData{Principals: pl.Principals, Roles: c.roles(r, s)}})
}

func formInt(r *http.Request, name string) (int, bool, error) {
	v := strings.TrimSpace(r.PostFormValue(name))
	if v == "" {
		return 0, false, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, false, fmt.Errorf("%s must be a whole number", strings.ReplaceAll(name, "_", " "))
	}
	return n, true, nil
}

func (c *Console) createPrincipal(w http.ResponseWriter, r *http.Request, s *session) {
	body := map[string]any{"name": r.PostFormValue("name"), "email": strings.TrimSpace(r.PostFormValue("email")), "roles": append([]string{}, r.PostForm["role"]...)}
	for _, f := range []string{"max_keys", "credential_lifetime_days"} {
		n, ok, err := formInt(r, f)
		if err != nil {
			c.done(w, r, s, err, "", "/principals")
			return
		}
		if ok {
			body[f] = n
		}
	}
	var cp struct {
		principal
		Credential key `json:"credential"`
	}
	if err := c.call(r, s, "POST", "/v1/principals", body, &cp); err != nil {
		c.done(w, r, s, err, "", "/principals")
		return
	}
	c.render(w, r, s, "created", page{Title: "Principal created", Nav: "principals", Data: createdData{Key: cp.Credential, Token: cp.Credential.Token, Next: "/principals", What: "principal " + cp.Name}})
}

func (c *Console) principalAction(w http.ResponseWriter, r *http.Request, s *session) {
	path := "/v1/principals/" + url.PathEscape(r.PathValue("id"))
	var err error
	msg := ""
	switch r.PathValue("action") {
	case "update":
		email := strings.TrimSpace(r.PostFormValue("email"))
		body := map[string]any{"roles": append([]string{}, r.PostForm["role"]...), "email": email}
		n, ok, ferr := formInt(r, "max_keys")
		if ferr != nil {
			c.done(w, r, s, ferr, "", "/principals")
			return
		}
		if ok {
			body["max_keys"] = n
		}
		err, msg = c.call(r, s, "PATCH", path, body, nil), "Principal updated."
		if statusOf(err) == http.StatusBadRequest && strings.Contains(err.Error(), "changes nothing") {
			err, msg = nil, "Nothing changed."
		}
	case "disable":
		err, msg = c.call(r, s, "POST", path+"/disable", map[string]string{"reason": r.PostFormValue("reason")}, nil), "Principal disabled."
	case "enable":
		err, msg = c.call(r, s, "POST", path+"/enable", map[string]string{}, nil), "Principal enabled."
	case "credential":
		// A new credential for a principal that lost or locked away its
		// own: its token is shown once, on the same page as a new key's.
		body := map[string]any{"name": r.PostFormValue("name")}
		n, ok, ferr := formInt(r, "lifetime_days")
		if ferr != nil {
			c.done(w, r, s, ferr, "", "/principals")
			return
		}
		if ok {
			body["lifetime_days"] = n
		}
		var k key
		if err := c.call(r, s, "POST", path+"/credentials", body, &k); err != nil {
			c.done(w, r, s, err, "", "/principals")
			return
		}
		c.render(w, r, s, "created", page{Title: "Credential issued", Nav: "principals", Data: createdData{Key: k, Token: k.Token, Next: "/principals", What: "credential " + k.Name}})
		return
	default:
		http.NotFound(w, r)
		return
	}
	c.done(w, r, s, err, msg, "/principals")
}

func (c *Console) rolesPage(w http.ResponseWriter, r *http.Request, s *session) {
	if !c.refresh(w, r, s) {
		return
	}
	c.render(w, r, s, "roles", page{Title: "Roles", Nav: "roles", Data: c.roles(r, s)})
}

func (c *Console) createRole(w http.ResponseWriter, r *http.Request, s *session) {
	body := map[string]any{"name": strings.TrimSpace(r.PostFormValue("name")), "permissions": splitList(r.PostFormValue("permissions")), "description": r.PostFormValue("description")}
	err := c.call(r, s, "POST", "/v1/roles", body, nil)
	c.done(w, r, s, err, "Role created.", "/roles")
}

func (c *Console) roleAction(w http.ResponseWriter, r *http.Request, s *session) {
	path := "/v1/roles/" + url.PathEscape(r.PathValue("name"))
	switch r.PathValue("action") {
	case "update":
		desc := r.PostFormValue("description")
		err := c.call(r, s, "PUT", path, map[string]any{"permissions": splitList(r.PostFormValue("permissions")), "description": desc}, nil)
		c.done(w, r, s, err, "Role updated.", "/roles")
	case "delete":
		c.done(w, r, s, c.call(r, s, "DELETE", path, nil, nil), "Role deleted.", "/roles")
	default:
		http.NotFound(w, r)
	}
}

// ---- audit ----

type auditData struct {
	Key         publicKey
	Checkpoints []checkpoint
	Err         string
}

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, s *session) {
	if !c.refresh(w, r, s) {
		return
	}
	var d auditData
	if err := c.call(r, s, "GET", "/v1/audit/public-key", nil, &d.Key); err != nil {
		d.Err = err.Error()
	}
	var cl struct {
		Checkpoints []checkpoint `json:"checkpoints"`
	}
	if err := c.call(r, s, "GET", "/v1/audit/checkpoints", nil, &cl); err != nil {
		if statusOf(err) == http.StatusForbidden {
			c.fail(w, r, s, err)
			return
		}
		d.Err = err.Error()
	}
	d.Checkpoints = cl.Checkpoints
	c.render(w, r, s, "audit", page{Title: "Audit", Nav: "audit", Data: d})
}

// auditProof downloads the inclusion proof of one event.
func (c *Console) auditProof(w http.ResponseWriter, r *http.Request, s *session) {
	id := strings.TrimSpace(r.URL.Query().Get("event_id"))
	var proof json.RawMessage
	if err := c.call(r, s, "GET", query("/v1/audit/proof", "event_id", id), nil, &proof); err != nil {
		c.done(w, r, s, err, "", "/audit")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", `attachment; filename="keyledger-proof-`+url.PathEscape(id)+`.json"`)
	_, _ = w.Write(proof)
}
