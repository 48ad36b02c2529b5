//go:build !unix

package eventstore

// fsSize cannot tell the size of a file system here: the server keeps its
// own limit.
func fsSize(string) int64 { return 0 }
