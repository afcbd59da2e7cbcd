package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/memtest"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// The tests share one boot of the fixture guest (TCG, one vCPU, KASLR
// on), the plain guest of sharedProc: QEMU serves one client per QMP
// socket, and that boot has one for the Guest under test (QMPPath)
// besides the test's own (the guesttest connection).
var (
	liveOnce sync.Once
	booted   *liveGuest
)

type liveGuest struct {
	GDBAddr, QMPPath string
	pg               *procGuest

	symOnce sync.Once
	syms    *linux.Symbols
	symErr  error
}

func (lg *liveGuest) QMP(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return lg.pg.G.QMP(ctx, cmd, args)
}

func (lg *liveGuest) HMP(ctx context.Context, line string) (string, error) {
	return lg.pg.G.HMP(ctx, line)
}

func TestMain(m *testing.M) {
	// Journals of the guests under test go to a folder of their own.
	dir, err := os.MkdirTemp("", "vmscope-qemu-journal")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Setenv("XDG_RUNTIME_DIR", dir)
	code := m.Run()
	os.RemoveAll(dir)
	if shared != nil {
		shared.quit()
		os.RemoveAll(filepath.Dir(shared.G.Console))
	}
	os.Exit(code)
}

// live returns the shared running guest, booting it on first use.
func live(t *testing.T) *liveGuest {
	t.Helper()
	pg := sharedProc(t)
	liveOnce.Do(func() { booted = &liveGuest{GDBAddr: pg.G.GDBAddr, QMPPath: pg.QMP, pg: pg} })
	return booted
}

func specOf(lg *liveGuest) string { return "gdb://" + lg.GDBAddr + ",qmp=unix:" + lg.QMPPath }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func openLive(t *testing.T) (*liveGuest, *Guest) {
	lg := live(t)
	g, err := Open(ctxT(t), specOf(lg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Close(context.Background()); err != nil {
			t.Errorf("close: %v", err)
		}
		assertRunning(t, lg)
	})
	return lg, g
}

func assertRunning(t *testing.T, lg *liveGuest) {
	t.Helper()
	r, err := lg.QMP(context.Background(), "query-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(r, []byte(`"status": "running"`)) && !bytes.Contains(r, []byte(`"status":"running"`)) {
		t.Errorf("guest not running after close: %s", r)
	}
}

// TestLiveMemoryMatchesDump pauses the guest, has QEMU dump its memory,
// and checks with the memory conformance kit that the paused guest read
// through the stub agrees with the dump: the memory map, the bytes of
// sampled pages and odd reads, the holes and the vCPUs' registers.
func TestLiveMemoryMatchesDump(t *testing.T) {
	lg, g := openLive(t)
	ctx := ctxT(t)
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	dump := filepath.Join(t.TempDir(), "live.elf")
	if err := g.QMP().DumpGuestMemory(ctx, dump, "elf"); err != nil {
		t.Fatal(err)
	}
	snap, err := snapshot.Open(dump)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	// the kernel image, where discovery on the dump finds it
	k, err := linux.Discover(ctx, snap, linux.WithCPUs(snap.CPUs()))
	if err != nil {
		t.Fatal(err)
	}
	image := vmi.Range{Start: k.TextPA, Size: uint64(k.ImageEnd - k.Text)}
	// the conformance kit: the same ranges, bytes (a stride, random
	// pages, the page tables' root, the kernel image), odd reads, holes
	// and vCPU registers
	rep := memtest.Agree(t, g, snap, memtest.Names("live", "dump"), memtest.Context(ctx), memtest.Region("kernel image", image))
	if rep.Bytes < image.Size {
		t.Errorf("%d bytes compared, the kernel image %v alone is more", rep.Bytes, image)
	}
	a, b := make([]byte, 4096), make([]byte, 4096)
	// throughput, paused: one big read, then small reads
	big := make([]byte, 16<<20)
	start := time.Now()
	if _, err := g.ReadAt(big, 0x100000); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	if _, err := snap.ReadAt(b[:0], 0); err == nil {
		cmp := make([]byte, len(big))
		snap.ReadAt(cmp, 0x100000)
		if !bytes.Equal(cmp, big) {
			t.Error("16 MiB read differs from the dump")
		}
	}
	t.Logf("throughput (paused): %.1f MiB/s (16 MiB in %v, %d-byte packets, window %d)", 16/d.Seconds(), d, g.gdb.readChunk(), pipelineWindow)
	const n = 500
	start = time.Now()
	for i := 0; i < n; i++ {
		g.ReadAt(a[:8], int64(0x100000+i*8))
	}
	t.Logf("small read (8 bytes, paused): %v per read", time.Since(start)/n)
	if err := g.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for i := 0; i < n/5; i++ {
		g.ReadAt(a[:8], int64(0x100000+i*8))
	}
	t.Logf("small read (8 bytes, running: stop, read, continue): %v per read", time.Since(start)/(n/5))
	if !g.Running() {
		t.Error("guest not running after reads of a running guest")
	}
	assertRunning(t, lg)
}

