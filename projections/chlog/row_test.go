package chlog_test

import (
	"bytes"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
)

func TestRowFromMessageMapsEveryEventType(t *testing.T) {
	envs := everyEventType(t, "k_map")
	type want struct {
		outcome, owner, name, comments, reason, service, tokenHash string
		perms                                                      []string
	}
	wants := map[string]want{
		domain.TypeKeyCreated:         {owner: "owner-1", name: "first key", comments: "for tests", perms: []string{"a:read"}},
		domain.TypeKeyRegenerated:     {},
		domain.TypeKeyUpdated:         {name: "renamed", comments: "new comments", perms: []string{"a:read", "b:write"}},
		domain.TypeKeyDisabled:        {reason: "suspicious"},
		domain.TypeKeyEnabled:         {},
		domain.TypeKeyUsed:            {outcome: "VALID", owner: "owner-1", service: "api", perms: []string{"a:read"}},
		domain.TypeKeyDenied:          {outcome: "INSUFFICIENT_PERMISSIONS", owner: "owner-1", service: "api", tokenHash: "th", perms: []string{"c:admin"}},
		domain.TypeKeyRevoked:         {reason: "leaked"},
		domain.TypeKeyDeleted:         {},
		domain.TypePrincipalCreated:   {name: "Alice"},
		domain.TypePrincipalUpdated:   {name: "renamed"},
		domain.TypePrincipalDisabled:  {reason: "left"},
		domain.TypePrincipalEnabled:   {},
		domain.TypePrincipalKeyIssued: {owner: "k_map", comments: "key k-issued"},
		domain.TypeRoleCreated:        {comments: "d", perms: []string{"a:read", "b:write"}},
		domain.TypeRoleUpdated:        {comments: "role description", perms: []string{"a:read", "b:write"}},
		domain.TypeRoleDeleted:        {},
	}
	for i, env := range envs {
		raw, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		r := chlog.RowFromMessage(env.StreamName(), uint64(100+i), raw)
		w, ok := wants[env.Type]
		if !ok {
			t.Fatalf("no expectation for %s", env.Type)
		}
		if r.EventID != env.ID.String() || r.Type != env.Type || r.KeyID != "k_map" || r.Actor != "actor-1" ||
			!r.Time.Equal(env.Time) || r.Stream != env.StreamName() || r.Seq != uint64(100+i) ||
			r.Hash != env.Hash || r.PrevHash != env.PrevHash || r.SchemaVersion != 1 || r.Raw != string(raw) {
			t.Errorf("%s: envelope fields: %+v", env.Type, r)
		}
		if r.SourceIP != "198.51.100.9" || r.UserAgent != "test/1" || r.RequestID != "r"+env.Type {
			t.Errorf("%s: request context: %q %q %q", env.Type, r.SourceIP, r.UserAgent, r.RequestID)
		}
		if r.Kind != domain.KindOf(env.Type) || r.Action != domain.Action(env.Type) {
			t.Errorf("%s: kind %q action %q", env.Type, r.Kind, r.Action)
		}
		got := want{r.Outcome, r.Owner, r.Name, r.Comments, r.Reason, r.Service, r.TokenHash, r.Permissions}
		if got.outcome != w.outcome || got.owner != w.owner || got.name != w.name || got.comments != w.comments ||
			got.reason != w.reason || got.service != w.service || got.tokenHash != w.tokenHash || !slices.Equal(got.perms, w.perms) {
			t.Errorf("%s: got %+v, want %+v", env.Type, got, w)
		}
	}
}

// An event type this code does not know yet (alerts are added later) still
// becomes a row with its envelope and the common fields of its data.
func TestRowFromMessageUnknownType(t *testing.T) {
	raw := `{"id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","type":"alert.brute_force","key_id":"brute_force.high",` +
		`"time":"2026-01-02T03:04:05.678Z","actor":"rules","schema_version":1,` +
		`"data":{"code":"BRUTE_FORCE","owner":"alice","reason":"50 denials in a minute","permissions":["x"]},` +
		`"prev_hash":"","hash":"abc","future_field":1}`
	r := chlog.RowFromMessage(domain.StreamAlerts, 7, []byte(raw))
	if r.EventID != "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b" || r.Type != "alert.brute_force" || r.Kind != domain.KindAlert {
		t.Errorf("envelope: %+v", r)
	}
	if r.Outcome != "BRUTE_FORCE" || r.Owner != "alice" || r.Reason != "50 denials in a minute" || !slices.Equal(r.Permissions, []string{"x"}) {
		t.Errorf("common fields: %+v", r)
	}
	if got, want := r.Time.UnixMilli(), int64(1767323045678); got != want {
		t.Errorf("time %d, want %d", got, want)
	}
	if r.Raw != raw {
		t.Errorf("raw changed")
	}
}

