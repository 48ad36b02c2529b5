package chlog

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// Query selects events of the audit log. Every field a caller sets is
// passed to ClickHouse as a bound parameter; only column names and
// operators chosen here are written into the SQL text.
type Query struct {
	// KeyIDs selects the events of these keys ("select keys, search in logs").
	KeyIDs []string
	// Visible, when not nil, limits the result to these keys: a key-admin
	// sees the log of its own keys only. An empty non-nil slice sees nothing.
	Visible  []string
	Owner    string
	Actor    string
	Actions  []string // "created", "revoked", "denied", ...
	Outcomes []string // outcome or reason codes: "REVOKED", "INVALID_SECRET", ...
	Types    []string // event types: "key.revoked", "alert.raised", ...
	Streams  []string // the streams that stored the events: "ALERTS", ...
	Names    []string // names (an alert's rule)
	// Source is an IP address or a CIDR prefix.
	Source    netip.Prefix
	HasSource bool
	From, To  time.Time // [From, To); zero means unbounded
	Text      string    // free text over name, comments and reason
	Limit     int       // 0 means no limit (exports)
	// Quarantined selects the rows of quarantined messages, and only
	// them; by default a search sees the accepted history only.
	Quarantined bool
	After       *Cursor // the last row of the previous page
}

// Cursor is a position in the newest-first order: (time, event id). Events
// that arrive later are newer and so sort before any cursor already handed
// out, which keeps pages free of gaps and repeats while the log grows.
type Cursor struct {
	TimeMS  uint64
	EventID string
}

// String encodes a cursor opaquely for clients.
func (c Cursor) String() string {
	b := binary.BigEndian.AppendUint64([]byte{1}, c.TimeMS)
	return base64.RawURLEncoding.EncodeToString(append(b, c.EventID...))
}

// ParseCursor decodes a cursor from String. Errors: EINVALID (invalid_cursor).
func ParseCursor(s string) (Cursor, error) {
	bad := domain.Errorf(domain.EINVALID, "invalid_cursor", "invalid cursor")
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 9 || len(b) > 9+64 || b[0] != 1 {
		return Cursor{}, bad
	}
	c := Cursor{TimeMS: binary.BigEndian.Uint64(b[1:9]), EventID: string(b[9:])}
	for _, r := range c.EventID {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r == '-' || r == ':' || r >= 'A' && r <= 'Z') {
			return Cursor{}, bad
		}
	}
	return c, nil
}

// filter builds the condition that selects q's rows, and its arguments;
// the condition is empty when q selects every row.
func (q Query) filter() (string, []any) {
	var conds []string
	var args []any
	add := func(cond string, a ...any) {
		conds = append(conds, cond)
		args = append(args, a...)
	}
	// in binds each value on its own: 18.16 does not accept an array
	// bound into IN (...), and one placeholder per value keeps the
	// primary-key index usable on both releases.
	in := func(col string, vs []string) {
		marks := strings.TrimSuffix(strings.Repeat("?, ", len(vs)), ", ")
		a := make([]any, len(vs))
		for i, v := range vs {
			a[i] = v
		}
		add(col+" IN ("+marks+")", a...)
	}
	if q.Quarantined {
		add("quarantine != ''")
	} else {
		add("quarantine = ''")
	}
	if q.Visible != nil {
		if len(q.Visible) == 0 {
			add("0")
		} else {
			in("key_id", q.Visible)
		}
	}
	if len(q.KeyIDs) > 0 {
		in("key_id", q.KeyIDs)
	}
	if q.Owner != "" {
		add("owner = ?", q.Owner)
	}
	if q.Actor != "" {
		add("actor = ?", q.Actor)
	}
	if len(q.Actions) > 0 {
		in("action", q.Actions)
	}
	if len(q.Outcomes) > 0 {
		in("outcome", q.Outcomes)
	}
	if len(q.Types) > 0 {
		in("type", q.Types)
	}
	if len(q.Streams) > 0 {
		in("stream", q.Streams)
	}
	if len(q.Names) > 0 {
		in("name", q.Names)
	}
	if q.HasSource {
		p := q.Source.Masked()
		if p.Addr().Is4() {
			lo := p.Addr().As4()
			hi := lastAddr(p).As4()
			add("position(source_ip, ':') = 0 AND source_ip != '' AND IPv4StringToNum(source_ip) BETWEEN ? AND ?",
				binary.BigEndian.Uint32(lo[:]), binary.BigEndian.Uint32(hi[:]))
		} else {
			lo := p.Addr().As16()
			hi := lastAddr(p).As16()
			add("position(source_ip, ':') > 0 AND hex(IPv6StringToNum(source_ip)) BETWEEN ? AND ?",
				strings.ToUpper(hex.EncodeToString(lo[:])), strings.ToUpper(hex.EncodeToString(hi[:])))
		}
	}
	if !q.From.IsZero() {
		add("time >= ? AND time_ms >= ?", q.From.UTC().Truncate(time.Second), uint64(q.From.UnixMilli()))
	}
	if !q.To.IsZero() {
		add("time <= ? AND time_ms < ?", q.To.UTC(), uint64(q.To.UnixMilli()))
	}
	if q.Text != "" {
		add("(positionCaseInsensitiveUTF8(name, ?) > 0 OR positionCaseInsensitiveUTF8(comments, ?) > 0 OR positionCaseInsensitiveUTF8(reason, ?) > 0)",
			q.Text, q.Text, q.Text)
	}
	if q.After != nil {
		add("(time_ms < ? OR (time_ms = ? AND event_id < ?))", q.After.TimeMS, q.After.TimeMS, q.After.EventID)
	}
	return strings.Join(conds, " AND "), args
}

