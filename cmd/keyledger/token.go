package main

import (
	"crypto/rand"
	"fmt"
	"io"

	"github.com/google/uuid"
	"github.com/keyledger/keyledger/domain"
)

// runToken is "keyledger token new": a fresh, valid token for
// KEYLEDGER_ROOT_TOKEN in automation. It talks to no server.
func runToken(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || args[0] != "new" {
		if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, tokenUsage)
			return 0
		}
		fmt.Fprint(stderr, "keyledger: usage: keyledger token new\n")
		return 2
	}
	tok, err := newToken()
	if err != nil {
		fmt.Fprintf(stderr, "keyledger: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, tok)
	return 0
}

const tokenUsage = `Usage: keyledger token new

Prints a fresh token (a new key id and 160 random bits of secret) for
KEYLEDGER_ROOT_TOKEN, so automation can bootstrap a ledger with a root token
it already holds:

  KEYLEDGER_ROOT_TOKEN=$(keyledger token new) keyledger serve
`

// newToken returns domain.FormatToken of a new UUIDv7 and a random secret.
func newToken() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("new key id: %w", err)
	}
	var secret domain.Secret
	if _, err := rand.Read(secret[:]); err != nil {
		return "", fmt.Errorf("random secret: %w", err)
	}
	return domain.FormatToken(id, secret), nil
}