var hmpReg = regexp.MustCompile(`\b(CR3|RIP|EFER|CR0|CR4)=([0-9a-f]+)`)

// TestLiveRegistersMatchHMP compares the stub's registers with HMP's
// "info registers" of the paused guest.
func TestLiveRegistersMatchHMP(t *testing.T) {
	lg, g := openLive(t)
	ctx := ctxT(t)
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	cpus, err := g.CPUs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cpus) != 1 {
		t.Fatalf("%d vCPUs, the fixture has 1", len(cpus))
	}
	out, err := lg.HMP(ctx, "info registers")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{}
	for _, m := range hmpReg.FindAllStringSubmatch(out, -1) {
		want[m[1]], _ = strconv.ParseUint(m[2], 16, 64)
	}
	c := cpus[0]
	got := map[string]uint64{"CR3": c.CR3, "RIP": c.RIP, "EFER": c.EFER, "CR0": c.CR0, "CR4": c.CR4}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: stub %#x, HMP %#x", k, got[k], v)
		}
	}
	if len(want) != 5 || !c.LongMode() || !c.HasEFER {
		t.Errorf("HMP gave %v; long mode %v", want, c.LongMode())
	}
	if err := g.Resume(ctx); err != nil {
		t.Fatal(err)
	}
}

// idleSymbol is the kernel function the fixture's idle vCPU runs each time
// it wakes up (every few milliseconds under TCG): the hlt of the idle loop
// (QEMU's default CPU has no MWAIT; the cloud kernel halts through
// native_safe_halt).
const idleSymbol = "native_safe_halt"

// kernelAddr pauses the guest and returns the address of idleSymbol,
// taken from the guest's own kallsyms (recovered from its memory once per
// boot). It never skips: whatever the vCPU was running when paused, the
// address is a kernel one the guest runs soon.
func kernelAddr(t *testing.T, ctx context.Context, g *Guest) vmi.VA {
	t.Helper()
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	return live(t).symbol(t, ctx, g, idleSymbol)
}

// symbol returns the address of a kernel symbol of the running guest,
// from its kallsyms as vmi/linux recovers them from memory (with KASLR),
// read through g (the stub takes one client at a time) once per boot.
func (lg *liveGuest) symbol(t *testing.T, ctx context.Context, g *Guest, name string) vmi.VA {
	t.Helper()
	lg.symOnce.Do(func() {
		cpus, err := g.CPUs(ctx)
		if err != nil {
			lg.symErr = err
			return
		}
		k, err := linux.Discover(ctx, g, linux.WithCPUs(cpus))
		if err != nil {
			lg.symErr = err
			return
		}
		lg.syms = k.Symbols
	})
	if lg.symErr != nil {
		t.Fatalf("kernel symbols of the live guest: %v", lg.symErr)
	}
	a, ok := lg.syms.Addr(name)
	if !ok || a < 0xffff800000000000 {
		t.Fatalf("kernel symbol %s: %v %v", name, a, ok)
	}
	return a
}

