package notary

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/keyledger/keyledger/projections/chlog"
)

// LogRows walks every row stored in the ClickHouse log, duplicates and
// unmerged parts included (no FINAL, no LIMIT BY): the sink may store an
// event twice, identically, but a tampered second copy must not be hidden
// by deduplication. Each row's columns are compared with the row its raw
// bytes map to, because searches and the API show the columns, not raw: an
// edited name or time must not pass because raw was left alone.
func LogRows(ch *chlog.Store) func(ctx context.Context, fn func(Row) error) error {
	return func(ctx context.Context, fn func(Row) error) error {
		rows, err := ch.Conn().Query(ctx, `SELECT event_id, toUnixTimestamp(time), time_ms, stream, seq, type, kind, action, outcome, actor, `+
			`key_id, owner, permissions, source_ip, user_agent, request_id, service, token_hash, `+
			`name, comments, reason, schema_version, prev_hash, hash, raw FROM `+chlog.Table)
		if err != nil {
			return fmt.Errorf("walk log: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var c chlog.Row
			var secs uint32
			var ms uint64
			if err := rows.Scan(&c.EventID, &secs, &ms, &c.Stream, &c.Seq, &c.Type, &c.Kind, &c.Action, &c.Outcome, &c.Actor,
				&c.KeyID, &c.Owner, &c.Permissions, &c.SourceIP, &c.UserAgent, &c.RequestID, &c.Service, &c.TokenHash,
				&c.Name, &c.Comments, &c.Reason, &c.SchemaVersion, &c.PrevHash, &c.Hash, &c.Raw); err != nil {
				return fmt.Errorf("walk log: %w", err)
			}
			c.Time = time.UnixMilli(int64(ms)).UTC()
			r := Row{EventID: c.EventID, Stream: c.Stream, Seq: c.Seq, Raw: c.Raw}
			want := chlog.RowFromMessage(c.Stream, c.Seq, []byte(c.Raw))
			if col := differingColumn(c, want); col != "" {
				r.Mismatch = col
			} else if int64(secs) != want.Time.Unix() {
				r.Mismatch = "time"
			}
			if err := fn(r); err != nil {
				return err
			}
		}
		return rows.Err()
	}
}

// differingColumn names the first field in which a stored row differs from
// the row its raw bytes map to, or "".
func differingColumn(got, want chlog.Row) string {
	if want.Owner == "" {
		// The sink fills in the owner of a key's later events, which do
		// not carry it, from the key's creation.
		want.Owner = got.Owner
	}
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range g.NumField() {
		a, b := g.Field(i).Interface(), w.Field(i).Interface()
		if as, ok := a.([]string); ok {
			if bs := b.([]string); len(as) == 0 && len(bs) == 0 {
				continue
			}
		}
		if at, ok := a.(time.Time); ok {
			if !at.Equal(b.(time.Time)) {
				return g.Type().Field(i).Name
			}
			continue
		}
		if !reflect.DeepEqual(a, b) {
			return g.Type().Field(i).Name
		}
	}
	return ""
}
