package domain_test

import (
	"crypto/ed25519"
	"encoding/hex"
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
)

// TestCheckpointSignedBytes pins what a checkpoint signature covers:
// changing it would make every stored checkpoint fail verification.
func TestCheckpointSignedBytes(t *testing.T) {
	c := domain.CheckpointPublished{Stream: "USAGE", Size: 42, Root: "ab01", At: time.UnixMilli(1700000000123).UTC(), KeyID: "0011223344556677"}
	want := "keyledger-checkpoint-v1\nUSAGE\n42\nab01\n1700000000123\n0011223344556677\n"
	if got := string(c.SignedBytes()); got != want {
		t.Fatalf("signed bytes = %q, want %q", got, want)
	}
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	c.Sig = "00"
	if err := c.Verify(priv.Public().(ed25519.PublicKey)); err == nil {
		t.Fatal("a bad signature verifies")
	}
	c.Sig = hexSig(priv, c)
	if err := c.Verify(priv.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
	c.KeyID = "ffffffffffffffff" // the key id is signed too
	if err := c.Verify(priv.Public().(ed25519.PublicKey)); err == nil {
		t.Fatal("a checkpoint with another key id verifies")
	}
}

func hexSig(priv ed25519.PrivateKey, c domain.CheckpointPublished) string {
	return hex.EncodeToString(ed25519.Sign(priv, c.SignedBytes()))
}
