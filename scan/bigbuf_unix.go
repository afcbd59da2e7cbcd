//go:build unix

package scan

import "syscall"

// bigBuffer maps n bytes of anonymous memory, outside the Go heap, and
// returns them with the function that unmaps them: the memory of a big
// whole-file scan goes back to the system when the file is done instead of
// waiting for the garbage collector (and growing the heap it paces on).
func bigBuffer(n int) ([]byte, func()) {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		b := make([]byte, n)
		return b, func() {}
	}
	return b, func() { syscall.Munmap(b) }
}