// xp returns QEMU's own view of the 16 bytes at va (gva2gpa, then xp).
func xp(t *testing.T, ctx context.Context, lg *liveGuest, va vmi.VA) string {
	out, err := lg.HMP(ctx, fmt.Sprintf("gva2gpa %#x", uint64(va)))
	if err != nil {
		t.Fatal(err)
	}
	var pa uint64
	if _, err := fmt.Sscanf(out, "gpa: %x", &pa); err != nil {
		t.Fatalf("gva2gpa: %q", out)
	}
	out, err = lg.HMP(ctx, fmt.Sprintf("xp /16xb %#x", pa))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLiveBreakpoint sets a breakpoint where the kernel will run, waits
// for the hit, checks the vCPU stopped there, and clears it.
func TestLiveBreakpoint(t *testing.T) {
	pktLog := filepath.Join(t.TempDir(), "gdb.log")
	t.Setenv("VMSCOPE_GDB_LOG", pktLog)
	_, g := openLive(t)
	ctx := ctxT(t)
	addr := kernelAddr(t, ctx, g)
	bp := Breakpoint{Kind: SoftwareBreak, Addr: addr}
	if err := g.SetBreakpoint(ctx, bp); err != nil {
		t.Fatal(err)
	}
	if err := g.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-g.Events():
		if ev.Reason != vmi.StopTrap || ev.Access != vmi.Execute || ev.CPU != 0 {
			t.Errorf("stop event %+v", ev)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("breakpoint not hit in 90 s")
	}
	if g.Running() {
		t.Error("running after a breakpoint hit")
	}
	c, err := g.Regs(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if vmi.VA(c.RIP) != addr {
		t.Errorf("stopped at %#x, breakpoint at %v", c.RIP, addr)
	}
	// a single step moves on
	c2, err := g.Step(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if c2.RIP == c.RIP {
		t.Errorf("step stayed at %#x", c.RIP)
	}
	if err := g.ClearBreakpoint(ctx, bp); err != nil {
		t.Fatal(err)
	}
	if len(g.Breakpoints()) != 0 {
		t.Errorf("breakpoints left: %v", g.Breakpoints())
	}
	if err := g.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// VMSCOPE_GDB_LOG has the exchange: the breakpoint set, its stop
	// reply, the step and the removal
	b, err := os.ReadFile(pktLog)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{fmt.Sprintf(`-> "$Z0,%x,1#`, uint64(addr)), `<- "T05thread:01;"`, `-> "$vCont;s:1#`, fmt.Sprintf(`-> "$z0,%x,1#`, uint64(addr))} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("the packet log has no %s", want)
		}
	}
}

// TestLiveCleanupOnCancel arms a breakpoint and a watchpoint, pauses the
// guest, cancels the context in the middle of a long read, closes, and
// checks through QMP and a fresh stub client that the guest runs, its
// memory at the breakpoint is unchanged, physical mode is off and no
// breakpoint or watchpoint is left.
func TestLiveCleanupOnCancel(t *testing.T) {
	lg := live(t)
	bg := ctxT(t)
	ctx, cancel := context.WithCancel(bg)
	g, err := Open(ctx, specOf(lg))
	if err != nil {
		t.Fatal(err)
	}
	addr := kernelAddr(t, ctx, g)
	before := xp(t, bg, lg, addr)
	c, _ := g.Regs(ctx, 0)
	watch := vmi.VA(c.RSP &^ 7)
	for _, bp := range []Breakpoint{{Kind: SoftwareBreak, Addr: addr}, {Kind: HardwareBreak, Addr: addr + 1}, {Kind: WriteWatch, Addr: watch, Size: 8}} {
		if err := g.SetBreakpoint(ctx, bp); err != nil {
			t.Fatal(err)
		}
	}
	time.AfterFunc(300*time.Millisecond, cancel)
	big := make([]byte, 256<<20)
	_, err = g.ReadPhys(ctx, big, 0x100000)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("read of 256 MiB with the context cancelled after 0.3 s: %v", err)
	}
	if err := g.Close(context.WithoutCancel(ctx)); err != nil {
		t.Fatalf("close after cancel: %v", err)
	}
	assertRunning(t, lg)
	checkClean(t, bg, lg, addr, watch)
	if after := xp(t, bg, lg, addr); after != before {
		t.Errorf("memory at the breakpoint changed:\n%s\n%s", before, after)
	}
}

