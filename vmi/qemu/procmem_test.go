package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/memtest"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// procGuest is a fixture guest booted for the process-memory tests, with
// a QMP socket for vmscope (QMP) besides the test's own (G).
type procGuest struct {
	G      *guesttest.Guest
	QMP    string // vmscope's socket
	Events string // a socket to watch events on
}

// bootProc boots the fixture guest with memMiB of RAM and extra QEMU
// arguments (a machine type, a memory backend).
func bootProc(t testing.TB, memMiB int, extra ...string) *procGuest {
	t.Helper()
	if testing.Short() {
		fixture.Missing(t, "-short: the live tests boot a guest")
	}
	fixture.Tool(t, "qemu-system-x86_64")
	kernel, initrd := guesttest.Path(t, "vmlinuz"), guesttest.Path(t, "initrd.gz")
	sock, err := os.MkdirTemp("", "vmscope-proc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	pg := &procGuest{QMP: filepath.Join(sock, "qmp.sock"), Events: filepath.Join(sock, "ev.sock")}
	extra = append(extra, "-qmp", "unix:"+pg.QMP+",server=on,wait=off", "-qmp", "unix:"+pg.Events+",server=on,wait=off")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g, err := guesttest.Boot(ctx, guesttest.Config{Kernel: kernel, Initrd: initrd, MemMiB: memMiB, Dir: t.TempDir(), Extra: extra})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Quit() })
	pg.G = g
	return pg
}

// memEqual reads every range of a and b (which must list the same ranges)
// in large chunks and fails on the first difference. It returns the bytes
// compared and the number of non-zero pages at or above 4 GiB.
func memEqual(t *testing.T, a, b vmi.Memory) (total uint64, high int) {
	t.Helper()
	ra, rb := a.Ranges(), b.Ranges()
	if fmt.Sprint(ra) != fmt.Sprint(rb) {
		t.Fatalf("ranges differ:\nlive %v\ndump %v", ra, rb)
	}
	const chunk = 32 << 20
	x, y := make([]byte, chunk), make([]byte, chunk)
	for _, r := range ra {
		for off := uint64(0); off < r.Size; off += chunk {
			n := int(min(chunk, r.Size-off))
			pa := int64(r.Start) + int64(off)
			if _, err := a.ReadAt(x[:n], pa); err != nil {
				t.Fatalf("live read %#x: %v", pa, err)
			}
			if _, err := b.ReadAt(y[:n], pa); err != nil {
				t.Fatalf("dump read %#x: %v", pa, err)
			}
			if !bytes.Equal(x[:n], y[:n]) {
				for i := 0; i < n; i += 4096 {
					if !bytes.Equal(x[i:min(i+4096, n)], y[i:min(i+4096, n)]) {
						t.Fatalf("guest-physical page %#x differs between the live process and the dump", pa+int64(i))
					}
				}
			}
			if pa >= 1<<32 {
				for i := 0; i < n; i += 4096 {
					if !allZero(x[i:min(i+4096, n)]) {
						high++
					}
				}
			}
			total += uint64(n)
		}
	}
	return total, high
}

// TestProcMemoryEqualsDump reads the whole RAM of a paused guest from the
// QEMU process and compares it with a dump-guest-memory ELF of the same
// moment, on anonymous RAM, on a shared memfd backing, and on 4.5 GiB
// guests of machine types pc and q35 (RAM split below 4 GiB, the rest
// above it): the ranges and every byte. The big guests must have non-zero
// pages above 4 GiB (the kernel allocates top-down), so the high mapping
// is tested on real data.
func TestProcMemoryEqualsDump(t *testing.T) {
	cases := []struct {
		name    string
		mem     int
		extra   []string
		lowEnd  uint64 // where RAM below 4 GiB ends; 0: no RAM above 4 GiB
		written bool
	}{
		{name: "anonymous", mem: 512},
		{name: "memfd-shared", mem: 512, extra: []string{"-object", "memory-backend-memfd,id=m0,size=512M,share=on", "-machine", "memory-backend=m0"}},
		{name: "pc-4.5G", mem: 4608, extra: []string{"-machine", "pc"}, lowEnd: 0xc0000000},
		{name: "q35-4.5G", mem: 4608, extra: []string{"-machine", "q35"}, lowEnd: 0x80000000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pg := bootProc(t, c.mem, c.extra...)
			ctx := ctxT(t)
			if _, err := pg.G.QMP(ctx, "stop", nil); err != nil {
				t.Fatal(err)
			}
			q, err := DialQMP(ctx, pg.QMP)
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			pm, err := OpenProcMemory(ctx, q, pg.G.PID())
			if err != nil {
				t.Fatal(err)
			}
			defer pm.Close()
			if pm.Verified < 3 || pm.NonZero == 0 {
				t.Errorf("verified %d pages at attach, %d of them non-zero", pm.Verified, pm.NonZero)
			}
			shared := len(pm.files) > 0
			if shared != (c.name == "memfd-shared") {
				t.Errorf("shared backing %v (%s)", shared, pm.Method())
			}
			dump := filepath.Join(t.TempDir(), "g.elf")
			if err := pg.G.Dump(ctx, dump, "elf"); err != nil {
				t.Fatal(err)
			}
			snap, err := snapshot.Open(dump)
			if err != nil {
				t.Fatal(err)
			}
			defer snap.Close()
			total, high := memEqual(t, pm, snap)
			t.Logf("%d MiB equal; %d non-zero pages above 4 GiB; %s", total>>20, high, pm.Method())
			if total < uint64(c.mem-1)<<20 {
				t.Errorf("compared %d bytes of a %d MiB guest", total, c.mem)
			}
			// the VGA window is not RAM
			if _, err := pm.ReadAt(make([]byte, 8), 0xa0000); !errors.Is(err, vmi.ErrNotPresent) {
				t.Errorf("read of 0xa0000: %v, want not present", err)
			}
			if c.lowEnd != 0 {
				// RAM above 4 GiB is the rest (on pc the BIOS ROM just
				// below 4 GiB merges with it into one range)
				hi := pm.Ranges()[len(pm.Ranges())-1]
				if !hi.Contains(1<<32) || hi.End() != vmi.PA(1<<32+uint64(c.mem)<<20-c.lowEnd) {
					t.Errorf("highest range %v, want one up to %#x", hi, 1<<32+uint64(c.mem)<<20-c.lowEnd)
				}
				var low bool
				for _, r := range pm.Ranges() {
					low = low || r.End() == vmi.PA(c.lowEnd)
				}
				if !low {
					t.Errorf("no range ends at %#x: %v", c.lowEnd, pm.Ranges())
				}
				if high == 0 {
					t.Error("no non-zero page above 4 GiB: the high mapping is not tested on data")
				}
			}
		})
	}
}

