package libvirt

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/qemu/libvirt/libvirttest"
)

// attachProcess is the process-memory path: qemu.OpenEndpoint on the
// domain's Endpoint from Dial, memory from the domain's QEMU process
// (ep.PID), registers and the pause through the monitor pass-through. No
// GDB stub is opened: the QEMU process has no listening TCP socket after
// the attach and before the detach (the check first sees a stub opened on
// demand and closed).
func attachProcess(t *testing.T, ctx context.Context, ep qemu.Endpoint) attached {
	if ep.PID == 0 {
		t.Fatalf("endpoint without a pid: %+v", ep)
	}
	// the check sees a stub: one opened on demand and closed again
	addr, closeStub, err := ep.OpenGDB(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l, err := libvirttest.ListeningTCP(ep.PID)
	if err != nil || len(l) != 1 {
		t.Errorf("with a stub on %s, QEMU listens on TCP %v (%v): want one", addr, l, err)
	}
	if err := closeStub(ctx); err != nil {
		t.Fatal(err)
	}
	g, err := qemu.OpenEndpoint(ctx, ep, qemu.WithJournal(filepath.Join(t.TempDir(), "journal")))
	if err != nil {
		t.Fatal(err)
	}
	noStub(t, ep.PID)
	return attached{live: g, close: func(ctx context.Context) error {
		noStub(t, ep.PID)
		return g.Close(ctx)
	}}
}

// noStub fails the test when process pid listens on a TCP socket (a GDB
// stub is QEMU's only TCP listener here).
func noStub(t testing.TB, pid int) {
	t.Helper()
	l, err := libvirttest.ListeningTCP(pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) > 0 {
		t.Errorf("QEMU (pid %d) listens on TCP %v: a GDB stub is open on the process path", pid, l)
	}
}
