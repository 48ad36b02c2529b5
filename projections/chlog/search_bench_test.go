package chlog_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/google/uuid"

	"github.com/keyledger/keyledger/projections/chlog"
	"github.com/keyledger/keyledger/projections/chlog/chlogtest"
)

// The search benchmark's log: searchRows events of searchKeys keys over the
// 92 days from searchStart (three whole monthly partitions).
const (
	searchRows = 10_000_000
	searchKeys = 20_000
)

var searchStart = time.Date(2026, 8, 1, 0, 0, 0, 0, time.UTC)

// searchChunks cut the 92 days into half months. Each chunk is one INSERT
// ... SELECT that ClickHouse writes as one part, so the table starts with
// two parts per monthly partition: what a log looks like once background
// merges have caught up, and few enough parts that no merge starts during
// the measurement.
var searchChunks = []struct{ from, to time.Time }{
	{time.Date(2026, 8, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 8, 16, 0, 0, 0, 0, time.UTC)},
	{time.Date(2026, 8, 16, 0, 0, 0, 0, time.UTC), time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)},
	{time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 9, 16, 0, 0, 0, 0, time.UTC)},
	{time.Date(2026, 9, 16, 0, 0, 0, 0, time.UTC), time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)},
	{time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 10, 16, 0, 0, 0, 0, time.UTC)},
	{time.Date(2026, 10, 16, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
}

// searchFill generates the events of one chunk in ClickHouse itself:
// numbers {first} .. {first}+{count}-1 of {keys} keys, times uniform in
// [{from_ms}, {from_ms}+{span_ms}). It is one INSERT ... SELECT that names its columns,
// with functions that 18.16 and a current release both have.
//
// What a row looks like:
//   - key k in [0, 20000) with a skewed popularity (k = 20000·u²): key 0
//     has ~70,000 events, key 100 ~3,500, keys above 5,000 a few hundred;
//     the key id is a UUID made of md5("key-<k>") (searchKeyID), its owner
//     one of 300 key-admins;
//   - 88% used (VALID), 10% denied (INVALID_SECRET mostly, then
//     IP_NOT_ALLOWED, INSUFFICIENT_PERMISSIONS, EXPIRED, REVOKED, DISABLED,
//     with a token hash), 2% lifecycle (created, regenerated, updated,
//     disabled, enabled, revoked, deleted) by one of 40 admins, with names,
//     comments, reasons and granted permissions;
//   - usage from the key's home /24 network (80%), anywhere in IPv4 (10%)
//     or an IPv6 address (10%), lifecycle from the 192.168/16 console;
//   - UUIDv7 event ids whose first 48 bits are the time, request ids, hash
//     chain fields, and the raw envelope (~530 bytes, as the sink stores
//     it), ~900 bytes a row before compression.
const searchFill = `INSERT INTO audit_log (event_id, time, time_ms, stream, seq, type, kind, action, outcome, actor,
    key_id, owner, permissions, source_ip, user_agent, request_id, service, token_hash, name, comments, reason,
    schema_version, prev_hash, hash, raw)
SELECT
    concat(substring(hms, 1, 8), '-', substring(hms, 9, 4), '-7', substring(hid, 1, 3), '-a', substring(hid, 4, 3), '-', substring(hid, 7, 12)) AS event_id,
    toDateTime(intDiv(ms, 1000)) AS t,
    ms,
    if(usage, 'USAGE', 'KEYS'),
    n + 1,
    concat('key.', action) AS type,
    if(usage, 'usage', 'keys'),
    action,
    multiIf(action = 'used', 'VALID', action = 'denied',
        ['INVALID_SECRET', 'INVALID_SECRET', 'INVALID_SECRET', 'IP_NOT_ALLOWED', 'INSUFFICIENT_PERMISSIONS', 'EXPIRED', 'REVOKED', 'DISABLED'][1 + hm % 8], '') AS outcome,
    if(usage, concat('svc:', service), concat('admin-', toString(hm % 40))) AS actor,
    concat(substring(hk, 1, 8), '-', substring(hk, 9, 4), '-4', substring(hk, 14, 3), '-8', substring(hk, 18, 3), '-', substring(hk, 21, 12)) AS key_id,
    concat('owner-', toString(k % 300)) AS owner,
    multiIf(usage, [perms[1 + intDiv(hm, 8) % 8]], action IN ('created', 'updated', 'regenerated'), arraySlice(perms, 1 + k % 5, 1 + k % 4), emptyArrayString()) AS permissions,
    multiIf(NOT usage, IPv4NumToString(toUInt32(3232235520 + hm % 65536)),
        hm % 10 = 0, concat('2001:db8:', lower(hex(toUInt16(k))), '::', toString(1 + intDiv(hm, 10) % 50)),
        hm % 10 < 9, IPv4NumToString(toUInt32(bitAnd(cityHash64(k, 'net'), 4294967040) + 1 + intDiv(hm, 10) % 254)),
        IPv4NumToString(toUInt32(cityHash64(n, 'ip')))) AS source_ip,
    if(usage, ['Go-http-client/1.1', 'curl/8.5.0', 'python-requests/2.31.0', 'okhttp/4.12.0'][1 + k % 4],
        'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36') AS user_agent,
    lower(hex(MD5(concat('req', toString(n))))) AS request_id,
    if(usage, ['api', 'billing', 'gateway', 'reports'][1 + k % 4], '') AS service,
    if(action = 'denied', lower(hex(SHA256(concat('tok', toString(n))))), '') AS token_hash,
    if(action IN ('created', 'updated', 'regenerated'),
        concat(['CI deploy', 'billing export', 'partner sync', 'mobile app', 'nightly backup', 'grafana'][1 + k % 6], ' ', toString(k)), '') AS name,
    if(action = 'created', ['rotate every 90 days', 'owned by the platform team', 'read-only access for a partner', 'temporary, remove after the migration'][1 + k % 4], '') AS comments,
    if(action IN ('disabled', 'revoked', 'deleted'), ['leaked in a public repository', 'employee left', 'scheduled rotation', 'suspicious activity from an unknown network'][1 + hm % 4], '') AS reason,
    1,
    lower(hex(SHA256(concat('prev', toString(n))))) AS prev_hash,
    lower(hex(SHA256(toString(n)))) AS hash,
    concat('{"id":"', event_id, '","type":"', type, '","key_id":"', key_id,
        '","time":"', formatDateTime(t, '%Y-%m-%dT%H:%M:%S', 'UTC'), '.', substring(toString(1000 + ms % 1000), 2), 'Z","actor":"', actor,
        '","schema_version":1,"ctx":{"request_id":"', request_id, '","source_ip":"', source_ip, '","user_agent":"', user_agent,
        '"},"data":{', if(usage, concat('"code":"', outcome, '","owner":"', owner, '","permission":"', permissions[1], '","service":"', service, '"'),
            concat('"owner":"', owner, '","name":"', name, '","comments":"', comments, '","reason":"', reason, '"')),
        '},"prev_hash":"', prev_hash, '","hash":"', hash, '"}')
FROM (
    SELECT
        number AS n,
        toUInt32({keys} * pow((cityHash64(n, 'key') % 1000000000) / 1000000000, 2)) AS k,
        lower(hex(MD5(concat('key-', toString(k))))) AS hk,
        toUInt64({from_ms} + cityHash64(n, 'time') % {span_ms}) AS ms,
        lower(hex(ms)) AS hms,
        lower(hex(MD5(toString(n)))) AS hid,
        cityHash64(n, 'misc') AS hm,
        cityHash64(n, 'action') % 1000 AS ra,
        multiIf(ra < 880, 'used', ra < 980, 'denied', ra < 985, 'created', ra < 988, 'regenerated', ra < 993, 'updated',
            ra < 995, 'disabled', ra < 997, 'enabled', ra < 999, 'revoked', 'deleted') AS action,
        action IN ('used', 'denied') AS usage,
        ['orders:read', 'orders:write', 'invoices:read', 'invoices:write', 'customers:read', 'keys:read', 'reports:read', 'webhooks:write'] AS perms
    FROM numbers({first}, {count})
)`

// searchKeyID is the key id that searchFill gives key k.
func searchKeyID(k int) string {
	sum := md5.Sum([]byte("key-" + strconv.Itoa(k)))
	h := hex.EncodeToString(sum[:])
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-8" + h[17:20] + "-" + h[20:32]
}

// fillSearchLog fills st with the benchmark's log: the chunks are inserted
// two at a time (one per core), each written as a single part.
func fillSearchLog(b *testing.B, st *chlog.Store) {
	b.Helper()
	ctx := clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{
		// One part per INSERT: squash the generated blocks by rows
		// only, up to more rows than a chunk has (~1.7M, ~1.5 GB).
		"min_insert_block_size_rows":  2_000_000,
		"min_insert_block_size_bytes": 0,
	}))
	span := searchChunks[len(searchChunks)-1].to.Sub(searchStart)
	var wg sync.WaitGroup
	slots := make(chan struct{}, 2)
	errs := make(chan error, len(searchChunks))
	first := 0
	for _, c := range searchChunks {
		// Rows in proportion to the chunk's length: an even density.
		last := int(searchRows * c.to.Sub(searchStart).Hours() / span.Hours())
		sql := strings.NewReplacer(
			"{from_ms}", strconv.FormatInt(c.from.UnixMilli(), 10),
			"{span_ms}", strconv.FormatInt(c.to.Sub(c.from).Milliseconds(), 10),
			"{keys}", strconv.Itoa(searchKeys),
			"{first}", strconv.Itoa(first),
			"{count}", strconv.Itoa(last-first),
		).Replace(searchFill)
		first = last
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			if err := st.Conn().Exec(ctx, sql); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("fill: %v", err)
	}
}