// allocated is how much of the file f holds on the host (st_blocks).
func allocated(t *testing.T, f *os.File) int64 {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestProcMemorySharedHoles reads all the RAM of a paused guest on a
// shared memfd backing and checks that the backing did not grow: pages the
// guest never touched are holes, read as zeros without being allocated.
func TestProcMemorySharedHoles(t *testing.T) {
	pg := bootProc(t, 512, "-object", "memory-backend-memfd,id=m0,size=512M,share=on", "-machine", "memory-backend=m0")
	ctx := ctxT(t)
	if _, err := pg.G.QMP(ctx, "stop", nil); err != nil {
		t.Fatal(err)
	}
	q, err := DialQMP(ctx, pg.QMP)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	pm, err := OpenProcMemory(ctx, q, pg.G.PID())
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	if len(pm.files) != 1 {
		t.Fatalf("%d shared backings, want 1", len(pm.files))
	}
	before := allocated(t, pm.files[0])
	if before >= 500<<20 {
		t.Fatalf("the backing holds %d bytes already: no hole to test", before)
	}
	buf := make([]byte, 64<<20)
	var zeroPages int
	for _, r := range pm.Ranges() {
		for off := uint64(0); off < r.Size; off += uint64(len(buf)) {
			n := int(min(uint64(len(buf)), r.Size-off))
			if _, err := pm.ReadAt(buf[:n], int64(r.Start)+int64(off)); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i += 4096 {
				if allZero(buf[i:min(i+4096, n)]) {
					zeroPages++
				}
			}
		}
	}
	after := allocated(t, pm.files[0])
	t.Logf("backing: %d MiB allocated before, %d after reading all RAM; %d zero pages", before>>20, after>>20, zeroPages)
	if after != before {
		t.Errorf("reading the guest's RAM allocated %d bytes of its shared backing", after-before)
	}
	if int64(zeroPages)*4096 < (512<<20)-before-(1<<20) {
		t.Errorf("%d zero pages, but %d bytes are holes", zeroPages, (512<<20)-before)
	}
}

// TestProcMemoryRefuses checks the errors of a process that cannot be the
// guest's: no such process, and a process that is not this QMP's QEMU.
func TestProcMemoryRefuses(t *testing.T) {
	pg := bootProc(t, 256)
	ctx := ctxT(t)
	// a pid that is not the QMP socket's peer
	if ep, err := Dial(ctx, fmt.Sprintf("qemu:pid=%d,qmp=unix:%s", os.Getpid(), pg.QMP)); err == nil || !strings.Contains(err.Error(), "is not the QEMU behind") {
		t.Errorf("wrong pid: %v, want it refused", err)
		if err == nil {
			ep.Close()
		}
	}
	q, err := DialQMP(ctx, pg.QMP)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := OpenProcMemory(ctx, q, os.Getpid()); !errors.Is(err, ErrLayout) {
		t.Errorf("this test's own pid: %v, want ErrLayout", err)
	}
	// a monitor that is not a QMP socket (no peer pid to check): the
	// segments are not mapped in this process
	if _, err := OpenProcMemory(ctx, pg.G, os.Getpid()); !errors.Is(err, ErrLayout) {
		t.Errorf("this test's own pid through another monitor: %v, want ErrLayout", err)
	}
	if _, err := OpenProcMemory(ctx, pg.G, 1<<30); err == nil || !strings.Contains(err.Error(), "no process") {
		t.Errorf("pid 2^30: %v, want no process", err)
	}
}

// stopEvents is the number of STOP events QEMU sent on q since the last
// call (a query-status first collects the queued ones).
func stopEvents(t *testing.T, ctx context.Context, q *QMP) int {
	t.Helper()
	if _, err := q.Status(ctx); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range q.Events() {
		if e.Name == "STOP" {
			n++
		}
	}
	return n
}

// TestProcessGuest opens a guest with a qemu: spec (the pid from the QMP
// socket's peer credentials, a stub given but not attached), finds its
// kernel from process memory and HMP registers without the guest ever
// stopping (no STOP event), checks the memory and registers against a
// dump while paused through QMP, then arms a breakpoint (which attaches the
// stub on demand), takes a hit, and closes: the guest runs, no journal.
func TestProcessGuest(t *testing.T) {
	pg := bootProc(t, 512)
	ctx := ctxT(t)
	ev, err := DialQMP(ctx, pg.Events)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	stopEvents(t, ctx, ev)
	spec := "qemu:qmp=unix:" + pg.QMP + ",gdb=" + pg.G.GDBAddr
	g, err := Open(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			g.Close(context.Background())
		}
	}()
	if g.Process() == nil || g.Process().PID() != pg.G.PID() || g.Stub() != "" {
		t.Fatalf("process %v, stub %q", g.Process(), g.Stub())
	}
	cpus, err := g.CPUs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cpus) != 1 || !cpus[0].LongMode() || cpus[0].CR3 == 0 {
		t.Fatalf("cpus %+v", cpus)
	}
	k, err := linux.Discover(ctx, g, linux.WithCPUs(cpus))
	if err != nil {
		t.Fatal(err)
	}
	if n := stopEvents(t, ctx, ev); n != 0 || g.Stub() != "" || !g.Running() {
		t.Errorf("reading a guest through its process: %d STOP events, stub %q, running %v", n, g.Stub(), g.Running())
	}
	// paused through QMP: memory and registers agree with a dump
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := ev.Status(ctx); st.Status != "paused" {
		t.Fatalf("after Pause: %+v", st)
	}
	dump := filepath.Join(t.TempDir(), "g.elf")
	if err := pg.G.Dump(ctx, dump, "elf"); err != nil {
		t.Fatal(err)
	}
	snap, err := snapshot.Open(dump)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	image := vmi.Range{Start: k.TextPA, Size: uint64(k.ImageEnd - k.Text)}
	rep := memtest.Agree(t, g, snap, memtest.Names("process", "dump"), memtest.Context(ctx), memtest.Region("kernel image", image))
	if rep.CPUs != 1 {
		t.Errorf("compared %d vCPUs", rep.CPUs)
	}
	if err := g.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := ev.Status(ctx); st.Status != "running" {
		t.Fatalf("after Resume: %+v", st)
	}
	// a trap attaches the stub
	idle, ok := k.Symbols.Addr("native_safe_halt")
	if !ok {
		t.Fatal("no native_safe_halt")
	}
	tctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	hits := 0
	err = vmi.Trace(tctx, g, []vmi.Trap{vmi.Breakpoint(idle)}, func(_ context.Context, h vmi.Hit) (bool, error) {
		hits++
		if vmi.VA(h.Regs.RIP) != idle {
			t.Errorf("hit at %#x, want %v", h.Regs.RIP, idle)
		}
		return false, nil
	})
	if err != nil || hits != 1 {
		t.Fatalf("trace: %v, %d hits", err, hits)
	}
	if g.Stub() != pg.G.GDBAddr {
		t.Errorf("stub %q after a trap, want %s", g.Stub(), pg.G.GDBAddr)
	}
	journal := g.JournalPath()
	closed = true
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st, _ := ev.Status(ctx); st.Status != "running" {
		t.Errorf("after Close: %+v", st)
	}
	if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal %s after Close: %v", journal, err)
	}
}

