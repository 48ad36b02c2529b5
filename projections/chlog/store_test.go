package chlog_test

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// roundTripRows covers every column type with the values that tend to break
// a driver/server pair: millisecond times at the edges of a second, IPv4 and
// IPv6 (and mapped) addresses, empty and multi-element arrays, unicode
// outside the BMP, quotes, backslashes, control characters and NUL bytes,
// and empty strings everywhere.
func roundTripRows() []chlog.Row {
	t0 := time.Date(2026, 3, 4, 5, 6, 7, 89_000_000, time.UTC)
	return []chlog.Row{
		{
			EventID: uuid.NewString(), Time: t0, Stream: domain.StreamUsage, Seq: 1,
			Type: domain.TypeKeyDenied, Kind: domain.KindUsage, Action: "denied", Outcome: "IP_NOT_ALLOWED",
			Actor: "svc:gateway", KeyID: "k_rt1", Owner: "alice", Permissions: []string{"orders:read"},
			SourceIP: "203.0.113.7", UserAgent: "curl/8.5.0", RequestID: "req-1", Service: "gateway",
			TokenHash: strings.Repeat("ab", 32), SchemaVersion: 1, PrevHash: "", Hash: strings.Repeat("0f", 32),
			Raw: `{"id":"x"}`,
		},
		{
			EventID: uuid.NewString(), Time: t0.Add(999 * time.Millisecond), Stream: domain.StreamKeys, Seq: 1<<63 + 5,
			Type: domain.TypeKeyCreated, Kind: domain.KindKey, Action: "created",
			Actor: "ünïcødé-admin", KeyID: "k_rt1", Owner: "alice",
			Permissions: []string{"orders:read", "orders:write", "日本語:読む", "🔑:*", ""},
			SourceIP:    "2001:db8::1", UserAgent: "Mozilla/5.0 (X11; Linux x86_64) \"quoted\" \\ back\\slash",
			RequestID: "req-'single'-quote", Name: "Clé de production 🔐 — «prod»",
			Comments:      "line one\nline two\ttabbed\r\nwith NUL\x00 and bell\x07; DROP TABLE audit_log; --",
			SchemaVersion: 65535, PrevHash: strings.Repeat("1", 64), Hash: strings.Repeat("2", 64),
			Raw: `{"data":{"name":"Clé 🔐"}}`,
		},
		{
			// Every optional value empty, the first millisecond of a second.
			EventID: uuid.NewString(), Time: t0.Truncate(time.Second).Add(time.Second), Stream: domain.StreamKeys, Seq: 0,
			Type: domain.TypeKeyEnabled, KeyID: "k_rt1",
		},
		{
			EventID: uuid.NewString(), Time: t0.Add(time.Millisecond), Stream: domain.StreamUsage, Seq: 3,
			Type: domain.TypeKeyUsed, Kind: domain.KindUsage, Action: "used", Outcome: "VALID",
			KeyID: "k_rt1", Owner: "alice", SourceIP: "::ffff:192.0.2.1", Reason: "עברית مرحبا",
		},
	}
}