// A message that is no event at all is kept, under an id made of its place
// in the stream, so that the log misses nothing and the sink never stalls.
func TestRowFromMessageInvalid(t *testing.T) {
	for _, body := range []string{"", "not json", `{"type":"key.created"}`, "\xff\xfe"} {
		r := chlog.RowFromMessage(domain.StreamKeys, 42, []byte(body))
		if r.EventID != "invalid:KEYS:42" || r.Type != "invalid" || r.Raw != body || r.Seq != 42 || r.Stream != domain.StreamKeys {
			t.Errorf("%q: %+v", body, r)
		}
		if !strings.HasPrefix(r.EventID, "invalid:") {
			t.Errorf("%q: id %q", body, r.EventID)
		}
	}
}

func FuzzRowFromMessage(f *testing.F) {
	f.Add([]byte(`{"id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","type":"key.used","data":{"code":"VALID"}}`))
	f.Add([]byte(`{"id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","type":"key.created","data":[]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := chlog.RowFromMessage(domain.StreamUsage, 1, b)
		if r.EventID == "" || r.Raw != string(b) {
			t.Fatalf("row without id or with changed raw: %+v", r)
		}
	})
}

// A pack of usage events is a row per event, each with its own id, hash and
// raw encoding, all at the pack's sequence; a pack that does not split is
// one invalid row holding the whole message.
func TestRowsFromMessagePack(t *testing.T) {
	var raws [][]byte
	var envs []domain.Envelope
	for _, e := range everyEventType(t, "k_pack") {
		if e.StreamName() != domain.StreamUsage {
			continue
		}
		b, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		raws, envs = append(raws, b), append(envs, e)
	}
	if len(raws) < 2 {
		t.Fatalf("%d usage events to pack", len(raws))
	}
	packed := domain.Pack(raws)
	rows := chlog.RowsFromMessage(domain.StreamUsage, 7, strconv.Itoa(len(raws)), packed)
	if len(rows) != len(raws) {
		t.Fatalf("%d rows for a pack of %d", len(rows), len(raws))
	}
	for i, r := range rows {
		if r.EventID != envs[i].ID.String() || r.Raw != string(raws[i]) || r.Seq != 7 || r.Hash != envs[i].Hash || r.Type != envs[i].Type {
			t.Errorf("row %d: %+v, want event %s", i, r, envs[i].ID)
		}
	}
	bad := chlog.RowsFromMessage(domain.StreamUsage, 8, strconv.Itoa(len(raws)+1), packed)
	if len(bad) != 1 || bad[0].EventID != "invalid:USAGE:8" || bad[0].Raw != string(packed) {
		t.Errorf("a pack whose count lies: %+v", bad)
	}
}

// TestAppendRowsKeepsEachEventsBytes: rows appended after others, from a
// pack with an event that is not one, each hold exactly their own line.
func TestAppendRowsKeepsEachEventsBytes(t *testing.T) {
	var raws [][]byte
	for i, e := range everyEventType(t, "k_append") {
		if e.StreamName() != domain.StreamUsage {
			continue
		}
		b, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, b)
		if i%2 == 0 {
			raws = append(raws, []byte(`{"not":"an event"}`))
		}
	}
	first := chlog.RowFromMessage(domain.StreamKeys, 1, raws[0])
	rows := chlog.AppendRows([]chlog.Row{first}, domain.StreamUsage, 9, strconv.Itoa(len(raws)), domain.Pack(raws))
	if len(rows) != 1+len(raws) {
		t.Fatalf("%d rows, want %d", len(rows), 1+len(raws))
	}
	if !reflect.DeepEqual(rows[0], first) {
		t.Errorf("the row already there changed: %+v", rows[0])
	}
	for i, r := range rows[1:] {
		if r.Raw != string(raws[i]) || r.Seq != 9 {
			t.Errorf("row %d: seq %d raw %q, want seq 9 raw %q", i, r.Seq, r.Raw, raws[i])
		}
		if (r.Type == "invalid") != bytes.HasPrefix(raws[i], []byte(`{"not"`)) {
			t.Errorf("row %d: type %q for %s", i, r.Type, raws[i])
		}
		if r.Type == "invalid" && r.EventID != "invalid:USAGE:9:"+strconv.Itoa(i) && i > 0 {
			t.Errorf("row %d: invalid event id %q", i, r.EventID)
		}
	}
}
