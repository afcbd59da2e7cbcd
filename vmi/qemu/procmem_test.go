package qemu

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
	sock   string // the sockets' folder
}

// bootProc boots the fixture guest with memMiB of RAM and extra QEMU
// arguments (a machine type, a memory backend) for one test.
func bootProc(t testing.TB, memMiB int, extra ...string) *procGuest {
	t.Helper()
	kernel, initrd := procFixture(t)
	pg, err := startProc(kernel, initrd, t.TempDir(), memMiB, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.quit)
	return pg
}

// The tests that need a plain guest (512 MiB, QEMU's default machine)
// and leave it running share one boot (sharedProc): the live tests of
// guest_test.go, the anonymous-RAM case of TestProcMemoryEqualsDump,
// TestProcMemoryRefuses, TestProcessGuest and
// TestProcessGuestPausedStaysPaused. TestMain quits it.
var (
	sharedOnce sync.Once
	shared     *procGuest
	sharedErr  error
)

// sharedProc returns the shared plain guest, booting it on first use.
func sharedProc(t testing.TB) *procGuest {
	t.Helper()
	kernel, initrd := procFixture(t)
	sharedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vmscope-qemu-test")
		if err != nil {
			sharedErr = err
			return
		}
		if shared, sharedErr = startProc(kernel, initrd, dir, 512); sharedErr != nil {
			os.RemoveAll(dir)
		}
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

// procFixture is the guest fixture's kernel and initramfs; it skips (fails
// under CI=true) without them, without QEMU, or under -short.
func procFixture(t testing.TB) (kernel, initrd string) {
	t.Helper()
	if testing.Short() {
		fixture.Missing(t, "-short: the live tests boot a guest")
	}
	fixture.Tool(t, "qemu-system-x86_64")
	return guesttest.Path(t, "vmlinuz"), guesttest.Path(t, "initrd.gz")
}

// startProc boots the fixture guest, its console in dir; the caller quits
// it.
func startProc(kernel, initrd, dir string, memMiB int, extra ...string) (*procGuest, error) {
	sock, err := os.MkdirTemp("", "vmscope-proc")
	if err != nil {
		return nil, err
	}
	pg := &procGuest{QMP: filepath.Join(sock, "qmp.sock"), Events: filepath.Join(sock, "ev.sock"), sock: sock}
	extra = append(extra, "-qmp", "unix:"+pg.QMP+",server=on,wait=off", "-qmp", "unix:"+pg.Events+",server=on,wait=off")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g, err := guesttest.Boot(ctx, guesttest.Config{Kernel: kernel, Initrd: initrd, MemMiB: memMiB, Dir: dir, Extra: extra})
	if err != nil {
		os.RemoveAll(sock)
		b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		return nil, fmt.Errorf("%v\nconsole (last 2 KiB):\n%s", err, b[max(0, len(b)-2048):])
	}
	pg.G = g
	return pg, nil
}

// quit stops QEMU and removes the sockets' folder.
func (pg *procGuest) quit() {
	pg.G.Quit()
	os.RemoveAll(pg.sock)
}

// resumeAtEnd resumes the shared guest when the test ends, so that the
// next test finds it running.
func resumeAtEnd(t *testing.T, pg *procGuest) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := pg.G.QMP(ctx, "cont", nil); err != nil {
			t.Errorf("resume the shared guest: %v", err)
		}
	})
}

// pausedProcMemory pauses pg and opens its RAM through the process path
// (vmscope's QMP socket); both are closed when the test ends.
func pausedProcMemory(t *testing.T, ctx context.Context, pg *procGuest) *ProcMemory {
	t.Helper()
	if _, err := pg.G.QMP(ctx, "stop", nil); err != nil {
		t.Fatal(err)
	}
	q, err := DialQMP(ctx, pg.QMP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	pm, err := OpenProcMemory(ctx, q, pg.G.PID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pm.Close() })
	return pm
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
			for i := 0; i < n; i += 4096 {
				if pa+int64(i) >= 1<<32 && !allZero(x[i:min(i+4096, n)]) {
					high++
				}
			}
			total += uint64(n)
		}
	}
	return total, high
}

