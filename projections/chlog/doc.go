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
package chlog
