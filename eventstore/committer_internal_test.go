package eventstore

// This is the one internal test: it hands the committer a round of
// requests directly, because how callers' requests group into rounds is a
// matter of timing that the external tests cannot force.

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestCommitRoundMapsEverySequence(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, Config{DataDir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := s.appends

	// 20 aggregates, some appending two events, in one round; one of them
	// expects a version its aggregate is not at, which spoils the batch.
	var round []*commitReq
	for i := range 20 {
		agg := aggregateFilter("keys", "k"+strconv.Itoa(i))
		n := 1 + i%2
		var msgs []*nats.Msg
		for j := range n {
			m := nats.NewMsg("keyledger.keys.k" + strconv.Itoa(i) + ".key.updated")
			m.Data, _ = json.Marshal(map[string]int{"agg": i, "n": j})
			m.Header.Set(hdrMsgID, "m"+strconv.Itoa(i)+"-"+strconv.Itoa(j))
			msgs = append(msgs, m)
		}
		expected := "0"
		if i == 7 {
			expected = "99"
		}
		msgs[0].Header.Set(hdrExpectedSubjSeq, expected)
		msgs[0].Header.Set(hdrExpectedSubjSeqFor, agg)
		round = append(round, &commitReq{ctx: ctx, msgs: msgs, aggs: []string{agg}, atomic: n > 1, done: make(chan commitRes, 1)})
	}

	check := func(spoiled bool) {
		t.Helper()
		for i, r := range round {
			res := <-r.done
			if spoiled && i == 7 {
				if apiCode(res.err) != codeWrongLastSeq {
					t.Errorf("request 7: %v, want wrong last sequence", res.err)
				}
				continue
			}
			if res.err != nil {
				t.Fatalf("request %d: %v", i, res.err)
			}
			m, found, err := s.leaderGet(ctx, "KEYS", msgGetRequest{Seq: res.ack.Seq})
			if err != nil || !found {
				t.Fatalf("request %d: get seq %d: %v", i, res.ack.Seq, err)
			}
			var body map[string]int
			_ = json.Unmarshal(m.Data, &body)
			if body["agg"] != i || body["n"] != len(r.msgs)-1 {
				t.Errorf("request %d got seq %d holding %v", i, res.ack.Seq, body)
			}
		}
	}

	c.pending.Add(30) // As submit would; every reply takes its share off.
	c.commit(round)
	check(true)

	// The same round without the culprit goes through as one batch.
	round[7].msgs[0].Header.Set(hdrExpectedSubjSeq, "0")
	for i, r := range round {
		for j, m := range r.msgs {
			m.Header.Set(hdrMsgID, "again"+strconv.Itoa(i)+"-"+strconv.Itoa(j))
		}
		if i != 7 {
			// Their aggregates now hold the first round's events.
			r.msgs[0].Header.Set(hdrExpectedSubjSeq, strconv.FormatUint(lastOn(t, s, r.aggs[0]), 10))
		}
	}
	before := c.batches.Load()
	c.pending.Add(30)
	c.commit(round)
	check(false)
	if got := c.batches.Load() - before; got != 1 {
		t.Errorf("clean round took %d round trips, want 1", got)
	}
	if got := c.pending.Load(); got != 0 {
		t.Errorf("pending = %d after both rounds", got)
	}
}

func lastOn(t *testing.T, s *Store, filter string) uint64 {
	t.Helper()
	m, found, err := s.leaderGet(context.Background(), "KEYS", msgGetRequest{LastFor: filter})
	if err != nil || !found {
		t.Fatalf("last on %s: %v", filter, err)
	}
	return m.Sequence
}
