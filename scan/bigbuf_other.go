//go:build !unix

package scan

// bigBuffer allocates n bytes; the garbage collector reclaims them.
func bigBuffer(n int) ([]byte, func()) { return make([]byte, n), func() {} }