// latencies collects one duration per iteration and reports p50 and p99.
type latencies []time.Duration

func (l latencies) report(b *testing.B) time.Duration {
	slices.Sort(l)
	p50 := l[len(l)/2]
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(l[(len(l)*99)/100]), "p99-ms")
	return p50
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// scanned runs f once more with its query logged and returns what
// ClickHouse read for it, in every pass (an IN subquery's too, which its
// progress packets and query_log's read_rows leave out on 18.16): the
// granules of 8192 rows it selected through the primary-key index, and the
// bytes it decompressed.
func scanned(ctx context.Context, st *chlog.Store, f func(context.Context) (int, error)) (granules, bytes uint64, err error) {
	id := uuid.NewString()
	if _, err := f(clickhouse.Context(ctx, clickhouse.WithQueryID(id),
		clickhouse.WithSettings(clickhouse.Settings{"log_queries": 1}))); err != nil {
		return 0, 0, err
	}
	if err := st.Conn().Exec(ctx, `SYSTEM FLUSH LOGS`); err != nil {
		return 0, 0, err
	}
	// max: the query's start has a row too, with no counters (and type
	// is a number on 18.16, an Enum later).
	err = st.Conn().QueryRow(ctx, `SELECT
			max(ProfileEvents.Values[indexOf(ProfileEvents.Names, 'SelectedMarks')]),
			max(ProfileEvents.Values[indexOf(ProfileEvents.Names, 'CompressedReadBufferBytes')])
		FROM system.query_log WHERE query_id = ?`, id).Scan(&granules, &bytes)
	return granules, bytes, err
}

