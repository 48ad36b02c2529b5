package console

import (
	"time"

	"github.com/keyledger/keyledger/api/view"
	"github.com/keyledger/keyledger/domain"
)

// The console reads the API's JSON into these types: it is a client of
// the API like any other (and it cannot import package api, which mounts
// it).

// key is a key as the API shows it, with the token of a creation or
// rotation answer.
type key = view.CreatedKey

type keyPage struct {
	Keys       []key  `json:"keys"`
	NextCursor string `json:"next_cursor"`
}

type principal = view.PrincipalView

type me struct {
	Principal principal `json:"principal"`
	Key       key       `json:"key"`
}

// can reports whether the session may use perm at all: its key and its
// principal must both carry it, as domain.Actor.Can rules.
func (m me) can(perm string) bool {
	return domain.Covers(m.Key.Permissions, perm) && domain.Covers(m.Principal.Permissions, perm)
}

// canOn reports whether the session may use perm on k: its own key with
// perm, another principal's with perm's ".any" form.
func (m me) canOn(k key, perm string) bool {
	if k.Owner == m.Principal.ID {
		return m.can(perm)
	}
	return m.can(domain.PermKeyViewAny) && m.can(perm+".any")
}

type role struct {
	Name        string   `json:"name"`
	Permissions []string `json:"permissions"`
	Description string   `json:"description"`
	BuiltIn     bool     `json:"built_in"`
}

type logEntry struct {
	EventID     string    `json:"event_id"`
	Time        time.Time `json:"time"`
	Type        string    `json:"type"`
	Action      string    `json:"action"`
	Outcome     string    `json:"outcome"`
	Actor       string    `json:"actor"`
	KeyID       string    `json:"key_id"`
	Owner       string    `json:"owner"`
	Permissions []string  `json:"permissions"`
	SourceIP    string    `json:"source_ip"`
	UserAgent   string    `json:"user_agent"`
	Name        string    `json:"name"`
	Reason      string    `json:"reason"`
	Seq         uint64    `json:"seq"`
}

type logPage struct {
	Events     []logEntry `json:"events"`
	NextCursor string     `json:"next_cursor"`
}

type alert struct {
	EventID  string    `json:"event_id"`
	Time     time.Time `json:"time"`
	Rule     string    `json:"rule"`
	Severity string    `json:"severity"`
	Summary  string    `json:"summary"`
	KeyIDs   []string  `json:"key_ids"`
	Sources  []string  `json:"source_ips"`
	Count    int       `json:"count"`
	Query    string    `json:"query"`
}

type alertPage struct {
	Alerts     []alert `json:"alerts"`
	NextCursor string  `json:"next_cursor"`
}

type event struct {
	ID    string         `json:"id"`
	Type  string         `json:"type"`
	Time  time.Time      `json:"time"`
	Actor string         `json:"actor"`
	Data  map[string]any `json:"data"`
	Seq   uint64         `json:"seq"`
	Hash  string         `json:"hash"`
}

type checkpoint struct {
	Stream    string    `json:"stream"`
	Size      uint64    `json:"size"`
	Root      string    `json:"root"`
	At        time.Time `json:"at"`
	KeyID     string    `json:"key_id"`
	Signature string    `json:"signature"`
}

type publicKey struct {
	Algorithm string `json:"algorithm"`
	KeyID     string `json:"key_id"`
	PublicKey string `json:"public_key"`
}
