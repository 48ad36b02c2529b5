package console_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/domain"
)

// TestSessionCookieAndCSRF checks the session protocol without a browser:
// the cookie's attributes, that the token never reaches the browser or the
// logs, that a state-changing request without its CSRF token is refused,
// and that sign-out ends the session on the server.
func TestSessionCookieAndCSRF(t *testing.T) {
	n := mustStartNode(t, false)
	_, tok := n.principal("ana", "ana@example.com", domain.RoleKeyAdmin)
	b := newBrowserless(t, n)

	res, _ := b.get("/")
	if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(res.Header.Get("Location"), "/login") {
		t.Fatalf("anonymous GET /: %d %s", res.StatusCode, res.Header.Get("Location"))
	}
	_, page := b.get("/login")
	// A sign-in without the login form's token is refused.
	if res, _ := b.post("/login", url.Values{"token": {tok}}); res.StatusCode != http.StatusForbidden {
		t.Fatalf("sign-in without CSRF: %d", res.StatusCode)
	}
	res, _ = b.post("/login", url.Values{"_csrf": {csrfOf(t, page)}, "token": {tok}})
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign in: %d", res.StatusCode)
	}
	var sess *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == "keyledger_session" {
			sess = c
		}
	}
	if sess == nil || !sess.HttpOnly || sess.SameSite != http.SameSiteStrictMode || sess.Secure {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, not Secure over plain HTTP", sess)
	}
	if strings.Contains(sess.Value, tok) || strings.Contains(res.Header.Get("Set-Cookie"), tok[len(tok)-20:]) {
		t.Fatal("the session cookie carries the token")
	}
	_, page = b.get("/")
	if strings.Contains(page, tok) {
		t.Fatal("a page carries the sign-in token")
	}
	csrf := csrfOf(t, page)

	// A state-changing request without, or with a wrong, CSRF token.
	for _, form := range []url.Values{{"name": {"x"}}, {"name": {"x"}, "_csrf": {"nope"}}} {
		if res, _ := b.post("/keys", form); res.StatusCode != http.StatusForbidden {
			t.Fatalf("create without a valid CSRF token: %d", res.StatusCode)
		}
	}
	// A cross-site post with the right token is refused too.
	req, _ := http.NewRequest("POST", n.ts.URL+"/keys", strings.NewReader(url.Values{"name": {"x"}, "_csrf": {csrf}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	if res, err := b.c.Do(req); err != nil || res.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin create: %v %v", res.StatusCode, err)
	}
	if got := len(n.state.Principals()); got != 2 {
		t.Fatalf("principals %d", got)
	}
	// With it, the key is created and its token shown once.
	res, page = b.post("/keys", url.Values{"name": {"ok"}, "_csrf": {csrf}})
	if res.StatusCode != http.StatusOK || !strings.Contains(page, "kl_") && !strings.Contains(page, "new-token") {
		t.Fatalf("create: %d", res.StatusCode)
	}

	// Sign-out ends the session: the old cookie no longer works.
	if res, _ := b.post("/logout", url.Values{"_csrf": {csrf}}); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign out: %d", res.StatusCode)
	}
	req, _ = http.NewRequest("GET", n.ts.URL+"/", nil)
	req.AddCookie(&http.Cookie{Name: "keyledger_session", Value: sess.Value})
	if res, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req); err != nil || res.StatusCode != http.StatusSeeOther {
		t.Fatalf("old session after sign-out: %v %v", res.StatusCode, err)
	}
	if strings.Contains(n.logs.String(), tok) {
		t.Fatal("the server logged the token")
	}
}

// TestKeyAdminCannotReachAnotherPrincipalsKey: the console shows a
// key-admin only its own keys, and another's key answers 404 whether it
// is looked at or acted on.
func TestKeyAdminCannotReachAnotherPrincipalsKey(t *testing.T) {
	n := mustStartNode(t, false)
	_, ana := n.principal("ana", "", domain.RoleKeyAdmin)
	_, bob := n.principal("bob", "", domain.RoleKeyAdmin)
	theirs := n.createKey(bob, "bob's key")
	b := newBrowserless(t, n)
	csrf := b.signIn(ana)
	if _, page := b.get("/"); strings.Contains(page, theirs.KeyID) || strings.Contains(page, "bob&#39;s key") {
		t.Fatal("the grid shows another principal's key")
	}
	if res, _ := b.get("/keys/" + theirs.KeyID); res.StatusCode != http.StatusNotFound {
		t.Fatalf("another's key page: %d", res.StatusCode)
	}
	b.post("/keys/"+theirs.KeyID+"/revoke", url.Values{"_csrf": {csrf}, "reason": {"x"}})
	if k, _ := n.state.Key(theirs.KeyID); !k.RevokedAt.IsZero() {
		t.Fatal("a key-admin revoked another principal's key through the console")
	}
	if _, page := b.get("/"); !strings.Contains(page, "key not found") {
		t.Fatalf("the refusal is not shown")
	}
}

// TestIssueCredentialFromConsole: the super administrator issues a
// principal a new credential from the principals page; its token is shown
// once and signs the principal in.
func TestIssueCredentialFromConsole(t *testing.T) {
	n := mustStartNode(t, false)
	bob, _ := n.principal("bob", "", domain.RoleKeyAdmin)
	b := newBrowserless(t, n)
	csrf := b.signIn(n.root)
	if _, page := b.get("/principals"); !strings.Contains(page, "/principals/"+bob+"/credential") {
		t.Fatal("the principals page offers no new credential")
	}
	res, page := b.post("/principals/"+bob+"/credential", url.Values{"_csrf": {csrf}, "name": {"recovery"}, "lifetime_days": {"7"}})
	m := regexp.MustCompile(`klk_[a-z2-7]{65}`).FindString(page)
	if res.StatusCode != http.StatusOK || m == "" {
		t.Fatalf("issue: %d, no token in\n%s", res.StatusCode, page)
	}
	var me api.MeView
	if st := n.apiDo("GET", "/v1/me", m, nil, &me); st != http.StatusOK || me.Principal.ID != bob || me.Key.Name != "recovery" {
		t.Fatalf("the issued token: %d %+v", st, me)
	}
}