func TestRoundTripEveryColumnType(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := chlogtest.MustOpen(t)
	want := roundTripRows()
	if err := st.Insert(ctx, slices.Clone(want)); err != nil {
		t.Fatal(err)
	}
	got, err := st.KeyEvents(ctx, "k_rt1")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(want, func(a, b chlog.Row) int { return a.Time.Compare(b.Time) })
	if g, w := len(got), len(want); g != w {
		t.Fatalf("got %d rows, want %d", g, w)
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("row %d:\n got %#v\nwant %#v", i, got[i], want[i])
		}
		if !got[i].Time.Equal(want[i].Time) {
			t.Errorf("row %d: time %s, want %s", i, got[i].Time.Format(time.RFC3339Nano), want[i].Time.Format(time.RFC3339Nano))
		}
	}

	// The DateTime column that partitions and range-filters must agree
	// with the millisecond column, in UTC.
	rows, err := st.Conn().Query(ctx, `SELECT event_id, time, toUnixTimestamp(time), time_ms FROM audit_log`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var id string
		var ts time.Time
		var secs uint32
		var ms uint64
		if err := rows.Scan(&id, &ts, &secs, &ms); err != nil {
			t.Fatal(err)
		}
		if got, want := uint64(secs), ms/1000; got != want {
			t.Errorf("%s: time %d s, time_ms %d", id, secs, ms)
		}
		if got, want := ts.Unix(), int64(ms/1000); got != want {
			t.Errorf("%s: scanned time %s, time_ms %d", id, ts, ms)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Errorf("read %d rows, want %d", n, len(want))
	}

	// Event finds one row by id.
	one, err := st.Event(ctx, want[1].EventID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(one, want[1]) {
		t.Errorf("Event:\n got %#v\nwant %#v", one, want[1])
	}
	if _, err := st.Event(ctx, uuid.NewString()); domain.ErrorCode(err) != domain.ENOTFOUND {
		t.Errorf("Event of an unknown id: %v, want %s", err, domain.ENOTFOUND)
	}
}

// TestRoundTripEnvelopes stores a row for every event type, mapped from a
// sealed envelope, and reads back the searchable fields and the raw event,
// whose hash must still verify.
func TestRoundTripEnvelopes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := chlogtest.MustOpen(t)
	envs := everyEventType(t, "k_env")
	var rows []chlog.Row
	for i, env := range envs {
		raw, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, chlog.RowFromMessage(env.StreamName(), uint64(i+1), raw))
	}
	if err := st.Insert(ctx, rows); err != nil {
		t.Fatal(err)
	}
	for _, env := range envs {
		got, err := st.Event(ctx, env.ID.String())
		if err != nil {
			t.Fatalf("%s: %v", env.Type, err)
		}
		back, err := domain.UnmarshalEnvelope([]byte(got.Raw))
		if err != nil {
			t.Fatalf("%s: raw event does not decode: %v", env.Type, err)
		}
		if got, want := back.ComputeHash(), env.Hash; got != want {
			t.Errorf("%s: hash of the stored raw event %s, want %s", env.Type, got, want)
		}
		if got, want := got.Time, env.Time; !got.Equal(want) {
			t.Errorf("%s: time %s, want %s", env.Type, got, want)
		}
		if got, want := got.Hash, env.Hash; got != want {
			t.Errorf("%s: hash column %s, want %s", env.Type, got, want)
		}
	}
	// Lifecycle events after key.created carry no owner; the store fills
	// it so that a search by owner sees the key's whole history.
	evs, err := st.KeyEvents(ctx, "k_env")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range evs {
		if r.Kind == domain.KindKey || r.Kind == domain.KindUsage {
			if got, want := r.Owner, "owner-1"; got != want {
				t.Errorf("%s: owner %q, want %q", r.Type, got, want)
			}
		}
	}
}

func TestMigrationsAreIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	addr := chlogtest.MustConnect(t)
	st := chlogtest.MustOpenAt(t, addr) // Open applied them once.
	for range 2 {
		applied, err := st.Migrate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(applied) != 0 {
			t.Errorf("second Migrate applied %v, want nothing", applied)
		}
	}
	// A second store on the same database (another node, a restart)
	// applies nothing either.
	again, err := chlog.Open(ctx, chlogtest.ConfigFor(addr, st.Database()), chlogtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if applied, err := again.Migrate(ctx); err != nil || len(applied) != 0 {
		t.Errorf("Migrate on a second store: %v, %v; want nothing", applied, err)
	}
	versions, err := st.MigrationVersions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := versions, []uint32{1, 2}; !slices.Equal(got, want) {
		t.Errorf("recorded versions %v, want %v", got, want)
	}
	var records uint64
	if err := st.Conn().QueryRow(ctx, `SELECT count() FROM schema_migrations FINAL`).Scan(&records); err != nil {
		t.Fatal(err)
	}
	if records != 2 {
		t.Errorf("schema_migrations has %d rows, want 2", records)
	}
	// The table works after all that.
	if err := st.Insert(ctx, roundTripRows()); err != nil {
		t.Fatal(err)
	}
}

