package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/keyledger/keyledger/domain"
)

// decodeStd is decode as it was written on encoding/json's streaming
// decoder: the reference the pooled, segmentio-based decode must match.
func decodeStd(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		if errors.Is(err, io.EOF) {
			return domain.Errorf(domain.EINVALID, "invalid_json", "request body is empty")
		}
		return domain.Errorf(domain.EINVALID, "invalid_json", "invalid JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return domain.Errorf(domain.EINVALID, "invalid_json", "request body has trailing data")
	}
	return nil
}

// decodeBodies are request bodies of every shape the handlers see.
var decodeBodies = []string{
	``, ` `, "\n\t", `{}`, `null`, `[]`, `"x"`, `7`, `{`, `}`, `{"token":`, `{"token":"x"`,
	`{"token":"x"}`, `{"token":"x","permission":"api.read","ip":"10.0.0.1"}`,
	`  {"token":"x"}  `, "{\"token\":\"x\"}\n", `{"token":"x"}{}`, `{"token":"x"} x`, `{"token":"x"}}`,
	`{"token":"x","secret":"y"}`, `{"Token":"x"}`, `{"TOKEN":"x"}`, `{"token":7}`, `{"token":null}`,
	`{"token":"x","token":"y"}`, `{"token":"\u003c\ud83d\udd11\n"}`, `{"token":"\ud800"}`, "{\"token\":\"\xff\"}",
	`{"token":"a\"b\\c"}`, `{"token":"x",}`, `{'token':'x'}`, `{"token":"x"} // c`, "\v{}", "\xef\xbb\xbf{}",
	`{"name":"a","permissions":["a","b"],"lifetime_days":3,"metadata":{"k":"v"}}`,
	`{"name":"a","lifetime_days":3.5}`, `{"name":"a","lifetime_days":1e2}`, `{"name":"a","lifetime_days":"3"}`,
	`{"name":"a","permissions":null,"metadata":null}`, `{"name":"a","metadata":{"k":1}}`, `{"permissions":"a"}`,
	`{"name":"a","allowed_ips":["10.0.0.0/8",7]}`, `{"lifetime_days":99999999999999999999}`,
	`{"name":"a"}` + strings.Repeat(" ", 100), strings.Repeat(`[`, 100),
}

// decodeOutcome runs one decoder on body into a fresh value of v's type and
// returns the value and the error's reason ("" for none).
func decodeOutcome(dec func(*http.Request, any) error, body string, v any) (any, string) {
	r := httptest.NewRequest("POST", "/v1/verify", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, MaxBodyBytes)
	out := reflect.New(reflect.TypeOf(v).Elem()).Interface()
	err := dec(r, out)
	if err == nil {
		return out, ""
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, "body_too_large"
	}
	return nil, domain.ErrorReason(err)
}

func checkDecodeSame(t *testing.T, body string) {
	t.Helper()
	for _, v := range []any{&verifyRequest{}, &createKeyRequest{}, &updateKeyRequest{}} {
		want, wantErr := decodeOutcome(decodeStd, body, v)
		got, gotErr := decodeOutcome(decode, body, v)
		if gotErr != wantErr || !reflect.DeepEqual(got, want) {
			t.Errorf("decode %q into %T = %#v, %q; encoding/json: %#v, %q", body, v, got, gotErr, want, wantErr)
		}
	}
}

// TestDecodeMatchesEncodingJSON checks that decode accepts and refuses the
// same bodies as encoding/json's decoder did, with the same reasons, and
// decodes the same values.
func TestDecodeMatchesEncodingJSON(t *testing.T) {
	for _, body := range decodeBodies {
		checkDecodeSame(t, body)
	}
	// Too large either way: one value longer than the limit.
	_, reason := decodeOutcome(decode, `{"token":"`+strings.Repeat("a", MaxBodyBytes)+`"}`, &verifyRequest{})
	if reason != "body_too_large" {
		t.Errorf("oversized body: reason %q", reason)
	}
}

func FuzzDecode(f *testing.F) {
	for _, b := range decodeBodies {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body string) { checkDecodeSame(t, body) })
}
