package chlog

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keyledger/keyledger/domain"
)

// Config says where the audit log lives.
type Config struct {
	// Addr is host:port of a ClickHouse server's native protocol.
	Addr string
	// Database is created when it does not exist; "keyledger" when empty.
	Database string
	Username string // "default" when empty
	Password string
	// DialTimeout bounds each connection attempt; 5s when zero. Short,
	// because the sink retries on its own schedule while ClickHouse is down.
	DialTimeout time.Duration
}

// DefaultDatabase is the database Open uses when Config.Database is empty.
const DefaultDatabase = "keyledger"

// databaseName is what Open accepts as a database name: it is spliced into
// CREATE DATABASE, which takes no bound parameters.
var databaseName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// Store is the audit table in one ClickHouse database, through
// clickhouse-go/v2's native protocol (which works against 18.16: the server
// negotiates the protocol revision down to its own).
type Store struct {
	conn     driver.Conn
	database string
	logger   *slog.Logger

	// owners caches key id → owner for lifecycle events whose data does
	// not carry the owner. A key's owner never changes, so entries never
	// go stale; the map is dropped when it grows too big.
	mu     sync.Mutex
	owners map[string]string
}

const maxCachedOwners = 100_000

// Open connects to ClickHouse, creates the database when it is missing and
// applies the migrations. Errors are wrapped infrastructure errors.
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Database == "" {
		cfg.Database = DefaultDatabase
	}
	if !databaseName.MatchString(cfg.Database) {
		return nil, domain.Errorf(domain.EINVALID, "bad_database", "invalid ClickHouse database name %q", cfg.Database)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	// The database must exist before a pool can be bound to it, so the
	// first connection names none: the server's default database, which
	// a user limited to its own database (allow_databases) may not name.
	boot, err := dial(cfg, "", logger)
	if err != nil {
		return nil, err
	}
	err = boot.Exec(ctx, "CREATE DATABASE IF NOT EXISTS `"+cfg.Database+"`")
	boot.Close()
	if err != nil {
		return nil, fmt.Errorf("create database %s: %w", cfg.Database, err)
	}
	conn, err := dial(cfg, cfg.Database, logger)
	if err != nil {
		return nil, err
	}
	s := &Store{conn: conn, database: cfg.Database, logger: logger, owners: map[string]string{}}
	if v, err := conn.ServerVersion(); err == nil {
		logger.Debug("clickhouse connected", "addr", cfg.Addr, "database", cfg.Database,
			"version", fmt.Sprintf("%d.%d.%d", v.Version.Major, v.Version.Minor, v.Version.Patch), "revision", v.Revision)
	}
	if _, err := s.Migrate(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

func dial(cfg Config, database string, logger *slog.Logger) (driver.Conn, error) {
	user := cfg.Username
	if user == "" {
		user = "default"
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Protocol: clickhouse.Native,
		Addr:     []string{cfg.Addr},
		Auth:     clickhouse.Auth{Database: database, Username: user, Password: cfg.Password},
		// LZ4 is the one block compression every server revision
		// understands.
		Compression:     &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
		DialTimeout:     cfg.DialTimeout,
		MaxOpenConns:    8,
		MaxIdleConns:    4,
		ConnMaxLifetime: 10 * time.Minute,
		// The driver warns at every connect that 18.16 is older than
		// the releases it is tested against; Open logs the version
		// once instead, and the round-trip tests are what show that
		// the pair works. Only the driver's errors get through.
		Logger: slog.New(minLevel{logger.Handler(), slog.LevelError}).With("component", "clickhouse-go"),
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", cfg.Addr, err)
	}
	return conn, nil
}

// Conn returns the connection pool, for the queries of the search layer.
func (s *Store) Conn() driver.Conn { return s.conn }

// Database returns the database that holds the audit table.
func (s *Store) Database() string { return s.database }

// Close closes the connection pool.
func (s *Store) Close() error {
	if err := s.conn.Close(); err != nil {
		return fmt.Errorf("close clickhouse: %w", err)
	}
	return nil
}

// Ping checks that ClickHouse answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.conn.Ping(ctx); err != nil {
		return fmt.Errorf("ping clickhouse: %w", err)
	}
	return nil
}