// TestSameBatchTwiceCountsOnce is the table's half of exactly-once: a batch
// inserted twice (stored, ack lost, delivered again) is stored twice, and
// no count or search may show it twice, before or after merges.
func TestSameBatchTwiceCountsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := chlogtest.MustOpen(t)
	rows := roundTripRows()
	for range 2 {
		if err := st.Insert(ctx, slices.Clone(rows)); err != nil {
			t.Fatal(err)
		}
	}
	var physical uint64
	if err := st.Conn().QueryRow(ctx, `SELECT count() FROM audit_log`).Scan(&physical); err != nil {
		t.Fatal(err)
	}
	if physical != 2*uint64(len(rows)) {
		// The test is only meaningful if the duplicates are really
		// there: nothing below 20.x deduplicates them on insert.
		t.Logf("stored %d rows for %d events", physical, len(rows))
	}
	check := func(when string) {
		t.Helper()
		n, err := st.CountEvents(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := n, uint64(len(rows)); got != want {
			t.Errorf("%s: CountEvents %d, want %d", when, got, want)
		}
		evs, err := st.KeyEvents(ctx, "k_rt1")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := len(evs), len(rows); got != want {
			t.Errorf("%s: KeyEvents returned %d rows, want %d", when, got, want)
		}
		var dup uint64
		if err := st.Conn().QueryRow(ctx, `SELECT count() FROM (SELECT event_id, count() AS c FROM audit_log FINAL GROUP BY event_id HAVING c > 1)`).Scan(&dup); err != nil {
			t.Fatal(err)
		}
		if dup != 0 {
			t.Errorf("%s: %d event ids appear more than once with FINAL", when, dup)
		}
	}
	check("before merge")
	if err := st.Conn().Exec(ctx, `OPTIMIZE TABLE audit_log FINAL`); err != nil {
		t.Fatal(err)
	}
	check("after merge")
	if err := st.Conn().QueryRow(ctx, `SELECT count() FROM audit_log`).Scan(&physical); err != nil {
		t.Fatal(err)
	}
	if got, want := physical, uint64(len(rows)); got != want {
		t.Errorf("after OPTIMIZE FINAL the table holds %d rows, want %d", got, want)
	}
}

// everyEventType returns a sealed hash chain with one envelope of every
// event type this code knows, for one key (principal and role events use
// the key id as their aggregate id, which is enough here).
func everyEventType(t *testing.T, keyID string) []domain.Envelope {
	t.Helper()
	name, comments, perms := "renamed", "new comments", []string{"a:read", "b:write"}
	desc := "role description"
	maxKeys := 3
	t0 := time.Date(2026, 5, 6, 7, 8, 9, 123_456_789, time.UTC)
	evs := []domain.Event{
		domain.KeyCreated{Owner: "owner-1", Name: "first key", Comments: "for tests", Permissions: []string{"a:read"},
			LifetimeDays: 30, ExpiresAt: t0.Add(30 * 24 * time.Hour), AllowedIPs: []string{"10.0.0.0/8"}, SecretHash: "h"},
		domain.KeyRegenerated{ExpiresAt: t0.Add(60 * 24 * time.Hour), Rotated: true, SecretHash: "h2", PreviousValidUntil: t0.Add(time.Hour)},
		domain.KeyUpdated{Name: &name, Comments: &comments, Permissions: &perms},
		domain.KeyDisabled{Reason: "suspicious"},
		domain.KeyEnabled{},
		domain.KeyUsed{Code: "VALID", Owner: "owner-1", Permission: "a:read", Service: "api"},
		domain.KeyDenied{Code: "INSUFFICIENT_PERMISSIONS", Owner: "owner-1", Permission: "c:admin", Service: "api", TokenHash: "th"},
		domain.KeyRevoked{Reason: "leaked"},
		domain.KeyDeleted{},
		domain.PrincipalCreated{Name: "Alice", Roles: []string{"key-admin"}, MaxKeys: 5},
		domain.PrincipalUpdated{Name: &name, MaxKeys: &maxKeys},
		domain.PrincipalDisabled{Reason: "left"},
		domain.PrincipalEnabled{},
		domain.PrincipalKeyIssued{KeyID: "k-issued", ActiveKeys: 2, Limit: 5},
		domain.RoleCreated{Permissions: perms, Description: "d"},
		domain.RoleUpdated{Permissions: perms, Description: &desc},
		domain.RoleDeleted{},
	}
	var out []domain.Envelope
	prev := ""
	for i, ev := range evs {
		env, err := domain.NewEnvelope(uuid.Must(uuid.NewV7()), keyID, ev, t0.Add(time.Duration(i)*time.Millisecond), "actor-1",
			&domain.RequestContext{RequestID: "r" + ev.EventType(), SourceIP: "198.51.100.9", UserAgent: "test/1"})
		if err != nil {
			t.Fatal(err)
		}
		env.Seal(prev)
		prev = env.Hash
		out = append(out, env)
	}
	return out
}

