package notary

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/keyledger/keyledger/domain"
)

// The KEYS chains are the last hash of every key and principal, which the
// next event of that aggregate must name as its prev_hash. They are held
// in memory, 32 bytes under a 16-byte digest of the aggregate (well under
// what the key-state projection holds per key), in chainShards shards by
// the digest's first byte (a million aggregates are 750 kB a shard). A
// shard is stored in parts of chainPartEntries aggregates, each under the
// server's largest message, and the state names how many parts each shard
// has when any has more than one. A saved state stores the shards that changed
// since the one before, each in the slot of its two it is not in now,
// before the state that names the new slots: a crash between the two
// leaves the older state naming shards that still match it. So a save
// costs at most chainShards writes, however many events it covers, where
// a write per aggregate would cost a fsync each on the node's server.
const chainShards = 64

const chainEntrySize = 16 + 32

// chainPartEntries is how many aggregates one stored part of a chain shard
// holds: 480 kB, under NATS's 1 MB default largest message, with room for
// the message's headers. A variable so that tests can make parts small.
var chainPartEntries = 10_000

type aggDigest [16]byte

func (d aggDigest) shard() int { return int(d[0]) % chainShards }

func digestOf(env domain.Envelope) aggDigest {
	sum := sha256.Sum256([]byte(env.Kind() + "/" + env.KeyID))
	return aggDigest(sum[:16])
}

// chainSet is the chains of one fold generation of KEYS.
type chainSet struct {
	shards [chainShards]map[aggDigest][32]byte
	dirty  [chainShards]bool
	// slots is where each shard is stored as of the last saved state
	// ('0', '1', or '-' for not stored); uncertain when a save failed
	// after it may have stored its state. Both are used under the
	// notary's cpMu.
	slots [chainShards]byte
	// parts is how many parts each shard is stored in as of the last
	// saved state (0 for one, or not stored).
	parts     [chainShards]int
	uncertain bool
}

func newChainSet() *chainSet {
	c := &chainSet{}
	for i := range c.shards {
		c.shards[i] = map[aggDigest][32]byte{}
		c.slots[i] = '-'
	}
	return c
}

// check compares a KEYS event's prev_hash with its aggregate's last hash
// and, when it extends it, makes the event's hash the last one. The
// event's hash is known to recompute. It returns why not, or "".
func (c *chainSet) check(env domain.Envelope) string {
	d := digestOf(env)
	shard := c.shards[d.shard()]
	last, ok := shard[d]
	var prev string
	if ok {
		prev = hex.EncodeToString(last[:])
	}
	if env.PrevHash != prev {
		return fmt.Sprintf("event %s of %s: prev_hash %q, but the previous event of that %s hashes to %q", env.ID, env.KeyID, env.PrevHash, strings.TrimSuffix(env.Kind(), "s"), prev)
	}
	var h [32]byte
	if _, err := hex.Decode(h[:], []byte(env.Hash)); err != nil || len(env.Hash) != 64 {
		return fmt.Sprintf("event %s: hash %q is not a SHA-256", env.ID, env.Hash)
	}
	shard[d] = h
	c.dirty[d.shard()] = true
	return ""
}

// chainWrite is one shard to store with a saved state.
type chainWrite struct {
	shard int
	slot  byte
	value []byte
	// parts is value split into what is stored, set by place.
	parts [][]byte
}

// capture encodes the shards changed since the last save and clears their
// dirty marks; saved or failed puts them back.
func (c *chainSet) capture() []chainWrite {
	var writes []chainWrite
	for i, d := range c.dirty {
		if !d {
			continue
		}
		v := make([]byte, 0, len(c.shards[i])*chainEntrySize)
		for k, h := range c.shards[i] {
			v = append(append(v, k[:]...), h[:]...)
		}
		writes = append(writes, chainWrite{shard: i, value: v})
		c.dirty[i] = false
	}
	return writes
}

// split returns the parts the shard is stored in, in order.
func (w chainWrite) split() [][]byte {
	size := chainPartEntries * chainEntrySize
	parts := make([][]byte, 0, len(w.value)/size+1)
	for v := w.value; ; v = v[size:] {
		if len(v) <= size {
			return append(parts, v)
		}
		parts = append(parts, v[:size])
	}
}

// place puts each write in the slot its shard is not in as of the stored
// state, and returns the slots and the parts the new state names (parts is
// nil when every shard is in one part, as in states saved before shards
// had parts).
func (c *chainSet) place(writes []chainWrite) (string, []int) {
	slots, parts := c.slots, c.parts
	for i := range writes {
		w := &writes[i]
		w.slot = '0'
		if c.slots[w.shard] == '0' {
			w.slot = '1'
		}
		slots[w.shard] = w.slot
		w.parts = w.split()
		parts[w.shard] = len(w.parts)
	}
	return string(slots[:]), partList(parts)
}

func partList(parts [chainShards]int) []int {
	for _, n := range parts {
		if n > 1 {
			return parts[:]
		}
	}
	return nil
}

// saved records that the state naming slots and parts is stored. failed
// records that it may not be: the shards written for it are written again,
// and until the stored state is read back (resolve) no slot is known free.
func (c *chainSet) saved(slots string, parts []int) {
	copy(c.slots[:], slots)
	c.parts = [chainShards]int{}
	copy(c.parts[:], parts)
	c.uncertain = false
}

func (c *chainSet) failed(writes []chainWrite) {
	for _, w := range writes {
		c.dirty[w.shard] = true
	}
	c.uncertain = true
}

// resolve takes the slots of the state stored, when it is of this
// generation.
func (c *chainSet) resolve(st savedState, gen string) {
	if st.Gen == gen && len(st.ChainSlots) == chainShards {
		copy(c.slots[:], st.ChainSlots)
		c.parts = [chainShards]int{}
		copy(c.parts[:], st.ChainParts)
	}
	c.uncertain = false
}

// load adds a stored part of a shard.
func (c *chainSet) load(shard int, slot byte, v []byte) error {
	if len(v)%chainEntrySize != 0 {
		return fmt.Errorf("chain shard %02x holds %d bytes", shard, len(v))
	}
	for i := 0; i < len(v); i += chainEntrySize {
		var k aggDigest
		var h [32]byte
		copy(k[:], v[i:i+16])
		copy(h[:], v[i+16:i+chainEntrySize])
		if k.shard() != shard {
			return fmt.Errorf("chain shard %02x holds an aggregate of shard %02x", shard, k.shard())
		}
		c.shards[shard][k] = h
	}
	c.slots[shard] = slot
	return nil
}

// redirty marks the shards of writes that were not stored as changed.
func (c *chainSet) redirty(writes []chainWrite) {
	for _, w := range writes {
		c.dirty[w.shard] = true
	}
}
