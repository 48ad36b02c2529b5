package domain_test

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// usageStrings are field values that need every kind of escaping
// encoding/json does, and some that need none.
var usageStrings = []string{
	"", "VALID", "api.read", "10.0.0.1", "2001:db8::1", uuid.NewString(),
	`"quoted"`, `back\slash`, "<script>alert(1)</script>", "a&b", "x>y",
	"tab\there", "new\nline", "cr\r", "\b\f", "\x00\x01\x1f\x7f",
	"ünïcødé", "日本語", "emoji 🔑", "\u2028\u2029", "bad \xff utf8 \xc3", "\xe2\x80",
	"</ledger>&amp;", strings.Repeat("long ", 200),
}

// checkUsageEncoding checks that NewEnvelope encodes ev's data exactly as
// encoding/json.Marshal does, and that the envelope reads back to ev.
func checkUsageEncoding(t *testing.T, ev domain.Event) {
	t.Helper()
	want, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), uuid.NewString(), ev, time.UnixMilli(1700000000123), "svc", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(env.Data, want) {
		t.Fatalf("data of %#v\n got %s\nwant %s", ev, env.Data, want)
	}
	env.Seal("")
	raw, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := domain.UnmarshalEnvelope(raw)
	if err != nil {
		t.Fatalf("read back %s: %v", raw, err)
	}
	if back.ComputeHash() != env.Hash {
		t.Fatalf("hash of %s changed on a round trip", raw)
	}
	got, err := back.Decode()
	if err != nil {
		t.Fatal(err)
	}
	// What a reader decodes from the appended bytes is what it decodes
	// from encoding/json's (invalid UTF-8 reads back as U+FFFD in both).
	viaStd, err := (domain.Envelope{Type: ev.EventType(), Data: want}).Decode()
	if err != nil {
		t.Fatal(err)
	}
	if gj, wj := mustJSON(t, got), mustJSON(t, viaStd); gj != wj {
		t.Fatalf("decoded %s, want %s", gj, wj)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func usageEvents(pick func() string, num func() int64) []domain.Event {
	su := domain.ServiceUsage{RecordID: pick(), Endpoint: pick(), HTTPStatus: int(num()), Units: num()}
	return []domain.Event{
		domain.KeyUsed{Code: pick(), Owner: pick(), Permission: pick(), Service: pick(), CallerKey: pick(), CallerIP: pick(), ServiceUsage: su},
		domain.KeyDenied{Code: pick(), Owner: pick(), Permission: pick(), Service: pick(), TokenHash: pick(), CallerKey: pick(), CallerIP: pick(), ServiceUsage: su},
		&domain.KeyUsed{Code: pick(), CallerKey: pick()},
		&domain.KeyDenied{Code: pick(), TokenHash: pick()},
	}
}

// TestUsageEncodingMatchesMarshal compares the encoding of usage
// events with encoding/json's on many varied events.
func TestUsageEncodingMatchesMarshal(t *testing.T) {
	checkUsageEncoding(t, domain.KeyUsed{})
	checkUsageEncoding(t, domain.KeyDenied{})
	r := rand.New(rand.NewPCG(1, 2))
	pick := func() string {
		if r.IntN(3) == 0 {
			return ""
		}
		s := usageStrings[r.IntN(len(usageStrings))]
		if r.IntN(4) == 0 {
			s += usageStrings[r.IntN(len(usageStrings))]
		}
		return s
	}
	nums := []int64{0, 0, 1, -1, 200, 503, 1 << 40, -1 << 63, 1<<63 - 1}
	num := func() int64 { return nums[r.IntN(len(nums))] }
	for range 2000 {
		for _, ev := range usageEvents(pick, num) {
			checkUsageEncoding(t, ev)
		}
	}
}

// FuzzUsageEncoding checks the encoding of usage events against encoding/json on
// arbitrary strings and numbers.
func FuzzUsageEncoding(f *testing.F) {
	for i, s := range usageStrings {
		f.Add(s, usageStrings[(i+1)%len(usageStrings)], int64(i*100))
	}
	f.Fuzz(func(t *testing.T, a, b string, n int64) {
		i := 0
		pick := func() string {
			i++
			switch i % 3 {
			case 0:
				return a
			case 1:
				return b
			}
			return a + b
		}
		for _, ev := range usageEvents(pick, func() int64 { return n }) {
			checkUsageEncoding(t, ev)
		}
	})
}