// Insert writes rows in one batch that names its columns. It first fills
// the owner of lifecycle rows whose event does not carry it (everything after
// key.created), from the batch itself or from the key's earlier rows, so that
// a search by owner finds a key's whole history. Inserting the same rows
// again is harmless to every read that follows the table's rules (see
// createAuditLog). The error is a wrapped infrastructure error; on error
// nothing may be assumed about what was stored, and the caller retries.
func (s *Store) Insert(ctx context.Context, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	if err := s.fillOwners(ctx, rows); err != nil {
		return err
	}
	batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+Table+" ("+columns+")")
	if err != nil {
		return fmt.Errorf("insert %d rows: %w", len(rows), err)
	}
	// Abort releases the connection when Append or Send fails; after a
	// successful Send it is a no-op.
	defer func() { _ = batch.Abort() }()
	for n, i := range sortedOrder(rows) {
		r := &rows[i]
		perms := r.Permissions
		if perms == nil {
			perms = []string{}
		}
		t := r.Time.UTC()
		if err := batch.Append(
			r.EventID, t, uint64(t.UnixMilli()), r.Stream, r.Seq, r.Type, r.Kind, r.Action, r.Outcome, r.Actor,
			r.KeyID, r.Owner, perms, r.SourceIP, r.UserAgent, r.RequestID, r.Service, r.TokenHash,
			r.Name, r.Comments, r.Reason, r.SchemaVersion, r.PrevHash, r.Hash, r.Raw, r.Quarantine,
		); err != nil {
			return fmt.Errorf("insert event %s: %w", r.EventID, err)
		}
		if (n+1)%insertBlockRows == 0 && n+1 < len(rows) {
			if err := batch.Flush(); err != nil {
				return fmt.Errorf("insert %d rows: %w", len(rows), err)
			}
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert %d rows: %w", len(rows), err)
	}
	return nil
}

