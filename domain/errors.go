// Package domain holds keyledger's pure types and rules: keys, events,
// commands, the Decide/Evolve functions, the token format and permissions.
// It performs no I/O and never reads the clock: time and ids are passed in.
package domain

import (
	"errors"
	"fmt"
)

// Error classes. The HTTP layer maps each to one status code.
const (
	ECONFLICT     = "conflict"
	EINTERNAL     = "internal"
	EINVALID      = "invalid"
	ENOTFOUND     = "not_found"
	EUNAUTHORIZED = "unauthorized"
	EFORBIDDEN    = "forbidden"
	ELIMIT        = "limit_exceeded"
	// EUNAVAILABLE: a dependency cannot take the request now (the event
	// store has no quorum, no space or no connection); retrying later may
	// succeed, and nothing was changed that a retry would repeat.
	EUNAVAILABLE = "unavailable"
)

// Error is keyledger's one error type. Code is the class (one of the E*
// constants); Reason is a stable, finer-grained code clients may switch on
// (for example "key_revoked"); Message is for people.
type Error struct {
	Code    string
	Reason  string
	Message string
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("%s (%s): %s", e.Code, e.Reason, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Errorf returns an *Error of the given class and reason.
func Errorf(code, reason, format string, args ...any) *Error {
	return &Error{Code: code, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the class of err, EINTERNAL for errors that are not an *Error.
func ErrorCode(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorReason returns the stable reason of err, or its class when it has none.
func ErrorReason(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		if e.Reason != "" {
			return e.Reason
		}
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the human-readable message of err; internal errors
// are not exposed.
func ErrorMessage(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