// BenchmarkSearch5Keys7Days measures the compliance reviewer's search, the
// panel's "select keys, search in logs", on a log of ten million events:
// five keys over seven days, newest first, each event once.
//
// The log is generated by ClickHouse (searchFill) into a fresh database
// once per run of this benchmark (the sub-benchmarks share it; -count N
// fills it N times) and dropped at its end. The fill takes about a minute
// and a half on two cores and is not part of any figure.
//
// The five keys are one hot key (~5,400 events in the window), one busy
// (~290) and three ordinary ones (25 to 65); the window crosses a monthly
// partition boundary. Every sub-benchmark reports p50-ms and p99-ms over
// its iterations, rows (what one query returned), scanned-rows (the
// granules ClickHouse selected for it in all its passes, times 8192) and
// read-MB (what it decompressed: where the time goes):
//
//   - baseline: a raw clickhouse-go SELECT count() over the same keys and
//     window, the least work ClickHouse can do for the question;
//   - page: Store.Search with Limit 100 (the first page);
//   - export: Store.Search without a limit (what ndjson/csv stream);
//   - cidr-text: page plus the slow filters, a CIDR and free text.
//
// The search sub-benchmarks also report x-baseline, their p50 over the
// baseline's p50 in the same run.
func BenchmarkSearch5Keys7Days(b *testing.B) {
	ctx := context.Background()
	st := chlogtest.MustOpen(b)
	start := time.Now()
	fillSearchLog(b, st)
	fill := time.Since(start)
	var rows, keys, parts uint64
	var disk string
	if err := st.Conn().QueryRow(ctx, `SELECT count(), uniq(key_id) FROM audit_log`).Scan(&rows, &keys); err != nil {
		b.Fatal(err)
	}
	if err := st.Conn().QueryRow(ctx, `SELECT count(), formatReadableSize(sum(bytes_on_disk)) FROM system.parts
		WHERE database = ? AND table = 'audit_log' AND active`, st.Database()).Scan(&parts, &disk); err != nil {
		b.Fatal(err)
	}
	if rows != searchRows {
		b.Fatalf("filled %d rows, want %d", rows, searchRows)
	}
	b.Logf("filled %d rows of ~%d keys in %s: %d parts, %s on disk", rows, keys, fill.Round(time.Millisecond), parts, disk)

	ids := []string{searchKeyID(0), searchKeyID(100), searchKeyID(2000), searchKeyID(9000), searchKeyID(17000)}
	from := time.Date(2026, 9, 27, 0, 0, 0, 0, time.UTC)
	to := from.Add(7 * 24 * time.Hour)

	count := func(ctx context.Context) (int, error) {
		var n uint64
		err := st.Conn().QueryRow(ctx,
			`SELECT count() FROM audit_log WHERE key_id IN (?, ?, ?, ?, ?) AND time BETWEEN ? AND ?`,
			ids[0], ids[1], ids[2], ids[3], ids[4], from, to.Add(-time.Second)).Scan(&n)
		return int(n), err
	}
	search := func(q chlog.Query) func(context.Context) (int, error) {
		return func(ctx context.Context) (int, error) {
			n := 0
			_, err := st.Search(ctx, q, func(chlog.Row) error { n++; return nil })
			return n, err
		}
	}
	eventIDs := func(q chlog.Query) []string {
		var out []string
		if _, err := st.Search(ctx, q, func(r chlog.Row) error { out = append(out, r.EventID); return nil }); err != nil {
			b.Fatal(err)
		}
		return out
	}
	page := chlog.Query{KeyIDs: ids, From: from, To: to, Limit: 100}
	export := chlog.Query{KeyIDs: ids, From: from, To: to}
	slow := page
	slow.Source, slow.HasSource, slow.Text = netip.MustParsePrefix("192.168.0.0/16"), true, "deploy"

	// The export must be every row the baseline counts (the fill makes
	// no duplicates), or the two measure different things, and the page
	// must be the export's first 100 rows.
	want, err := count(ctx)
	if err != nil {
		b.Fatal(err)
	}
	all := eventIDs(export)
	if len(all) != want || want < 1000 {
		b.Fatalf("export returned %d rows, the baseline counts %d", len(all), want)
	}
	if first := eventIDs(page); !slices.Equal(first, all[:page.Limit]) {
		b.Fatalf("the page is not the export's first %d rows", page.Limit)
	}
	if len(eventIDs(slow)) == 0 {
		b.Fatal("the CIDR and text filters select nothing: make them select some rows")
	}

	var baseline time.Duration
	measure := func(name string, f func(context.Context) (int, error)) {
		b.Run(name, func(b *testing.B) {
			lat := make(latencies, 0, b.N)
			var got int
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				n, err := f(ctx)
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				got = n
			}
			b.StopTimer()
			p50 := lat.report(b)
			b.ReportMetric(float64(got), "rows")
			granules, bytes, err := scanned(ctx, st, f)
			if err != nil {
				b.Fatalf("rows scanned: %v", err)
			}
			b.ReportMetric(float64(granules*8192), "scanned-rows")
			b.ReportMetric(float64(bytes)/(1<<20), "read-MB")
			if name == "baseline" {
				baseline = p50
			} else if baseline > 0 {
				b.ReportMetric(float64(p50)/float64(baseline), "x-baseline")
			}
		})
	}
	measure("baseline", count)
	measure("page", search(page))
	measure("export", search(export))
	measure("cidr-text", search(slow))
}