// fillOwners sets Owner on key lifecycle rows that lack it. The cache is
// not locked across the ClickHouse query, so the streams' sinks do not wait
// for each other's look-ups.
func (s *Store) fillOwners(ctx context.Context, rows []Row) error {
	var missing []any
	seen := map[string]bool{}
	s.mu.Lock()
	for i := range rows {
		r := &rows[i]
		if r.KeyID == "" || r.Quarantine != "" {
			// A quarantined row's owner is what its writer claims.
			continue
		}
		if r.Owner != "" {
			if r.Kind == domain.KindKey || r.Kind == domain.KindUsage {
				s.rememberOwner(r.KeyID, r.Owner)
			}
			continue
		}
		if r.Kind != domain.KindKey {
			continue
		}
		if _, ok := s.owners[r.KeyID]; !ok && !seen[r.KeyID] {
			seen[r.KeyID] = true
			missing = append(missing, r.KeyID)
		}
	}
	s.mu.Unlock()
	found := map[string]string{}
	if len(missing) > 0 {
		// key_id leads the sorting key, so this reads a few granules
		// per key, not the table.
		q, err := s.conn.Query(ctx, `SELECT key_id, any(owner) FROM `+Table+
			` WHERE key_id IN ? AND owner != '' AND quarantine = '' GROUP BY key_id`, clickhouse.GroupSet{Value: missing})
		if err != nil {
			return fmt.Errorf("look up key owners: %w", err)
		}
		defer q.Close()
		for q.Next() {
			var id, owner string
			if err := q.Scan(&id, &owner); err != nil {
				return fmt.Errorf("look up key owners: %w", err)
			}
			found[id] = owner
		}
		if err := q.Err(); err != nil {
			return fmt.Errorf("look up key owners: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, owner := range found {
		s.rememberOwner(id, owner)
	}
	for i := range rows {
		r := &rows[i]
		if r.Owner == "" && r.Kind == domain.KindKey {
			r.Owner = s.owners[r.KeyID]
		}
	}
	return nil
}

// rememberOwner must be called with mu held.
func (s *Store) rememberOwner(keyID, owner string) {
	if len(s.owners) >= maxCachedOwners {
		s.owners = map[string]string{}
	}
	s.owners[keyID] = owner
}

// selectRow is the column list that scanRow reads.
const selectRow = `SELECT event_id, time_ms, stream, seq, type, kind, action, outcome, actor, ` +
	`key_id, owner, permissions, source_ip, user_agent, request_id, service, token_hash, ` +
	`name, comments, reason, schema_version, prev_hash, hash, raw, quarantine FROM ` + Table

func scanRow(rows driver.Rows) (Row, error) {
	var r Row
	var ms uint64
	err := rows.Scan(&r.EventID, &ms, &r.Stream, &r.Seq, &r.Type, &r.Kind, &r.Action, &r.Outcome, &r.Actor,
		&r.KeyID, &r.Owner, &r.Permissions, &r.SourceIP, &r.UserAgent, &r.RequestID, &r.Service, &r.TokenHash,
		&r.Name, &r.Comments, &r.Reason, &r.SchemaVersion, &r.PrevHash, &r.Hash, &r.Raw, &r.Quarantine)
	if err != nil {
		return Row{}, err
	}
	r.Time = time.UnixMilli(int64(ms)).UTC()
	if len(r.Permissions) == 0 {
		r.Permissions = nil
	}
	return r, nil
}

// Event returns the row of one event. It returns ENOTFOUND when the log has
// no such event (yet).
func (s *Store) Event(ctx context.Context, eventID string) (Row, error) {
	rows, err := s.conn.Query(ctx, selectRow+` FINAL WHERE event_id = ? LIMIT 1`, eventID)
	if err != nil {
		return Row{}, fmt.Errorf("read event %s: %w", eventID, err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return Row{}, fmt.Errorf("read event %s: %w", eventID, err)
		}
		return Row{}, domain.Errorf(domain.ENOTFOUND, "event_not_found", "event %s is not in the log", eventID)
	}
	r, err := scanRow(rows)
	if err != nil {
		return Row{}, fmt.Errorf("read event %s: %w", eventID, err)
	}
	return r, nil
}

// KeyEvents returns every event of one key, oldest first, each once.
func (s *Store) KeyEvents(ctx context.Context, keyID string) ([]Row, error) {
	rows, err := s.conn.Query(ctx, selectRow+` FINAL WHERE key_id = ? ORDER BY time_ms, event_id`, keyID)
	if err != nil {
		return nil, fmt.Errorf("read events of %s: %w", keyID, err)
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return nil, fmt.Errorf("read events of %s: %w", keyID, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read events of %s: %w", keyID, err)
	}
	return out, nil
}

// CountEvents returns how many distinct events the log holds, however many
// copies of each are stored before merges collapse them.
func (s *Store) CountEvents(ctx context.Context) (uint64, error) {
	var n uint64
	if err := s.conn.QueryRow(ctx, `SELECT uniqExact(event_id) FROM `+Table).Scan(&n); err != nil {
		return 0, fmt.Errorf("count events: %w", err)
	}
	return n, nil
}

// minLevel passes on only records at or above its level.
type minLevel struct {
	slog.Handler
	level slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(as), h.level}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.level}
}

// insertBlockRows is how many rows one block of an insert holds. An insert
// of a large batch sends it as several blocks of one INSERT: the driver
// then reuses its column buffers from block to block instead of growing
// them to the whole batch, and the server squashes the blocks back into
// one part (min_insert_block_size_rows), so the table gets no more parts.
const insertBlockRows = 512

// sortedOrder returns the indexes of rows in the table's sorting order
// (key_id, time to the second, event_id). ClickHouse sorts every inserted
// block by it before writing a part, unless the block is sorted already;
// sorting indexes here costs a fraction of permuting every column there.
// An order that did not match would only make the server sort.
func sortedOrder(rows []Row) []int32 {
	order := make([]int32, len(rows))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int {
		x, y := &rows[a], &rows[b]
		return cmp.Or(strings.Compare(x.KeyID, y.KeyID), cmp.Compare(x.Time.Unix(), y.Time.Unix()), strings.Compare(x.EventID, y.EventID))
	})
	return order
}