// TestLargeInsertIsOnePart inserts a batch several blocks long: every row
// arrives exactly as it was sent, and the insert leaves one part (parts are
// counted active or not, so a merge cannot hide a second one).
func TestLargeInsertIsOnePart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := chlogtest.MustOpen(t)
	base := roundTripRows()
	const n = 3*512 + 7 // three full blocks and a short one
	rows := make([]chlog.Row, n)
	for i := range rows {
		r := base[i%len(base)]
		r.EventID, r.Seq = uuid.NewString(), uint64(i+1)
		r.Raw = strings.Repeat("x", i%300)
		rows[i] = r
	}
	if err := st.Insert(ctx, slices.Clone(rows)); err != nil {
		t.Fatal(err)
	}
	var parts uint64
	if err := st.Conn().QueryRow(ctx, `SELECT count() FROM system.parts WHERE database = ? AND table = 'audit_log'`,
		st.Database()).Scan(&parts); err != nil {
		t.Fatal(err)
	}
	if parts != 1 {
		t.Errorf("one insert of %d rows made %d parts, want 1", n, parts)
	}
	for _, i := range []int{0, 511, 512, 1023, 1024, n - 1} {
		got, err := st.Event(ctx, rows[i].EventID)
		if err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		if got.Seq != rows[i].Seq || got.Raw != rows[i].Raw || got.Type != rows[i].Type {
			t.Errorf("row %d: got seq %d type %q raw of %d bytes, want seq %d type %q raw of %d bytes",
				i, got.Seq, got.Type, len(got.Raw), rows[i].Seq, rows[i].Type, len(rows[i].Raw))
		}
	}
	count, err := st.CountEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if count != n {
		t.Errorf("CountEvents %d, want %d", count, n)
	}
}

// TestInsertOrderIsTheTables: Insert sends rows in the order the table
// sorts them by, which is what lets ClickHouse skip sorting each insert.
// Rows share keys and seconds, so every part of the order is used.
func TestInsertOrderIsTheTables(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := chlogtest.MustOpen(t)
	t0 := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	var rows []chlog.Row
	for i := range 300 {
		rows = append(rows, chlog.Row{
			EventID: uuid.NewString(), Stream: domain.StreamUsage, Seq: uint64(i + 1), Type: domain.TypeKeyUsed,
			KeyID: []string{"k_b", "k_a", "k_c", "", "k_a\x00", "K_a", "k_é"}[i%7],
			// Many rows in one second, some in the next; milliseconds
			// that do not follow the event ids.
			Time: t0.Add(time.Duration((i*7919)%1500) * time.Millisecond),
		})
	}
	var want []string
	for _, i := range chlog.SortedOrder(rows) {
		want = append(want, rows[i].EventID)
	}
	if err := st.Insert(ctx, slices.Clone(rows)); err != nil {
		t.Fatal(err)
	}
	q, err := st.Conn().Query(ctx, `SELECT event_id FROM audit_log ORDER BY key_id, time, event_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var got []string
	for q.Next() {
		var id string
		if err := q.Scan(&id); err != nil {
			t.Fatal(err)
		}
		got = append(got, id)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ClickHouse's order differs from Insert's:\n got %v\nwant %v", got[:10], want[:10])
	}
}
