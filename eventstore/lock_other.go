//go:build !unix

package eventstore

import "errors"

// ErrDataDirInUse means another process already has the data dir open.
var ErrDataDirInUse = errors.New("data dir is in use by another process")

// lockDataDir does nothing where flock is unavailable.
func lockDataDir(string) (func(), error) { return func() {}, nil }
