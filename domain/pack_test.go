package domain_test

import (
	"bytes"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

func TestPackUnpack(t *testing.T) {
	var raws [][]byte
	for i := range 3 {
		env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), "k1", domain.KeyUsed{Code: "VALID", Service: "svc\nwith a newline " + strconv.Itoa(i)}, time.Now(), "svc", nil)
		if err != nil {
			t.Fatal(err)
		}
		env.Seal("")
		b, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, b)
	}
	packed := domain.Pack(raws)
	got, err := domain.Unpack("3", packed)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("unpacked %d events, want 3", len(got))
	}
	for i := range raws {
		if !bytes.Equal(got[i], raws[i]) {
			t.Errorf("event %d: %s, want %s", i, got[i], raws[i])
		}
		if _, err := domain.UnmarshalEnvelope(got[i]); err != nil {
			t.Errorf("event %d: %v", i, err)
		}
	}
	// A message without the header is one event, whatever it holds.
	if one, err := domain.Unpack("", packed); err != nil || len(one) != 1 || !bytes.Equal(one[0], packed) {
		t.Errorf("unpacked a plain message as %d events (%v)", len(one), err)
	}
	for _, bad := range []struct{ count, data string }{
		{"2", string(packed)}, {"4", string(packed)}, {"0", "x"}, {"-1", "x"}, {"two", "a\nb"},
		{"2", "a\n"}, {"2", "\nb"}, {"3", "a\n\nb"}, {"1", ""},
	} {
		if _, err := domain.Unpack(bad.count, []byte(bad.data)); domain.ErrorCode(err) != domain.EINVALID {
			t.Errorf("Unpack(%q, %q) = %v, want %s", bad.count, bad.data, err, domain.EINVALID)
		}
	}
}

// FuzzUnpack: a pack from outside never panics, and what unpacks joins back
// to the same bytes.
func FuzzUnpack(f *testing.F) {
	f.Add("2", []byte("{\"a\":1}\n{\"b\":2}"))
	f.Add("1", []byte("{}"))
	f.Add("", []byte("x\ny"))
	f.Add("3", []byte("a\n\nb"))
	f.Fuzz(func(t *testing.T, count string, data []byte) {
		events, err := domain.Unpack(count, data)
		if err != nil {
			return
		}
		if count != "" {
			if n, _ := strconv.Atoi(count); n != len(events) {
				t.Fatalf("header %q, %d events", count, len(events))
			}
			for _, e := range events {
				if len(e) == 0 || bytes.IndexByte(e, '\n') >= 0 {
					t.Fatalf("event %q", e)
				}
			}
		}
		if !bytes.Equal(domain.Pack(events), data) {
			t.Fatalf("Pack(Unpack(%q)) differs", data)
		}
	})
}
