package libvirt

import (
	"context"
	"testing"

	"github.com/vmscope/vmscope/vmi/qemu/libvirt/libvirttest"
)

// BenchmarkAttach is the attach-to-first-answer time of a libvirt domain:
// Dial (connect, look up, state, pid check), one QMP query-status through
// the pass-through, Close.
func BenchmarkAttach(b *testing.B) {
	d := libvirttest.Start(b, libvirttest.Config{})
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		ep, err := Dial(ctx, d.Spec())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ep.Monitor.Execute(ctx, "query-status", nil); err != nil {
			b.Fatal(err)
		}
		if err := ep.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStub is opening and closing a GDB stub on demand.
func BenchmarkStub(b *testing.B) {
	d := libvirttest.Start(b, libvirttest.Config{})
	ctx := context.Background()
	ep, err := Dial(ctx, d.Spec())
	if err != nil {
		b.Fatal(err)
	}
	defer ep.Close()
	b.ResetTimer()
	for b.Loop() {
		_, closeStub, err := ep.OpenGDB(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := closeStub(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
