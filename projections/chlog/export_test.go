package chlog

// SortedOrder is sortedOrder, for the tests of the chlog_test package.
var SortedOrder = sortedOrder
