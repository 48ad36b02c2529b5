package domain_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

var update = flag.Bool("update", false, "rewrite golden files")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s changed:\n got: %s\nwant: %s", name, got, want)
	}
}

func fixedToken() (uuid.UUID, domain.Secret) {
	id := uuid.MustParse("0191e8a0-1234-7abc-8def-0123456789ab")
	var s domain.Secret
	for i := range s {
		s[i] = byte(i * 7)
	}
	return id, s
}

func TestTokenGolden(t *testing.T) {
	id, s := fixedToken()
	tok := domain.FormatToken(id, s)
	golden(t, "token.golden", []byte(fmt.Sprintf("%s\n%s\n", tok, domain.HashSecret(s))))
	if got, want := len(tok), domain.TokenLen; got != want {
		t.Fatalf("len = %d, want %d", got, want)
	}
	if !strings.HasPrefix(tok, domain.TokenPrefix) {
		t.Fatalf("token %q lacks prefix", tok)
	}
	p, err := domain.ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	if p.KeyID != id || p.Secret != s {
		t.Fatalf("round trip = %v", p)
	}
}

func TestParseTokenRejects(t *testing.T) {
	id, s := fixedToken()
	tok := domain.FormatToken(id, s)
	flip := func(i int) string {
		b := []byte(tok)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	bad := map[string]string{
		"empty":            "",
		"truncated":        tok[:len(tok)-1],
		"extended":         tok + "a",
		"wrong prefix":     "xyz_" + tok[4:],
		"typo in key id":   flip(6),
		"typo in secret":   flip(40),
		"typo in checksum": flip(len(tok) - 1),
		"uppercase":        strings.ToUpper(tok),
		"bad alphabet":     tok[:10] + "1" + tok[11:],
		"bearer prefix":    "Bearer " + tok[7:],
	}
	for name, in := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := domain.ParseToken(in); domain.ErrorReason(err) != domain.OutcomeMalformed {
				t.Fatalf("ParseToken(%q) err = %v, want MALFORMED", in, err)
			}
		})
	}
}

func TestSecretMatches(t *testing.T) {
	_, s := fixedToken()
	h := domain.HashSecret(s)
	if !domain.SecretMatches(s, h) {
		t.Fatal("own hash does not match")
	}
	s2 := s
	s2[0] ^= 1
	if domain.SecretMatches(s2, h) {
		t.Fatal("other secret matches")
	}
	if domain.SecretMatches(s, "zz") || domain.SecretMatches(s, "") {
		t.Fatal("malformed hash matches")
	}
}

func FuzzParseToken(f *testing.F) {
	id, s := fixedToken()
	f.Add(domain.FormatToken(id, s))
	f.Add("")
	f.Add("klk_")
	f.Add(strings.Repeat("a", domain.TokenLen))
	f.Fuzz(func(t *testing.T, in string) {
		tok, err := domain.ParseToken(in)
		if err != nil {
			if domain.ErrorReason(err) != domain.OutcomeMalformed {
				t.Fatalf("unexpected error class %v", err)
			}
			return
		}
		// Anything accepted must be the one canonical spelling of its parts.
		if got := domain.FormatToken(tok.KeyID, tok.Secret); got != in {
			t.Fatalf("accepted non-canonical token %q (canonical %q)", in, got)
		}
	})
}
