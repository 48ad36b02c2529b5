package domain

import (
	"strconv"
	"unicode/utf8"
)

// The data of a usage event is encoded once per verification, on the hot
// path of every verifying service. KeyUsed and KeyDenied are fixed structs
// of strings and integers, so they are appended by hand instead of through
// encoding/json's reflection. The bytes are hashed and signed and must never
// change: the appenders produce exactly what encoding/json.Marshal produces
// for the same value (field order, omitempty, HTML-safe escaping), which
// TestUsageAppendMatchesMarshal and FuzzUsageAppend check.

// dataAppender is an event that encodes its own data.
type dataAppender interface {
	appendData(b []byte) []byte
}

func (e KeyUsed) appendData(b []byte) []byte {
	b = append(b, `{"code":`...)
	b = appendJSONString(b, e.Code)
	b = appendOptString(b, `,"owner":`, e.Owner)
	b = appendOptString(b, `,"permission":`, e.Permission)
	b = appendOptString(b, `,"service":`, e.Service)
	b = appendOptString(b, `,"caller_key":`, e.CallerKey)
	b = appendOptString(b, `,"caller_ip":`, e.CallerIP)
	b = e.ServiceUsage.appendFields(b)
	return append(b, '}')
}

func (e KeyDenied) appendData(b []byte) []byte {
	b = append(b, `{"code":`...)
	b = appendJSONString(b, e.Code)
	b = appendOptString(b, `,"owner":`, e.Owner)
	b = appendOptString(b, `,"permission":`, e.Permission)
	b = appendOptString(b, `,"service":`, e.Service)
	b = appendOptString(b, `,"token_hash":`, e.TokenHash)
	b = appendOptString(b, `,"caller_key":`, e.CallerKey)
	b = appendOptString(b, `,"caller_ip":`, e.CallerIP)
	b = e.ServiceUsage.appendFields(b)
	return append(b, '}')
}

// appendFields appends the embedded struct's fields, which encoding/json
// promotes into the outer object after the outer fields.
func (u ServiceUsage) appendFields(b []byte) []byte {
	b = appendOptString(b, `,"record_id":`, u.RecordID)
	b = appendOptString(b, `,"endpoint":`, u.Endpoint)
	if u.HTTPStatus != 0 {
		b = append(b, `,"http_status":`...)
		b = strconv.AppendInt(b, int64(u.HTTPStatus), 10)
	}
	if u.Units != 0 {
		b = append(b, `,"units":`...)
		b = strconv.AppendInt(b, u.Units, 10)
	}
	return b
}

// appendOptString appends an omitempty string field with its key.
func appendOptString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	b = append(b, key...)
	return appendJSONString(b, s)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way encoding/json.Marshal
// does: '"' and '\\' escaped, control characters as \b \f \n \r \t or
// \u00XX, '<' '>' '&' as \u003c \u003e \u0026, U+2028 and U+2029 as
// \u2028 and \u2029, and each byte of invalid UTF-8 as \ufffd.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
