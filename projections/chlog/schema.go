package chlog

import (
	"context"
	"fmt"
	"time"
)

// Table is the name of the audit table.
const Table = "audit_log"

// createAuditLog is the audit table.
//
// Engine: a re-delivered batch (ClickHouse accepted it, the acks were lost,
// JetStream delivered it again) inserts the same rows a second time, and no
// engine available on 18.16 can refuse that insert: block deduplication
// exists only for Replicated tables there (it needs ZooKeeper; the
// non-replicated window came in 20.x), and even on a current release it only
// catches byte-identical blocks, not a batch re-cut differently after a
// restart. So the table tolerates duplicates instead of preventing them:
// ReplacingMergeTree collapses rows with equal sorting keys when parts merge,
// and every read is written so that it never counts an event twice before
// that merge happens (FINAL, or uniqExact / GROUP BY event_id, or LIMIT 1 BY
// event_id). For that to be correct the sorting key must be a function of the
// event alone, and it is: key_id and time come from the envelope and event_id
// is unique, so two copies of one event always share a key and a partition,
// and two different events never do. The rows the sink writes for one event
// are identical byte for byte, so it does not matter which copy survives and
// no version column is needed.
//
// ORDER BY leads with what searches filter on: one or a few key ids and a
// time range ("select keys, search in logs").
//
// Types: event_id is a String, not a UUID: ClickHouse's UUID sort order is
// not the textual one and has changed between releases, and searches page by
// (time, event_id) cursors that must sort the same on 18.16 and on the LTS.
// time is a DateTime in UTC for partitioning and range filters, and time_ms
// holds the exact Unix milliseconds (DateTime64 does not exist on 18.16).
// IP addresses are Strings (18.16 has no IPv4/IPv6 column types); CIDR
// filters use IPv4StringToNum/IPv6StringToNum, which both releases have.
// Nothing is Nullable: empty means "not applicable".
const createAuditLog = `CREATE TABLE IF NOT EXISTS ` + Table + ` (
    event_id       String,
    time           DateTime('UTC'),
    time_ms        UInt64,
    stream         String,
    seq            UInt64,
    type           String,
    kind           String,
    action         String,
    outcome        String,
    actor          String,
    key_id         String,
    owner          String,
    permissions    Array(String),
    source_ip      String,
    user_agent     String,
    request_id     String,
    service        String,
    token_hash     String,
    name           String,
    comments       String,
    reason         String,
    schema_version UInt16,
    prev_hash      String,
    hash           String,
    raw            String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (key_id, time, event_id)`

// columns lists the audit table's columns in the order Row's fields are
// appended and scanned. Inserts name them: INSERT INTO t (a, b, ...).
const columns = `event_id, time, time_ms, stream, seq, type, kind, action, outcome, actor, ` +
	`key_id, owner, permissions, source_ip, user_agent, request_id, service, token_hash, ` +
	`name, comments, reason, schema_version, prev_hash, hash, raw, quarantine`

// migration is one versioned schema change. ClickHouse has no transactions
// and 18.16 has no ADD COLUMN IF NOT EXISTS, so a migration's statements must
// be safe to run again (CREATE ... IF NOT EXISTS, or a guard that looks at
// system.columns first): a crash between a statement and its record, or two
// nodes starting at once, runs them twice.
type migration struct {
	version uint32
	name    string
	stmts   []string
	// unless, when set, is a query counting what the statements would
	// create: when it counts more than zero they are not run again.
	unless string
}

// migrations are applied in order, each once. Never edit or reorder one that
// has shipped; add a new one.
var migrations = []migration{
	{version: 1, name: "create audit_log", stmts: []string{createAuditLog}},
	{version: 2, name: "add audit_log.quarantine",
		stmts:  []string{`ALTER TABLE ` + Table + ` ADD COLUMN quarantine String DEFAULT ''`},
		unless: `SELECT count() FROM system.columns WHERE database = currentDatabase() AND table = '` + Table + `' AND name = 'quarantine'`},
}

// The quarantine column holds why the event store quarantined a row's
// message (an unsigned or forged message, an event its stream may not
// hold, bytes that are not an event), empty for the accepted history.
// Searches, alerts and exports read only rows where it is empty unless a
// reviewer asks for quarantined rows.

// createMigrations is the table that records applied migrations. It is a
// ReplacingMergeTree keyed by version so that two nodes recording the same
// migration at once leave one row after a merge; reads use DISTINCT anyway.
const createMigrations = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    UInt32,
    name       String,
    applied_at DateTime('UTC')
) ENGINE = ReplacingMergeTree
ORDER BY version`

// Migrate applies the migrations that the database has not recorded yet and
// returns their versions. Running it again applies nothing.
func (s *Store) Migrate(ctx context.Context) ([]uint32, error) {
	if err := s.conn.Exec(ctx, createMigrations); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	done, err := s.appliedMigrations(ctx)
	if err != nil {
		return nil, err
	}
	var applied []uint32
	for _, m := range migrations {
		if done[m.version] {
			continue
		}
		if m.unless != "" {
			var n uint64
			if err := s.conn.QueryRow(ctx, m.unless).Scan(&n); err != nil {
				return applied, fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
			}
			if n > 0 {
				m.stmts = nil
			}
		}
		for i, stmt := range m.stmts {
			if err := s.conn.Exec(ctx, stmt); err != nil {
				return applied, fmt.Errorf("migration %d (%s) statement %d: %w", m.version, m.name, i+1, err)
			}
		}
		if err := s.recordMigration(ctx, m); err != nil {
			return applied, err
		}
		s.logger.Info("clickhouse migration applied", "version", m.version, "name", m.name, "database", s.database)
		applied = append(applied, m.version)
	}
	return applied, nil
}

// MigrationVersions returns the versions recorded in schema_migrations, in
// ascending order and each once.
func (s *Store) MigrationVersions(ctx context.Context) ([]uint32, error) {
	rows, err := s.conn.Query(ctx, `SELECT DISTINCT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	defer rows.Close()
	var out []uint32
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("read schema_migrations: %w", err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	return out, nil
}

func (s *Store) appliedMigrations(ctx context.Context) (map[uint32]bool, error) {
	vs, err := s.MigrationVersions(ctx)
	if err != nil {
		return nil, err
	}
	done := make(map[uint32]bool, len(vs))
	for _, v := range vs {
		done[v] = true
	}
	return done, nil
}

// recordMigration inserts through a batch: 18.16 answers an INSERT with
// inline VALUES sent through clickhouse-go's Exec by waiting for a data
// block that never comes, so every insert here is a batch that names its
// columns.
func (s *Store) recordMigration(ctx context.Context, m migration) error {
	b, err := s.conn.PrepareBatch(ctx, `INSERT INTO schema_migrations (version, name, applied_at)`)
	if err != nil {
		return fmt.Errorf("record migration %d: %w", m.version, err)
	}
	defer func() { _ = b.Abort() }()
	if err := b.Append(m.version, m.name, time.Now().UTC()); err != nil {
		return fmt.Errorf("record migration %d: %w", m.version, err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("record migration %d: %w", m.version, err)
	}
	return nil
}
