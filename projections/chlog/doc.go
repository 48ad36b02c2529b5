// Package chlog is keyledger's ClickHouse log: the audit table that holds
// every event of the KEYS, USAGE and ALERTS streams, its migrations, the
// sink that copies events from JetStream into it exactly once (as far as any
// search or count can tell), and a managed local clickhouse-server for
// `serve` and the tests.
//
// The schema and every statement here must run on Debian's clickhouse-server
// 18.16 (local and CI) and on a current LTS (production): DateTime plus a
// millisecond column instead of DateTime64, String for IP addresses, no TTL,
// no async inserts, no ADD COLUMN IF NOT EXISTS, and inserts that name their
// columns.
//
// Reading the audit table has one rule: never count an event twice. A
// re-delivered batch is stored twice until a background merge collapses the
// copies, so every read uses FINAL, or counts with uniqExact(event_id), or
// keeps one row per event with LIMIT 1 BY event_id.
//
// Insert through batches only (Store.Insert): 18.16 answers an INSERT with
// inline VALUES sent through clickhouse-go's Exec by waiting for a data
// block that never comes.
package chlog
