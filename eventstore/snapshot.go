package eventstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
)

// metaSeq is the object metadata key holding the sequence a snapshot was
// taken at.
const metaSeq = "keyledger-seq"

// SnapshotStore keeps projection snapshots in a JetStream object store
// bucket, so that a node rebuilds from the last snapshot and the tail of the
// log without keeping state of its own. Snapshots are derived data: saving
// one replaces the previous snapshot of that name.
type SnapshotStore struct {
	obs jetstream.ObjectStore
}

// SaveSnapshot stores data as the snapshot name, taken after the event at
// stream sequence seq.
func (s *SnapshotStore) SaveSnapshot(ctx context.Context, name string, seq uint64, data []byte) error {
	meta := jetstream.ObjectMeta{
		Name:     name,
		Metadata: map[string]string{metaSeq: strconv.FormatUint(seq, 10)},
	}
	if _, err := s.obs.Put(ctx, meta, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("save snapshot %s: %w", name, err)
	}
	return nil
}

// LoadSnapshot returns the latest snapshot name and the sequence it was
// taken at; found is false when there is none.
func (s *SnapshotStore) LoadSnapshot(ctx context.Context, name string) (seq uint64, data []byte, found bool, err error) {
	res, err := s.obs.Get(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return 0, nil, false, nil
	}
	if err != nil {
		return 0, nil, false, fmt.Errorf("load snapshot %s: %w", name, err)
	}
	defer res.Close()
	info, err := res.Info()
	if err != nil {
		return 0, nil, false, fmt.Errorf("load snapshot %s: %w", name, err)
	}
	seq, err = strconv.ParseUint(info.Metadata[metaSeq], 10, 64)
	if err != nil {
		return 0, nil, false, fmt.Errorf("load snapshot %s: bad sequence %q", name, info.Metadata[metaSeq])
	}
	// ReadAll also verifies the object's digest.
	if data, err = io.ReadAll(res); err != nil {
		return 0, nil, false, fmt.Errorf("load snapshot %s: %w", name, err)
	}
	return seq, data, true, nil
}
