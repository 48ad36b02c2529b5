package domain

import (
	"bytes"
	"strconv"
)

// A pack is many usage events stored as one JetStream message, so that a
// group commit of concurrent verifications costs one stored message, one
// fsync and one signature. Each event keeps its own id, hash and encoding:
// the message body is the events' stored encodings, one per line (an
// encoded envelope never contains a newline), and every reader splits it
// back into the same events, each of which is a leaf of the notary's tree,
// a row of the audit log and an event of every projection.
const (
	// HdrEvents marks a packed message and says how many events it holds.
	HdrEvents = "Keyledger-Events"
	// PackSubject is the subject packed usage messages are stored under.
	PackSubject = "keyledger.usage.packed"
)

// Pack joins the stored encodings of events into one message body.
func Pack(events [][]byte) []byte {
	n := len(events)
	for _, e := range events {
		n += len(e)
	}
	b := make([]byte, 0, n)
	for i, e := range events {
		if i > 0 {
			b = append(b, '\n')
		}
		b = append(b, e...)
	}
	return b
}

// Unpack returns the events of a stored message: the body itself when
// count (its HdrEvents header) is empty, otherwise the body's lines, which
// must be count non-empty events. The slices share data's memory.
func Unpack(count string, data []byte) ([][]byte, error) {
	if count == "" {
		return [][]byte{data}, nil
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 {
		return nil, Errorf(EINVALID, "bad_pack", "%s header %q is not a count of events", HdrEvents, count)
	}
	if got := bytes.Count(data, []byte{'\n'}) + 1; got != n {
		return nil, Errorf(EINVALID, "bad_pack", "packed message holds %d lines, its %s header says %d", got, HdrEvents, n)
	}
	out := make([][]byte, 0, n)
	for len(data) > 0 || len(out) < n {
		line, rest, _ := bytes.Cut(data, []byte{'\n'})
		if len(line) == 0 {
			return nil, Errorf(EINVALID, "bad_pack", "packed message has an empty event at position %d", len(out))
		}
		out = append(out, line)
		data = rest
	}
	return out, nil
}
