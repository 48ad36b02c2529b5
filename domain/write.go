package domain

// Write is one aggregate's share of a command: its new events, and the
// version (the stream sequence of its last event, 0 for a new aggregate)
// they were decided on. A command's writes are stored all or nothing.
type Write struct {
	Expected uint64
	Events   []Envelope
}
