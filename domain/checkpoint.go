package domain

import (
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// TypeCheckpointPublished is the type of a signed tree head of one stream.
const TypeCheckpointPublished = "checkpoint.published"

// StreamCheckpoints holds checkpoints, apart from the streams they cover.
const StreamCheckpoints = "CHECKPOINTS"

// KindCheckpoint is the subject token of checkpoints.
const KindCheckpoint = "checkpoints"

// CheckpointPublished is a signed statement of an RFC 6962 Merkle tree over
// the first Size messages of Stream, whose leaves are the messages' stored
// bytes. Each checkpoint extends the previous one of its stream.
type CheckpointPublished struct {
	Stream string    `json:"stream"`
	Size   uint64    `json:"size"`
	Root   string    `json:"root"` // hex
	At     time.Time `json:"at"`
	KeyID  string    `json:"key_id"`    // hex SHA-256 prefix of the public key
	Sig    string    `json:"signature"` // hex Ed25519 over SignedBytes
}

// EventType implements Event.
func (CheckpointPublished) EventType() string { return TypeCheckpointPublished }

func init() {
	eventFactories[TypeCheckpointPublished] = func() any { return new(CheckpointPublished) }
}

// SignedBytes is what a checkpoint's signature covers: every field but the
// signature, one a line after a versioned header, so that no two
// checkpoints share signed bytes.
func (c CheckpointPublished) SignedBytes() []byte {
	return []byte("keyledger-checkpoint-v1\n" + c.Stream + "\n" + strconv.FormatUint(c.Size, 10) + "\n" +
		c.Root + "\n" + strconv.FormatInt(c.At.UnixMilli(), 10) + "\n" + c.KeyID + "\n")
}

// Verify checks the checkpoint's signature.
func (c CheckpointPublished) Verify(pub ed25519.PublicKey) error {
	sig, err := hex.DecodeString(c.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, c.SignedBytes(), sig) {
		return fmt.Errorf("checkpoint of %s at size %d: signature does not verify", c.Stream, c.Size)
	}
	return nil
}
