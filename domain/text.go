package domain

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// The one rule for text a person writes and others read: names, comments,
// descriptions and reasons. The API applies it when it decides, the CLI
// before it sends and the console before it posts, so what is stored is
// what is shown:
//   - valid UTF-8, normalized to NFC, so that one name has one spelling;
//   - no control characters (Cc), except a line break or a tab in multi-line
//     text;
//   - no format characters (Cf: bidirectional overrides and isolates,
//     zero-width spaces and joiners, the byte-order mark) nor other
//     default-ignorable characters (Hangul fillers, the combining grapheme
//     joiner), which make text show differently from what it is:
//     "safe\u202eexe.txt" shows as "safetxt.exe", "\u200b" as nothing;
//   - a name is trimmed of surrounding white space and may not be empty.

// CleanName applies the text rule to a key's or a principal's name and
// returns it trimmed and normalized. Errors: EINVALID (invalid_name).
func CleanName(s string) (string, error) { return CleanText("name", s, MaxNameLen, true, false) }

// CleanComments applies the text rule to a key's comments. Errors: EINVALID
// (invalid_comments).
func CleanComments(s string) (string, error) {
	return CleanText("comments", s, MaxCommentsLen, false, true)
}

// CleanText applies the text rule to field's value s, of at most max
// characters: a required field is trimmed and may not be empty; multiline
// text may hold line breaks and tabs. It returns s normalized. Errors:
// EINVALID (invalid_<field>).
func CleanText(field, s string, max int, required, multiline bool) (string, error) {
	bad := func(format string, args ...any) (string, error) {
		return "", Errorf(EINVALID, "invalid_"+field, "%s %s", field, fmt.Sprintf(format, args...))
	}
	if !utf8.ValidString(s) {
		return bad("is not valid UTF-8")
	}
	if !norm.NFC.IsNormalString(s) {
		s = norm.NFC.String(s)
	}
	if required {
		s = strings.TrimSpace(s)
		if s == "" {
			return bad("is required and may not be blank")
		}
	}
	if n := utf8.RuneCountInString(s); n > max {
		return bad("is longer than %d characters", max)
	}
	for _, r := range s {
		switch {
		case r < utf8.RuneSelf && r >= ' ' && r != 0x7f:
		case unicode.Is(unicode.Cc, r):
			if multiline && (r == '\n' || r == '\t' || r == '\r') {
				continue
			}
			return bad("contains the control character U+%04X", r)
		case unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r):
			return bad("contains the invisible character U+%04X (direction overrides, zero-width and other invisible characters are refused)", r)
		}
	}
	return s, nil
}
