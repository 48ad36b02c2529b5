package console_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/keyledger/keyledger/domain"
)

// TestSignInNextStaysOnThisOrigin signs in with next= values that
// browsers would read as another origin (a tab or a newline is dropped
// from a Location, a backslash read as a slash) and sees each one
// replaced by "/", while a plain local path is kept.
func TestSignInNextStaysOnThisOrigin(t *testing.T) {
	n := mustStartNode(t, false)
	_, tok := n.principal("nina", "nina@example.com", domain.RoleKeyAdmin)
	tests := []struct{ next, want string }{
		{"/keys?status=all", "/keys?status=all"},
		{"/\t/evil.example", "/"},
		{"/\n/evil.example", "/"},
		{"/ /evil.example", "/"},
		{"//evil.example", "/"},
		{"/\\evil.example", "/"},
		{"/\\/evil.example", "/"},
		{"https://evil.example/", "/"},
		{"evil.example", "/"},
		{"/\u00a0/evil.example", "/"},
		{"/\u200b/evil.example", "/"},
		{"/\x7f/evil.example", "/"},
	}
	for _, tt := range tests {
		b := newBrowserless(t, n)
		// The sign-in page is asked for with the raw query, as a link
		// would carry it: %09 is the tab.
		_, page := b.get("/login?next=" + url.QueryEscape(tt.next))
		if tt.want == "/" && strings.Contains(page, "evil.example") {
			t.Errorf("next=%q: the sign-in page carries it on", tt.next)
		}
		res, body := b.post("/login", url.Values{"_csrf": {csrfOf(t, page)}, "token": {tok}, "next": {tt.next}})
		if res.StatusCode != http.StatusSeeOther {
			t.Fatalf("next=%q: sign in %d %s", tt.next, res.StatusCode, body)
		}
		if got := res.Header.Get("Location"); got != tt.want {
			t.Errorf("next=%q: redirected to %q, want %q", tt.next, got, tt.want)
		}
	}
	// The link of the issue, byte for byte.
	b := newBrowserless(t, n)
	_, page := b.get("/login?next=/%09/evil.example")
	if strings.Contains(page, "evil.example") {
		t.Error("next=/%09/evil.example: the sign-in page carries it on")
	}
}