// TestProcessGuestPausedStaysPaused: a guest found paused is read through
// its process (the pid from a pid file) and left paused; Pause and Resume
// do not run it; a trap without a stub is refused with ErrNoStub.
func TestProcessGuestPausedStaysPaused(t *testing.T) {
	pg := bootProc(t, 256)
	ctx := ctxT(t)
	if _, err := pg.G.QMP(ctx, "stop", nil); err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(t.TempDir(), "qemu.pid")
	if err := os.WriteFile(pidfile, []byte(fmt.Sprintln(pg.G.PID())), 0o600); err != nil {
		t.Fatal(err)
	}
	g, err := Open(ctx, "qemu:pidfile="+pidfile+",qmp=unix:"+pg.QMP)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.ReadAt(make([]byte, 1<<20), 0x100000); err != nil {
		t.Fatal(err)
	}
	if err := g.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Insert(ctx, vmi.Breakpoint(0xffffffff81000000)); !errors.Is(err, ErrNoStub) {
		t.Errorf("a trap without a stub: %v, want ErrNoStub", err)
	}
	if err := g.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := pg.G.QMP(ctx, "query-status", nil)
	if err != nil || !strings.Contains(string(st), `"paused"`) {
		t.Errorf("guest found paused: %s %v, want paused", st, err)
	}
}
