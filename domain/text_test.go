package domain_test

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/keyledger/keyledger/domain"
	"golang.org/x/text/unicode/norm"
)

func TestCleanName(t *testing.T) {
	for _, c := range []struct {
		in, want, code string
	}{
		{"orders", "orders", ""},
		{"  orders  ", "orders", ""},
		{"Zoë", "Zoë", ""},
		{"Zoe\u0308", "Zoë", ""}, // decomposed: stored composed
		{"日本語のキー", "日本語のキー", ""},
		{"emoji \U0001F511\uFE0F", "emoji \U0001F511\uFE0F", ""}, // variation selectors are not refused
		{"", "", "invalid_name"},
		{"   ", "", "invalid_name"},
		{"\u200b", "", "invalid_name"},
		{"safe\u202eexe.txt", "", "invalid_name"},
		{"a\u2066b\u2069", "", "invalid_name"},
		{"a\u200db", "", "invalid_name"},
		{"\ufeffbom", "", "invalid_name"},
		{"\u3164", "", "invalid_name"}, // Hangul filler: shows as blank
		{"bell\u0007", "", "invalid_name"},
		{"two\nlines", "", "invalid_name"},
		{"tab\there", "", "invalid_name"},
		{"del\x7f", "", "invalid_name"},
		{"\xff", "", "invalid_name"},
		{strings.Repeat("a", domain.MaxNameLen+1), "", "invalid_name"},
	} {
		got, err := domain.CleanName(c.in)
		if code := domain.ErrorReason(err); code != c.code || got != c.want {
			t.Errorf("CleanName(%+q) = %+q, %q; want %+q, %q", c.in, got, code, c.want, c.code)
		}
	}
	if got, err := domain.CleanComments("line one\n\tline two\r\n"); err != nil || got != "line one\n\tline two\r\n" {
		t.Errorf("comments with line breaks: %q %v", got, err)
	}
	if _, err := domain.CleanComments("hidden \u202e"); domain.ErrorReason(err) != "invalid_comments" {
		t.Errorf("comments with an override: %v", err)
	}
	if got, err := domain.CleanComments(""); err != nil || got != "" {
		t.Errorf("empty comments: %q %v", got, err)
	}
}

// FuzzCleanText: whatever the rule accepts is valid NFC UTF-8 with no
// control or format character (bar line breaks and tabs in multi-line
// text), a name is trimmed and not empty, and cleaning is idempotent.
func FuzzCleanText(f *testing.F) {
	for _, s := range []string{"orders", " a ", "safe\u202eexe.txt", "\u200b", "Zoe\u0308", "a\nb", "\u3164", "\xff"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, name bool) {
		var got string
		var err error
		if name {
			got, err = domain.CleanName(s)
		} else {
			got, err = domain.CleanComments(s)
		}
		if err != nil {
			if domain.ErrorCode(err) != domain.EINVALID {
				t.Fatalf("error %v is not EINVALID", err)
			}
			return
		}
		if !utf8.ValidString(got) || !norm.NFC.IsNormalString(got) {
			t.Fatalf("%+q is not NFC UTF-8", got)
		}
		if name && (got == "" || strings.TrimSpace(got) != got) {
			t.Fatalf("name %+q is blank or untrimmed", got)
		}
		for _, r := range got {
			if unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Cc, r) && (name || r != '\n' && r != '\t' && r != '\r') {
				t.Fatalf("%+q holds U+%04X", got, r)
			}
		}
		again, err := domain.CleanText("x", got, 1<<20, name, !name)
		if err != nil || again != got {
			t.Fatalf("cleaning %+q again gave %+q, %v", got, again, err)
		}
	})
}