// checkClean attaches a fresh client: removing the breakpoints at addr and
// the watchpoint at watch must fail (none set), and physical mode is off.
func checkClean(t *testing.T, ctx context.Context, lg *liveGuest, addr, watch vmi.VA) {
	t.Helper()
	d, err := DialGDB(ctx, lg.GDBAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := d.Detach(ctx); err != nil {
			t.Error(err)
		}
		d.Close()
		assertRunning(t, lg)
	}()
	for _, c := range []struct {
		k    BreakKind
		a    vmi.VA
		size int
	}{{SoftwareBreak, addr, 1}, {HardwareBreak, addr + 1, 1}, {WriteWatch, watch, 8}} {
		err := d.Remove(ctx, c.k, uint64(c.a), c.size)
		var se *StubError
		if !errors.As(err, &se) {
			t.Errorf("stale %s at %v: remove answered %v", c.k, c.a, err)
		}
	}
	if on, err := d.PhysicalMode(ctx); err != nil || on {
		t.Errorf("physical-memory mode left on (%v, %v)", on, err)
	}
}

// TestLiveTrace runs vmi.Trace, the step-and-re-arm loop, on the guest
// with a breakpoint on the idle function and a write watchpoint on
// jiffies_64 (the timer tick writes it), until both have been hit twice.
// Every breakpoint hit must stop at the breakpoint, every watchpoint hit
// name a write of jiffies_64, and each hit match exactly its trap; the
// loop must report each pass once (steps past the trap). Close then
// leaves the guest running with no trap.
func TestLiveTrace(t *testing.T) {
	lg, g := openLive(t)
	ctx := ctxT(t)
	idle := kernelAddr(t, ctx, g)
	jiffies := lg.symbol(t, ctx, g, "jiffies_64")
	traps := []vmi.Trap{vmi.Breakpoint(idle), vmi.Watchpoint(jiffies, 8, vmi.Write)}
	seen := map[vmi.Access]int{}
	tctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	err := vmi.Trace(tctx, g, traps, func(_ context.Context, h vmi.Hit) (bool, error) {
		if h.Stop.Reason != vmi.StopTrap || h.Stop.CPU != 0 || len(h.Traps) != 1 {
			t.Errorf("hit %+v", h)
			return false, nil
		}
		switch h.Stop.Access {
		case vmi.Execute:
			if vmi.VA(h.Regs.RIP) != idle || h.Traps[0] != traps[0] {
				t.Errorf("breakpoint hit at %#x, traps %v", h.Regs.RIP, h.Traps)
			}
		case vmi.Write:
			if h.Stop.Addr != jiffies || h.Traps[0] != traps[1] {
				t.Errorf("watchpoint hit at %v, traps %v", h.Stop.Addr, h.Traps)
			}
		default:
			t.Errorf("hit with access %v", h.Stop.Access)
		}
		seen[h.Stop.Access]++
		return seen[vmi.Execute] < 2 || seen[vmi.Write] < 2, nil
	})
	if err != nil {
		t.Fatalf("trace: %v (hits %v)", err, seen)
	}
	t.Logf("hits: %d breakpoint, %d watchpoint", seen[vmi.Execute], seen[vmi.Write])
	if len(g.Breakpoints()) != 2 {
		t.Errorf("traps armed after the trace: %v", g.Breakpoints())
	}
	if err := g.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertRunning(t, lg)
	checkClean(t, ctx, lg, idle, jiffies)
}
