package cfi_test

import (
	"context"
	"testing"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/linux"
)

// BenchmarkCheck runs every check, the text comparison included, on the
// guest fixture's KASLR dump (512 MiB guest; kernel discovery not timed).
func BenchmarkCheck(b *testing.B) {
	img, err := linux.ReadVmlinux(fixture.GuestPath(b, "vmlinuz"))
	if err != nil {
		b.Fatal(err)
	}
	s, k := openKernel(b, fixture.GuestPath(b, "kaslr", "guest.elf"))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rep, err := cfi.Check(context.Background(), k, cfi.WithCPUs(s.CPUs()), cfi.WithKernelImage(img))
		if err != nil || len(rep.Findings) != 0 {
			b.Fatal(err, rep.Findings)
		}
	}
}
