package chlog

// SortedOrder is sortedOrder, for the tests of the chlog_test package.
var SortedOrder = sortedOrder

// WaitErr is how the server's process ended (cmd.Wait's error), once Done
// is closed.
func (s *LocalServer) WaitErr() error { return s.waitErr }