// lastAddr returns the highest address of a prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr()
	b := a.AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}

// Search calls fn with every event matching q, newest first, each event
// once however many copies of it the table holds. Rows stream from
// ClickHouse: an export of any size is never held in memory. It returns
// the cursor of the next page when q.Limit was reached.
func (s *Store) Search(ctx context.Context, q Query, fn func(Row) error) (*Cursor, error) {
	cond, args := q.filter()
	const newest = ` ORDER BY time_ms DESC, event_id DESC LIMIT 1 BY event_id`
	var sql string
	switch {
	case q.Limit > 0:
		// A page is found in two passes within one query. The inner
		// one picks the page's events reading only the sorting key,
		// time_ms and the filtered columns; the outer one reads every
		// column of just those events, whose (key_id, time, event_id)
		// set the primary-key index turns into the few granules that
		// hold them. One pass read every column of every granule the
		// filter touches (raw alone is ~500 bytes a row) to return
		// 100 rows. The outer pass applies the filter again, so the
		// copies of an event it may choose from are the ones the one
		// pass chose from, and the page is the same.
		where := ""
		if cond != "" {
			where = " WHERE " + cond
		}
		sql = selectRow + ` PREWHERE (key_id, time, event_id) IN (SELECT key_id, time, event_id FROM ` + Table +
			where + newest + ` LIMIT ?)` + where + newest + ` LIMIT ?`
		filterArgs := args
		args = make([]any, 0, 2*len(filterArgs)+2)
		args = append(append(args, filterArgs...), q.Limit)
		args = append(append(args, filterArgs...), q.Limit)
	case cond != "":
		// An export returns every row the filter selects. PREWHERE
		// reads the filtered columns first and the others only where
		// a row passes, which 18.16 does not choose by itself for
		// conditions on the primary key.
		sql = selectRow + ` PREWHERE ` + cond + newest
	default:
		sql = selectRow + newest
	}
	rows, err := s.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("search log: %w", err)
	}
	defer rows.Close()
	n := 0
	var last Row
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			return nil, fmt.Errorf("search log: %w", err)
		}
		if err := fn(r); err != nil {
			return nil, err
		}
		last = r
		n++
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("search log: %w", err)
	}
	if q.Limit > 0 && n == q.Limit {
		return &Cursor{TimeMS: uint64(last.Time.UnixMilli()), EventID: last.EventID}, nil
	}
	return nil, nil
}

// UsedFrom reports whether a key was used successfully from an address in
// p during [since, before). The alert rules ask it about a key's habits.
func (s *Store) UsedFrom(ctx context.Context, keyID string, p netip.Prefix, since, before time.Time) (bool, error) {
	found := false
	_, err := s.Search(ctx, Query{
		KeyIDs: []string{keyID}, Actions: []string{"used"}, Source: p, HasSource: true,
		From: since, To: before, Limit: 1,
	}, func(Row) error { found = true; return nil })
	if err != nil {
		return false, err
	}
	return found, nil
}

// LastUsedBefore returns a key's last successful use before t.
func (s *Store) LastUsedBefore(ctx context.Context, keyID string, before time.Time) (time.Time, bool, error) {
	var last time.Time
	found := false
	_, err := s.Search(ctx, Query{KeyIDs: []string{keyID}, Actions: []string{"used"}, To: before, Limit: 1},
		func(r Row) error { last, found = r.Time, true; return nil })
	if err != nil {
		return time.Time{}, false, err
	}
	return last, found, nil
}

// Walk calls fn with every event of the log once, in stream and sequence
// order, with the stored bytes it was copied from: what the audit verifier
// compares with JetStream.
func (s *Store) Walk(ctx context.Context, fn func(eventID, stream string, seq uint64, raw string) error) error {
	rows, err := s.conn.Query(ctx, `SELECT event_id, stream, seq, raw FROM `+Table+
		` ORDER BY stream, seq, event_id LIMIT 1 BY event_id`)
	if err != nil {
		return fmt.Errorf("walk log: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, stream, raw string
		var seq uint64
		if err := rows.Scan(&id, &stream, &seq, &raw); err != nil {
			return fmt.Errorf("walk log: %w", err)
		}
		if err := fn(id, stream, seq, raw); err != nil {
			return err
		}
	}
	return rows.Err()
}
