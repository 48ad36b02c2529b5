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
	binary.BigEndian.PutUint32(sum[:], checksum(buf[:n]))
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
	if !decodeBase32(sum[:], in[TokenLen-checksumChars:]) {
		return Token{}, ErrMalformedToken
	}
	if binary.BigEndian.Uint32(sum[:]) != checksum(body) {
		return Token{}, ErrMalformedToken
	}
	var t Token
	rest := body[len(TokenPrefix):]
	if !decodeBase32(t.KeyID[:], rest[:keyIDChars]) || !decodeBase32(t.Secret[:], rest[keyIDChars:]) {
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

var crcTable = crc32.MakeTable(crc32.IEEE)

// checksum is the CRC32 (IEEE) of p, computed here rather than by
// hash/crc32: its assembly makes every buffer handed to it escape to the
// heap, which would cost the verification path two allocations.
func checksum(p []byte) uint32 {
	crc := ^uint32(0)
	for _, b := range p {
		crc = crcTable[byte(crc)^b] ^ crc>>8
	}
	return ^crc
}

// b32Values maps each byte to its value in the token alphabet, or 0xff.
var b32Values = func() (v [256]byte) {
	for i := range v {
		v[i] = 0xff
	}
	for i, c := range "abcdefghijklmnopqrstuvwxyz234567" {
		v[c] = byte(i)
	}
	return v
}()

// decodeBase32 decodes unpadded base32 src into exactly len(dst) bytes,
// without allocating (encoding/base32's Decode copies its input on every
// call, and this runs on every verification). It reports false for a byte
// outside the alphabet or a length that does not match dst; trailing bits
// are left to the caller's canonical check.
func decodeBase32(dst, src []byte) bool {
	if len(src) != (len(dst)*8+4)/5 {
		return false
	}
	var acc uint64
	bits, n := 0, 0
	for _, c := range src {
		v := b32Values[c]
		if v == 0xff {
			return false
		}
		acc = acc<<5 | uint64(v)
		bits += 5
		if bits >= 8 {
			bits -= 8
			if n < len(dst) {
				dst[n] = byte(acc >> bits)
				n++
			}
		}
	}
	return n == len(dst)
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
	if len(hash) != 2*sha256.Size {
		return false
	}
	// Decoded by hand: converting the string for hex.Decode would
	// allocate on every verification.
	var want [sha256.Size]byte
	for i := range want {
		hi, ok1 := fromHex(hash[2*i])
		lo, ok2 := fromHex(hash[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		want[i] = hi<<4 | lo
	}
	return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
}

func fromHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// HashToken returns the hex SHA-256 of a presented token string, used to
// correlate repeated denied attempts without storing the token.
func HashToken(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
