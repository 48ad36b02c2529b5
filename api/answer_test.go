package api

import (
	"bytes"
	"math/rand/v2"
	"net/http/httptest"
	"testing"
	"time"
)

// TestWriteVerifyMatchesWriteJSON checks that the verification answer is
// byte for byte what writeJSON writes, on varied answers.
func TestWriteVerifyMatchesWriteJSON(t *testing.T) {
	strs := []string{"", "VALID", "INVALID_SECRET", "01a21a52-3c6c-751b-9f8c-81c09ab34616", `"q"`, `b\s`,
		"<a>&", "tab\t\n\r\b\f\x00\x1f\x7f", "ünï 日本 🔑", "\u2028\u2029", "bad \xff \xc3", "\xe2\x80"}
	times := []*time.Time{nil}
	for _, tm := range []time.Time{
		time.Date(2026, 12, 2, 0, 40, 0, 0, time.UTC),
		time.Date(2026, 12, 2, 0, 40, 0, 123000000, time.UTC),
		time.Date(2026, 12, 2, 0, 40, 0, 123456789, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 6, 1, 12, 0, 0, 500, time.FixedZone("x", 5*3600+30*60)),
	} {
		times = append(times, &tm)
	}
	r := rand.New(rand.NewPCG(3, 4))
	pick := func() string { return strs[r.IntN(len(strs))] }
	for range 3000 {
		out := VerifyResponse{Valid: r.IntN(2) == 0, Code: pick(), KeyID: pick(), Owner: pick(), EventID: pick(), ExpiresAt: times[r.IntN(len(times))]}
		switch r.IntN(3) {
		case 0:
		case 1:
			out.Permissions = []string{}
		case 2:
			out.Permissions = []string{pick(), pick()}
		}
		want, got := httptest.NewRecorder(), httptest.NewRecorder()
		writeJSON(want, 200, out)
		writeVerify(got, &out)
		if !bytes.Equal(got.Body.Bytes(), want.Body.Bytes()) {
			t.Fatalf("answer %#v\n got %s\nwant %s", out, got.Body, want.Body)
		}
		if g, w := got.Header().Get("Content-Type"), want.Header().Get("Content-Type"); g != w || got.Code != want.Code {
			t.Fatalf("header %q %d, want %q %d", g, got.Code, w, want.Code)
		}
	}
}
