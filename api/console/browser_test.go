package console_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

// browser drives one headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context
	n   *node
}

// mustStartBrowser starts Debian's chromium, whose path `make test` puts
// in KEYLEDGER_TEST_CHROMIUM. Without it the test fails: a console that
// was never shown to a browser is not tested.
func mustStartBrowser(t *testing.T, n *node) *browser {
	t.Helper()
	bin := os.Getenv("KEYLEDGER_TEST_CHROMIUM")
	if bin == "" {
		t.Fatal("KEYLEDGER_TEST_CHROMIUM is not set: the console's browser tests need Chromium. " +
			"Run them with: KEYLEDGER_TEST_CHROMIUM=$(./scripts/ensure-chromium.sh --path) ./scripts/with-clickhouse.sh go test ./api/console/ (or make test)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox,
		chromedp.WindowSize(1440, 900), chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); acancel() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium %s: %v", bin, err)
	}
	return &browser{t: t, ctx: ctx, n: n}
}

func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		loc, _ := chromedp.Run(b.ctx, chromedp.Location())
		b.t.Fatalf("%s (at %s): %v", what, loc, err)
	}
}

func eval[T any](b *browser, js string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// until waits for a JavaScript condition (a page to arrive, a status to
// change): poll, don't sleep.
func (b *browser) until(what, js string) {
	b.t.Helper()
	// A navigation may replace the page between two looks, so each look
	// is its own evaluation and an error is only "not yet".
	deadline := time.Now().Add(15 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		ok, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool]("!!("+js+")"))
		if err == nil && ok {
			return
		}
		last = err
		time.Sleep(30 * time.Millisecond)
	}
	loc, _ := chromedp.Run(b.ctx, chromedp.Location())
	// What the page says (an error message, a problem) tells why.
	text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText.slice(0, 2000) : ""`))
	b.t.Fatalf("%s: still not true at %s after 15s (%v): %s\npage:\n%s", what, loc, last, js, text)
}

func (b *browser) open(path, ready string) {
	b.t.Helper()
	b.do("open "+path, chromedp.Navigate(b.n.ts.URL+path), chromedp.WaitVisible(chromedp.CSS(ready)))
}

func (b *browser) signIn(token string) {
	b.t.Helper()
	b.open("/login", "#signin")
	b.do("sign in", chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS("#signin")))
	b.until("grid after sign-in", `!!document.querySelector("#key-grid")`)
}

func (b *browser) signOut() {
	b.t.Helper()
	b.do("sign out", chromedp.Click(chromedp.CSS("#signout")))
	b.until("signed out", `document.body.textContent.includes("You are signed out")`)
}

func (b *browser) screenshot(name string) string {
	b.t.Helper()
	dir := os.Getenv("KEYLEDGER_TEST_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "keyledger-console-screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot %s", p)
	return p
}

func (b *browser) rows() int {
	return eval[int](b, `document.querySelectorAll("#key-grid tbody tr[data-key-id]").length`)
}

func js(s string) string {
	q, _ := json.Marshal(s)
	return string(q)
}

// TestConsoleInBrowser walks the console's main path in real headless
// Chromium against a real node (embedded NATS, ClickHouse audit log): sign
// in, create a key and read its token once, find and filter it in the grid,
// disable it, verify it through the API and find the denial in "Search in
// logs", edit it, revoke it, export CSV, delete another, and sign out; then
// the super administrator sees every key with revoke and delete only.
func TestConsoleInBrowser(t *testing.T) {
	n := mustStartNode(t, true)
	_, ana := n.principal("ana", "ana@example.com", domain.RoleKeyAdmin)
	_, svc := n.principal("checkout service", "", domain.RoleVerifier)
	b := mustStartBrowser(t, n)

	// 1. Sign in. The token never reaches the page's storage.
	b.signIn(ana)
	if c := eval[string](b, `document.cookie`); c != "" {
		t.Fatalf("document.cookie = %q, want nothing visible to scripts", c)
	}
	if got := eval[int](b, `localStorage.length + sessionStorage.length`); got != 0 {
		t.Fatalf("web storage holds %d items", got)
	}
	if eval[bool](b, `document.documentElement.outerHTML.includes(`+js(ana)+`)`) {
		t.Fatal("the page holds the sign-in token")
	}

	// 2. Create a key in the modal; its token is shown once, with copy.
	b.do("open create", chromedp.Click(chromedp.CSS("#create-open")), chromedp.WaitVisible(chromedp.CSS("#c-name")))
	if !eval[bool](b, `document.activeElement.id === "c-name"`) {
		t.Fatal("the create modal does not focus its first field")
	}
	if !eval[bool](b, `document.querySelector("#create-dialog").textContent.includes("default 90, at most 3650")`) {
		t.Fatal("the create modal does not show the default and maximum lifetime")
	}
	b.do("fill create", chromedp.SendKeys(chromedp.CSS("#c-name"), "checkout prod"),
		chromedp.SendKeys(chromedp.CSS("#c-comments"), "team payments"),
		chromedp.SendKeys(chromedp.CSS("#c-md"), "ticket=PAY-1"),
		chromedp.Click(chromedp.CSS("#create-submit")), chromedp.WaitVisible(chromedp.CSS("#new-token")))
	token := eval[string](b, `document.querySelector("#new-token").value`)
	keyID := eval[string](b, `document.querySelector("#new-key-id").textContent`)
	if !strings.HasPrefix(token, "kl_") && len(token) < 40 {
		t.Fatalf("token %q", token)
	}
	if eval[bool](b, `!document.querySelector("#done").classList.contains("disabled")`) {
		t.Fatal("Done is enabled before 'I have copied it'")
	}
	b.do("copy", chromedp.Click(chromedp.CSS("#copy-token")))
	b.until("copied", `document.querySelector("#copy-status").textContent.includes("Copied")`)
	b.do("done", chromedp.Click(chromedp.CSS("#copied")), chromedp.Click(chromedp.CSS("#done")))
	b.until("grid", `!!document.querySelector("#key-grid [data-key-id="+`+js(`"`+keyID+`"`)+`+"]")`)
	if eval[bool](b, `document.documentElement.outerHTML.includes(`+js(token)+`)`) {
		t.Fatal("the grid shows the token again")
	}

	// "Create & create another" comes back to an open modal.
	b.do("create another", chromedp.Click(chromedp.CSS("#create-open")), chromedp.WaitVisible(chromedp.CSS("#c-name")),
		chromedp.SendKeys(chromedp.CSS("#c-name"), "scratch"), chromedp.Click(chromedp.CSS("#create-another")),
		chromedp.WaitVisible(chromedp.CSS("#new-token")), chromedp.Click(chromedp.CSS("#copied")), chromedp.Click(chromedp.CSS("#done")))
	b.until("modal open again", `document.querySelector("#create-dialog") && document.querySelector("#create-dialog").open`)
	b.do("close modal", chromedp.Click(chromedp.CSS("#create-dialog [data-close]")))

	// 3. The grid: more keys than a page, filter, status, sort, pages.
	for i := range 10 {
		n.createKey(ana, "batch "+strconv.Itoa(i))
	}
	b.open("/?size=10", "#key-grid")
	if got := b.rows(); got != 10 {
		t.Fatalf("page 1 has %d rows, want 10", got)
	}
	b.do("next page", chromedp.Click(chromedp.CSS("#page-next")))
	b.until("page 2", `document.querySelector("#grid-count").textContent.includes("11–13 of 13")`)
	b.do("sort by expiry", chromedp.Click(chromedp.CSS("#sort-expires")))
	b.until("sorted", `location.search.includes("sort=expires") && document.querySelector("#sort-expires").textContent.includes("▼")`)
	b.do("filter", chromedp.SendKeys(chromedp.CSS("#filter-q"), "checkout"), chromedp.Click(chromedp.CSS("#filter-apply")))
	b.until("filtered", `document.querySelectorAll("#key-grid tbody tr[data-key-id]").length === 1`)
	if name := eval[string](b, `document.querySelector("#key-grid tbody tr[data-key-id] td.name").textContent`); name != "checkout prod" {
		t.Fatalf("filtered row %q", name)
	}
	b.open("/", "#key-grid")
	b.screenshot("key-grid")

	// 4. Disable the key; the API refuses it; the denial is in the log.
	b.open("/keys/"+keyID, "#key-status")
	b.do("disable", chromedp.Click(chromedp.CSS("#disable")))
	b.until("disabled", `document.querySelector("#key-status").textContent === "Disabled"`)
	var v api.VerifyResponse
	if st := n.apiDo("POST", "/v1/verify", svc, map[string]string{"token": token, "permission": domain.PermKeyView}, &v); st != http.StatusOK || v.Valid || v.Code != domain.OutcomeDisabled {
		t.Fatalf("verify a disabled key: %d %+v", st, v)
	}
	b.open("/?status=disabled", "#key-grid")
	if got := b.rows(); got != 1 {
		t.Fatalf("status=disabled shows %d keys", got)
	}
	n.syncLog()
	b.do("select and search", chromedp.Click(chromedp.CSS(`#key-grid input[value="`+keyID+`"]`)), chromedp.Click(chromedp.CSS("#search-logs")))
	b.until("log view", `!!document.querySelector("#log-grid")`)
	if got := eval[string](b, `document.querySelector("#f-keys").value`); got != keyID {
		t.Fatalf("log filter keys %q", got)
	}
	if !eval[bool](b, `[...document.querySelectorAll("#log-grid tbody tr.act-denied")].some(r => r.textContent.includes("DISABLED"))`) {
		t.Fatalf("no denial in the log view:\n%s", eval[string](b, `document.querySelector("#log-grid").textContent`))
	}
	b.screenshot("logs")
	// Narrow by outcome; export CSV and NDJSON of the same search.
	b.do("outcome filter", chromedp.SetValue(chromedp.CSS("#f-outcome"), "DISABLED"), chromedp.Click(chromedp.CSS("#log-search")))
	// The URL changes before the new page has rendered its grid: wait for
	// the narrowed page itself (its outcome field says DISABLED) before
	// counting its rows.
	b.until("narrowed", `location.search.includes("outcome=DISABLED") && document.readyState === "complete" && !!document.querySelector("#log-grid") && document.querySelector("#f-outcome").value === "DISABLED"`)
	if got := eval[int](b, `document.querySelectorAll("#log-grid tbody tr.act-denied").length`); got != 1 {
		t.Fatalf("%d denials after filtering by outcome:\n%s", got, eval[string](b, `document.querySelector("#log-grid").textContent`))
	}
	csv := eval[string](b, `(async () => (await fetch(document.querySelector("#export-csv").href)).text())()`)
	if !strings.HasPrefix(csv, "event_id,time,type") || !strings.Contains(csv, keyID) || !strings.Contains(csv, "DISABLED") {
		t.Fatalf("CSV export:\n%s", csv)
	}
	nd := eval[string](b, `(async () => (await fetch(document.querySelector("#export-ndjson").href)).text())()`)
	if !strings.Contains(nd, `"key_id":"`+keyID+`"`) {
		t.Fatalf("NDJSON export:\n%s", nd)
	}

	// Enable it again and edit it.
	b.open("/keys/"+keyID, "#key-status")
	b.do("enable", chromedp.Click(chromedp.CSS("#enable")))
	b.until("enabled", `document.querySelector("#key-status").textContent === "Active"`)
	b.do("edit", chromedp.SendKeys(chromedp.CSS("#e-ips"), "10.20.0.0/16"), chromedp.Click(chromedp.CSS("#edit-submit")))
	b.until("edited", `document.body.textContent.includes("Key updated.") && document.body.textContent.includes("10.20.0.0/16")`)
	if k, _ := n.state.Key(keyID); len(k.AllowedIPs) != 1 || k.Metadata["ticket"] != "PAY-1" {
		t.Fatalf("after edit: %v %v", k.AllowedIPs, k.Metadata)
	}
	if !eval[bool](b, `!!document.querySelector("#usage-chart rect")`) {
		t.Fatal("the usage chart shows no verification")
	}
	if !eval[bool](b, `document.querySelector("#history").textContent.includes("key.disabled")`) {
		t.Fatal("the history lacks key.disabled")
	}

	// 5. Revoke, with a reason and the warning.
	b.do("open revoke", chromedp.Click(chromedp.CSS("#revoke")), chromedp.WaitVisible(chromedp.CSS("#r-reason")))
	if !eval[bool](b, `document.querySelector("#revoke-dialog").textContent.includes("Applications using this key will stop working")`) {
		t.Fatal("the revoke dialog lacks its warning")
	}
	b.do("revoke", chromedp.SendKeys(chromedp.CSS("#r-reason"), "leaked in a log"), chromedp.Click(chromedp.CSS("#revoke-submit")))
	b.until("revoked", `document.querySelector("#key-status").textContent === "Revoked"`)
	b.open("/?q=checkout", "#key-grid")
	if !eval[bool](b, `document.querySelector("#key-grid tr[data-key-id]").classList.contains("st-revoked")`) {
		t.Fatal("a revoked key is not greyed out")
	}

	// Delete another key, confirming.
	b.open("/?q=scratch", "#key-grid")
	b.do("open delete", chromedp.Click(chromedp.CSS("#key-grid tr[data-key-id] button.danger")), chromedp.WaitVisible(chromedp.CSS("#d-confirm")))
	b.do("delete", chromedp.SendKeys(chromedp.CSS("#d-confirm"), "delete"), chromedp.Click(chromedp.CSS("#delete-submit")))
	b.until("deleted", `document.body.textContent.includes("Key deleted.")`)
	b.open("/?q=scratch", "#key-grid")
	if got := b.rows(); got != 0 {
		t.Fatalf("a deleted key is still listed (%d rows)", got)
	}

	// 7. Sign out.
	b.signOut()
	b.open("/", "#signin")

	// The super administrator sees every key, owners by e-mail, and may
	// only revoke or delete; it is offered no Create.
	b.signIn(n.root)
	b.open("/?q=batch&size=10", "#key-grid")
	if got := b.rows(); got != 10 {
		t.Fatalf("superadmin sees %d of ana's batch keys", got)
	}
	if eval[bool](b, `!!document.querySelector("#create-open")`) {
		t.Fatal("the super administrator is offered Create")
	}
	if !eval[bool](b, `document.querySelector("#key-grid tbody").textContent.includes("ana@example.com")`) {
		t.Fatal("the owner column does not name ana by e-mail")
	}
	actions := eval[[]string](b, `[...new Set([...document.querySelectorAll("#key-grid td.actions button")].map(b => b.textContent.trim()))].sort()`)
	if strings.Join(actions, ",") != "Delete,Revoke" {
		t.Fatalf("superadmin row actions %v, want Delete and Revoke only", actions)
	}
	b.open("/principals", "#principal-grid")
	if !eval[bool](b, `document.querySelector("#principal-grid").textContent.includes("ana@example.com")`) {
		t.Fatal("principals page lacks ana")
	}
	b.open("/alerts", "#alert-grid")
	b.open("/audit", "#checkpoints")
	b.signOut()
}
