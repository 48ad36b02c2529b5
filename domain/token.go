package domain

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"strings"

	"github.com/google/uuid"
)

// Token format, version 1:
//
//	klk_ <key id: 26 chars> <secret: 32 chars> <checksum: 7 chars>
//
// All three parts use lowercase unpadded base32 (RFC 4648 alphabet), so a
// token is one "word" that double-click selects and that secret scanners can
// match by its prefix and fixed length. The key id is the key's UUID (16
// bytes), the secret is 20 random bytes (160 bits) and the checksum is the
// CRC32 (IEEE) of everything before it, as GitHub's tokens do, so a typo or a
// truncated token is rejected before any lookup.
const (
	TokenPrefix = "klk_"
	SecretBytes = 20

	keyIDChars    = 26
	secretChars   = 32
	checksumChars = 7
	// TokenLen is the length of every token.
	TokenLen = len(TokenPrefix) + keyIDChars + secretChars + checksumChars
)

var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Secret is the random part of a token. It exists only in the create and
// rotate responses; only its hash is stored.
type Secret [SecretBytes]byte

// Token is a parsed token.
type Token struct {
	KeyID  uuid.UUID
	Secret Secret
}

// FormatToken returns the token string for a key id and a secret.
func FormatToken(keyID uuid.UUID, secret Secret) string {
	var buf [TokenLen]byte
	encodeToken(&buf, keyID, secret)
	return string(buf[:])
}

// encodeToken writes a token into buf without allocating: the verification
// path re-encodes every presented token to check it is canonical.
func encodeToken(buf *[TokenLen]byte, keyID uuid.UUID, secret Secret) {
	n := copy(buf[:], TokenPrefix)
	b32.Encode(buf[n:n+keyIDChars], keyID[:])
	n += keyIDChars
	b32.Encode(buf[n:n+secretChars], secret[:])
	n += secretChars
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc32.ChecksumIEEE(buf[:n]))
	b32.Encode(buf[n:], sum[:])
}

// ErrMalformedToken is returned for every token that fails to parse; the
// reason is deliberately not more specific.
var ErrMalformedToken = Errorf(EUNAUTHORIZED, OutcomeMalformed, "malformed token")

// ParseToken checks the token's shape and checksum and returns its parts.
// It performs no lookup and does not allocate.
func ParseToken(s string) (Token, error) {
	if len(s) != TokenLen || !strings.HasPrefix(s, TokenPrefix) {
		return Token{}, ErrMalformedToken
	}
	var in [TokenLen]byte
	copy(in[:], s)
	body := in[:TokenLen-checksumChars]
	var sum [4]byte
	if n, err := b32.Decode(sum[:], in[TokenLen-checksumChars:]); err != nil || n != 4 {
		return Token{}, ErrMalformedToken
	}
	if binary.BigEndian.Uint32(sum[:]) != crc32.ChecksumIEEE(body) {
		return Token{}, ErrMalformedToken
	}
	var t Token
	rest := body[len(TokenPrefix):]
	if n, err := b32.Decode(t.KeyID[:], rest[:keyIDChars]); err != nil || n != 16 {
		return Token{}, ErrMalformedToken
	}
	if n, err := b32.Decode(t.Secret[:], rest[keyIDChars:]); err != nil || n != SecretBytes {
		return Token{}, ErrMalformedToken
	}
	// Base32 of 16 and 20 bytes leaves unused trailing bits; reject tokens
	// whose encoding is not canonical so each key has exactly one spelling.
	var canon [TokenLen]byte
	encodeToken(&canon, t.KeyID, t.Secret)
	if canon != in {
		return Token{}, ErrMalformedToken
	}
	return t, nil
}

// HashSecret returns the hex SHA-256 of a secret: the only form in which a
// secret is ever stored or published. A secret has 160 bits of entropy, so a
// fast hash is enough; no password stretching is needed.
func HashSecret(s Secret) string {
	sum := sha256.Sum256(s[:])
	return hex.EncodeToString(sum[:])
}

// SecretMatches compares a secret against a stored hash in constant time.
func SecretMatches(s Secret, hash string) bool {
	sum := sha256.Sum256(s[:])
	var want [sha256.Size]byte
	if n, err := hex.Decode(want[:], []byte(hash)); err != nil || n != sha256.Size {
		return false
	}
	return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
}

// HashToken returns the hex SHA-256 of a presented token string, used to
// correlate repeated denied attempts without storing the token.
func HashToken(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