// TestProcMemoryEqualsDump reads the whole RAM of a paused guest from the
// QEMU process and compares it with a dump-guest-memory ELF of the same
// moment, on anonymous RAM, on a shared memfd backing, and on guests of
// machine types pc (3.5 GiB) and q35 (2.75 GiB), the smallest whose RAM
// QEMU splits below 4 GiB and above it: the ranges and every byte. The big guests must have non-zero
// pages above 4 GiB (the kernel allocates top-down), so the high mapping
// is tested on real data.
func TestProcMemoryEqualsDump(t *testing.T) {
	cases := []struct {
		name    string
		mem     int
		extra   []string
		lowEnd  uint64 // where RAM below 4 GiB ends; 0: no RAM above 4 GiB
		hotplug bool   // a 256 MiB DIMM plugged in after boot, a marker written in it
	}{
		{name: "anonymous", mem: 512},
		{name: "memfd-shared", mem: 512, extra: []string{"-object", "memory-backend-memfd,id=m0,size=512M,share=on", "-machine", "memory-backend=m0"}},
		// the smallest guests QEMU 7.2 splits at 4 GiB: pc from 3.5 GiB
		// (3 GiB below, 512 MiB above), q35 from 2.75 GiB (2 GiB below,
		// 768 MiB above)
		{name: "pc-3.5G", mem: 3584, extra: []string{"-machine", "pc"}, lowEnd: 0xc0000000},
		{name: "q35-2.75G", mem: 2816, extra: []string{"-machine", "q35"}, lowEnd: 0x80000000},
		{name: "hotplug-dimm", mem: 512, extra: []string{"-m", "512,slots=2,maxmem=2G"}, hotplug: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var pg *procGuest
			if c.name == "anonymous" {
				pg = sharedProc(t) // the shared plain guest
				resumeAtEnd(t, pg)
			} else {
				pg = bootProc(t, c.mem, c.extra...)
			}
			ctx := ctxT(t)
			var marker []byte
			var markAt vmi.PA
			if c.hotplug {
				markAt, marker = hotplugDIMM(t, ctx, pg)
			}
			pm := pausedProcMemory(t, ctx, pg)
			if pm.Verified < 3 || pm.NonZero == 0 {
				t.Errorf("verified %d pages at attach, %d of them non-zero", pm.Verified, pm.NonZero)
			}
			shared := len(pm.files) > 0
			if shared != (c.name == "memfd-shared") {
				t.Errorf("shared backing %v (%s)", shared, pm.Method())
			}
			if shared {
				// before the dump, which may allocate the backing's holes
				t.Run("holes", func(t *testing.T) { sharedHoles(t, pg, pm) })
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
			if marker != nil {
				if markAt >= 1<<32 && high == 0 {
					t.Errorf("the marker at %v is not counted above 4 GiB", markAt)
				}
				got := make([]byte, len(marker))
				if _, err := pm.ReadAt(got, int64(markAt)); err != nil || !bytes.Equal(got, marker) {
					t.Errorf("marker in the hot-plugged DIMM at %v: %v, read % x…", markAt, err, got[:16])
				}
			}
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

// hotplugDIMM plugs a 256 MiB DIMM into the running guest (QMP object-add
// and device_add), writes a 4 KiB marker 1 MiB into it through the GDB
// stub (physical mode), detaches, and returns where and what.
func hotplugDIMM(t *testing.T, ctx context.Context, pg *procGuest) (vmi.PA, []byte) {
	t.Helper()
	if _, err := pg.G.QMP(ctx, "object-add", map[string]any{"qom-type": "memory-backend-ram", "id": "mem1", "size": 256 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.G.QMP(ctx, "device_add", map[string]any{"driver": "pc-dimm", "id": "dimm1", "memdev": "mem1"}); err != nil {
		t.Fatal(err)
	}
	r, err := pg.G.QMP(ctx, "query-memory-devices", nil)
	if err != nil {
		t.Fatal(err)
	}
	var devs []struct {
		Data struct {
			Addr uint64 `json:"addr"`
			Size uint64 `json:"size"`
		} `json:"data"`
	}
	if err := json.Unmarshal(r, &devs); err != nil || len(devs) != 1 || devs[0].Data.Size != 256<<20 {
		t.Fatalf("memory devices %s: %v", r, err)
	}
	at := vmi.PA(devs[0].Data.Addr + 1<<20)
	marker := make([]byte, 4096)
	for i := range marker {
		marker[i] = byte(i*7 + 3)
	}
	d, err := DialGDB(ctx, pg.G.GDBAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.SetPhysicalMode(ctx, true); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(marker); off += 1024 {
		if err := d.Exec(ctx, fmt.Sprintf("M%x,%x:%s", uint64(at)+uint64(off), 1024, hex.EncodeToString(marker[off:off+1024]))); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SetPhysicalMode(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := d.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	return at, marker
}

// allocated is how much of the file f holds on the host (st_blocks).
func allocated(t *testing.T, f *os.File) int64 {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// sharedHoles (TestProcMemoryEqualsDump/memfd-shared/holes) reads all
// the RAM of a paused guest on a shared memfd backing, pm, and checks that
// the backing did not grow: pages the guest never touched are holes, read
// as zeros without being allocated. It runs before the case's dump and
// leaves pm reading as it found it.
func sharedHoles(t *testing.T, pg *procGuest, pm *ProcMemory) {
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
	// the fallback where process_vm_readv is refused: /proc/PID/mem reads
	// the same bytes (and no hole either)
	want := make([]byte, 64<<20)
	if _, err := pm.ReadAt(want, 0x100000); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pg.G.PID()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved := pm.mem
	pm.mem = f
	defer func() { pm.mem = saved }()
	if !strings.HasPrefix(pm.Method(), "/proc/PID/mem") {
		t.Errorf("method %q", pm.Method())
	}
	if _, err := pm.ReadAt(buf, 0x100000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, want) {
		t.Error("/proc/PID/mem and process_vm_readv read different bytes")
	}
	if a := allocated(t, pm.files[0]); a != before {
		t.Errorf("reading through /proc/PID/mem allocated %d bytes of the backing", a-before)
	}
}

// TestProcMemoryRefuses checks the errors of a process that cannot be the
// guest's: no such process, and a process that is not this QMP's QEMU.
func TestProcMemoryRefuses(t *testing.T) {
	pg := sharedProc(t)
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
	pg := sharedProc(t)
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
	pg := sharedProc(t)
	ctx := ctxT(t)
	resumeAtEnd(t, pg)
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

// TestProcMemoryPermission runs OpenProcMemory as user nobody (a copy of
// this test binary, in a child) on this root test process: reading its
// maps is refused, and the error is ErrPermission saying what is missing.
func TestProcMemoryPermission(t *testing.T) {
	if pid := os.Getenv("VMSCOPE_PERM_CHILD"); pid != "" {
		n, _ := strconv.Atoi(pid)
		_, err := OpenProcMemory(context.Background(), nil, n)
		if errors.Is(err, ErrPermission) {
			fmt.Println("ErrPermission:", err)
		} else {
			fmt.Println("other:", err)
		}
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "vmscope-perm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "qemu.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestProcMemoryPermission$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("VMSCOPE_PERM_CHILD=%d", os.Getpid()))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	if !strings.HasPrefix(string(out), "ErrPermission:") || !strings.Contains(string(out), "CAP_SYS_PTRACE") || !strings.Contains(string(out), "run as root") {
		t.Errorf("child as nobody: %s", out)
	}
	t.Logf("%s", out)
}

// kvmUsable opens /dev/kvm and asks its API version: the reason it is
// not usable, "" when it is.
func kvmUsable() string {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xae00
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return "KVM_GET_API_VERSION: " + err.Error()
	}
	if v != 12 {
		return fmt.Sprintf("KVM API version %d", v)
	}
	// a VM must be creatable too (nested virtualisation may refuse it)
	const kvmCreateVM = 0xae01
	fd, err := unix.IoctlRetInt(int(f.Fd()), kvmCreateVM)
	if err != nil {
		return "KVM_CREATE_VM: " + err.Error()
	}
	unix.Close(fd)
	return ""
}

// TestProcMemoryKVM is TestProcMemoryEqualsDump's anonymous case under
// KVM: the process path is the same code, RAM the same QEMU mapping. It
// boots the fixture with -accel kvm itself (guesttest boots TCG) and is
// skipped, saying why, where KVM is not usable (this project's machine).
func TestProcMemoryKVM(t *testing.T) {
	if why := kvmUsable(); why != "" {
		t.Skipf("KVM is not usable here (%s): the process path does not depend on the accelerator; run this test on a KVM host", why)
	}
	fixture.Tool(t, "qemu-system-x86_64")
	kernel, initrd := guesttest.Path(t, "vmlinuz"), guesttest.Path(t, "initrd.gz")
	dir, err := os.MkdirTemp("", "vmscope-kvm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	qmp, ref, console := filepath.Join(dir, "q.sock"), filepath.Join(dir, "r.sock"), filepath.Join(dir, "console.log")
	cmd := exec.Command("qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "512", "-smp", "2",
		"-nographic", "-display", "none", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1", "-serial", "file:"+console, "-monitor", "none", "-net", "none",
		"-qmp", "unix:"+qmp+",server=on,wait=off", "-qmp", "unix:"+ref+",server=on,wait=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }()
	ctx := ctxT(t)
	for !bytesInFile(console, guesttest.ReadyMarker) {
		select {
		case <-exited:
			// /dev/kvm opens and creates VMs, but QEMU cannot run one
			// (nested virtualisation without the MSRs it needs)
			t.Skipf("KVM is not usable here: QEMU -accel kvm exited before the guest booted: %s", strings.TrimSpace(stderr.String()))
		case <-ctx.Done():
			t.Fatal("no READY under KVM")
		case <-time.After(200 * time.Millisecond):
		}
	}
	r, err := DialQMP(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	g, err := Open(ctx, "qemu:qmp=unix:"+qmp)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close(context.Background())
	dump := filepath.Join(t.TempDir(), "g.elf")
	if err := r.DumpGuestMemory(ctx, dump, "elf"); err != nil {
		t.Fatal(err)
	}
	snap, err := snapshot.Open(dump)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	total, _ := memEqual(t, g, snap)
	memtest.Agree(t, g, snap, memtest.Names("process", "dump"), memtest.Context(ctx))
	t.Logf("KVM: %d MiB equal", total>>20)
}

func bytesInFile(path, s string) bool {
	b, _ := os.ReadFile(path)
	return bytes.Contains(b, []byte(s))
}
