package linux

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// memBytes is guest-physical memory held in a slice.
type memBytes []byte

func (m memBytes) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(m)) {
		return 0, &vmi.HoleError{Addr: vmi.PA(off)}
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, &vmi.HoleError{Addr: vmi.PA(off + int64(n))}
	}
	return n, nil
}

func (m memBytes) Ranges() []vmi.Range { return []vmi.Range{{Start: 0, Size: uint64(len(m))}} }

// hostileKernel is a made-up kernel: 4 MiB of guest-physical memory whose
// upper 2 MiB is mapped by one 2 MiB page at the start of the kernel image
// range, BTF with a task_struct of the members the task walk reads, and one
// symbol, init_task. put writes 64-bit values at kernel addresses.
type hostileKernel struct {
	*Kernel
	mem memBytes
}

const (
	hostileBase = vmi.VA(startKernelMap)
	hostilePA   = 0x200000
)

func newHostileKernel(t *testing.T) *hostileKernel {
	t.Helper()
	mem := make(memBytes, 4<<20)
	le := binary.LittleEndian
	// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000: slot 511, 510, 0
	le.PutUint64(mem[0x1000+511*8:], 0x2000|3)
	le.PutUint64(mem[0x2000+510*8:], 0x3000|3)
	le.PutUint64(mem[0x3000:], hostilePA|1<<7|3)

	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	u64 := &btf.Int{Name: "long long unsigned int", Size: 8}
	char := &btf.Int{Name: "char", Size: 1, Encoding: btf.Char}
	lh := &btf.Struct{Name: "list_head", Size: 16}
	lh.Members = []btf.Member{{Name: "next", Type: &btf.Pointer{Target: lh}}, {Name: "prev", Type: &btf.Pointer{Target: lh}, Offset: 64}}
	ts := &btf.Struct{Name: "task_struct", Size: 128}
	ptr := &btf.Pointer{Target: ts}
	ts.Members = []btf.Member{
		{Name: "tasks", Type: lh, Offset: 0},
		{Name: "pid", Type: u32, Offset: 16 * 8},
		{Name: "tgid", Type: u32, Offset: 20 * 8},
		{Name: "flags", Type: u32, Offset: 24 * 8},
		{Name: "__state", Type: u32, Offset: 28 * 8},
		{Name: "exit_state", Type: u32, Offset: 32 * 8},
		{Name: "start_time", Type: u64, Offset: 40 * 8},
		{Name: "real_parent", Type: ptr, Offset: 48 * 8},
		{Name: "cred", Type: ptr, Offset: 56 * 8},
		{Name: "mm", Type: ptr, Offset: 64 * 8},
		{Name: "comm", Type: &btf.Array{Index: u32, Type: char, Nelems: 16}, Offset: 72 * 8},
	}
	spec, err := LoadBTF(marshalBTF(t, ts))
	if err != nil {
		t.Fatal(err)
	}
	cm := &countingMem{Memory: mem}
	k := &Kernel{
		Mem:     cm,
		counter: cm,
		AS:      vmi.AddressSpace{Mem: cm, Root: 0x1000},
		Types:   spec,
		Symbols: newSymbols([]Symbol{{Addr: hostileBase, Type: 'D', Name: "init_task"}}),
	}
	return &hostileKernel{Kernel: k, mem: mem}
}

func (h *hostileKernel) put(va vmi.VA, v uint64) {
	binary.LittleEndian.PutUint64(h.mem[hostilePA+uint64(va-hostileBase):], v)
}

// task writes a task_struct at va with pid and the next pointer of its
// tasks list_head.
func (h *hostileKernel) task(va vmi.VA, pid uint32, next vmi.VA) {
	h.put(va, uint64(next))
	off := hostilePA + uint64(va-hostileBase)
	binary.LittleEndian.PutUint32(h.mem[off+16:], pid)
	binary.LittleEndian.PutUint32(h.mem[off+20:], pid)
	copy(h.mem[off+72:off+88], "hostile")
}

// tasksWithin runs the task walk and fails the test if it has not ended
// within a few seconds.
func tasksWithin(t *testing.T, k *Kernel) ([]Task, []Problem) {
	t.Helper()
	type result struct {
		tasks []Task
		probs []Problem
		err   error
	}
	done := make(chan result, 1)
	go func() {
		tasks, probs, err := k.Tasks(context.Background(), false)
		done <- result{tasks, probs, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.tasks, r.probs
	case <-time.After(20 * time.Second):
		t.Fatal("task walk did not end")
	}
	return nil, nil
}

func TestHostileTaskList(t *testing.T) {
	a, b, c := hostileBase+0x1000, hostileBase+0x2000, hostileBase+0x3000
	nowhere := vmi.VA(0xffffffffbfe00000) // in the image range, not mapped

	t.Run("cycle", func(t *testing.T) {
		h := newHostileKernel(t)
		h.task(hostileBase, 0, a)
		h.task(a, 1, b)
		h.task(b, 2, c)
		h.task(c, 3, b) // back to b: never back to init_task
		tasks, probs := tasksWithin(t, h.Kernel)
		if len(tasks) != 3 {
			t.Errorf("%d tasks before the cycle, want 3", len(tasks))
		}
		if len(probs) != 1 || probs[0].Where != "task list" || !strings.Contains(probs[0].Err.Error(), "cycle") || vmi.VA(probs[0].Addr) != b {
			t.Errorf("problems %+v, want one: the task list's cycle at %#x", probs, uint64(b))
		}
	})
	t.Run("nowhere", func(t *testing.T) {
		h := newHostileKernel(t)
		h.task(hostileBase, 0, a)
		h.task(a, 1, nowhere)
		tasks, probs := tasksWithin(t, h.Kernel)
		if len(tasks) != 1 || tasks[0].PID != 1 || tasks[0].Comm != "hostile" {
			t.Errorf("tasks %+v, want pid 1 only", tasks)
		}
		var sawTask, sawList bool
		for _, p := range probs {
			sawTask = sawTask || (p.Where == "task_struct" && vmi.VA(p.Addr) == nowhere)
			sawList = sawList || (p.Where == "task list" && vmi.VA(p.Addr) == nowhere)
		}
		if !sawTask || !sawList {
			t.Errorf("problems %+v, want the task at %#x and the list past it", probs, uint64(nowhere))
		}
	})
	t.Run("long", func(t *testing.T) {
		// a list of more than MaxTasks distinct entries, 16 bytes apart
		// (their task_structs overlap: their fields are garbage, read
		// within bounds)
		h := newHostileKernel(t)
		first := hostileBase + 0x1000
		h.task(hostileBase, 0, first)
		for i := range MaxTasks + 1 {
			e := first + vmi.VA(16*i)
			h.put(e, uint64(e+16))
		}
		tasks, probs := tasksWithin(t, h.Kernel)
		if len(tasks) != MaxTasks {
			t.Errorf("%d tasks, want the cap %d", len(tasks), MaxTasks)
		}
		last := probs[len(probs)-1]
		if last.Where != "task list" || !strings.Contains(last.Err.Error(), "longer than") {
			t.Errorf("last problem %+v, want the cap", last)
		}
	})
	// a list whose entry points to itself, and the read error behind a
	// pointer to nowhere, as callers test it
	h := newHostileKernel(t)
	h.task(hostileBase, 0, a)
	h.task(a, 1, a)
	if p := h.ListWalk("x", hostileBase, 10, func(vmi.VA) bool { return true }); p == nil || !strings.Contains(p.Err.Error(), "cycle") {
		t.Errorf("self-loop: problem %+v", p)
	}
	if _, err := h.ReadU64(nowhere); !errors.Is(err, vmi.ErrNotPresent) {
		t.Errorf("read of nowhere: %v, want ErrNotPresent", err)
	}
}

// hostileMem opens a memory file that testdata/hostile-mem/build.sh
// writes (testdata/hostile-mem/main.go says what each holds), or skips
// the test (fails it under CI) when it has not been built.
func hostileMem(t *testing.T, name string) *snapshot.Snapshot {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", "out-hostile-mem", name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (bash testdata/hostile-mem/build.sh)", p)
	}
	s, err := snapshot.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// discoverWithin runs Discover and fails the test when it has not ended
// within a minute: before the budget, discovery of the hostile files ran
// for hours; with it, each takes about a second of CPU (the minute is for
// a loaded machine).
func discoverWithin(t *testing.T, mem vmi.Memory, opts ...Option) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	_, err := Discover(ctx, mem, opts...)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("discovery did not end within a minute: %v", err)
	}
	t.Logf("discovery ended in %v: %v", time.Since(start).Round(time.Millisecond), err)
	return err
}

// stopError returns err's *StopError, or fails the test.
func stopError(t *testing.T, err error) *StopError {
	t.Helper()
	var se *StopError
	if !errors.As(err, &se) {
		t.Fatalf("error %v, want a *StopError", err)
	}
	if !strings.Contains(err.Error(), "the "+string(se.Phase)+" phase") || se.Progress == "" {
		t.Errorf("message %q does not name the phase %q and its progress", err, se.Phase)
	}
	return se
}

// TestHostileDiscovery runs discovery on memory made to keep it busy
// without end: it stops on its budget, in the phase the file attacks,
// having spent no more than the budget.
func TestHostileDiscovery(t *testing.T) {
	for _, tc := range []struct {
		file  string
		phase Phase
		over  string
	}{
		// ~1,000 fake token tables a chunk, each a 2 MiB marker read
		{"kallsyms-tables.raw", PhaseKallsyms, "bytes"},
		// ~20,000 pages that look like kernel PML4s, each 1,024 walks
		{"pml4-spin.raw", PhasePageTables, "candidates"},
		// the same, each walk through different tables
		{"pml4-wide.raw", PhasePageTables, "bytes"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			err := discoverWithin(t, hostileMem(t, tc.file))
			se := stopError(t, err)
			if !errors.Is(err, ErrBudget) || se.Phase != tc.phase || se.Over != tc.over {
				t.Errorf("stopped in phase %q over %q (%v), want phase %q over %q", se.Phase, se.Over, err, tc.phase, tc.over)
			}
			if se.Budget != DefaultBudget || se.Spent.Bytes > se.Budget.Bytes || se.Spent.Candidates > se.Budget.Candidates {
				t.Errorf("spent %+v of %+v, default %+v", se.Spent, se.Budget, DefaultBudget)
			}
			switch tc.over {
			case "bytes": // the next read would have passed it
				if se.Spent.Bytes < se.Budget.Bytes-(4<<20) {
					t.Errorf("stopped over bytes having read %d of %d", se.Spent.Bytes, se.Budget.Bytes)
				}
			case "candidates":
				if se.Spent.Candidates != se.Budget.Candidates {
					t.Errorf("stopped over candidates having tried %d of %d", se.Spent.Candidates, se.Budget.Candidates)
				}
			}
		})
	}
	t.Run("smaller budget", func(t *testing.T) {
		// a budget given stops discovery where it says
		mem := hostileMem(t, "pml4-spin.raw")
		se := stopError(t, discoverWithin(t, mem, WithBudget(Budget{Candidates: 100})))
		if se.Over != "candidates" || se.Spent.Candidates != 100 || se.Budget != (Budget{Bytes: DefaultBudget.Bytes, Candidates: 100}) {
			t.Errorf("stopped over %q, spent %+v of %+v, want 100 candidates", se.Over, se.Spent, se.Budget)
		}
		se = stopError(t, discoverWithin(t, hostileMem(t, "kallsyms-tables.raw"), WithBudget(Budget{Bytes: 64 << 20})))
		if se.Over != "bytes" || se.Phase != PhaseKallsyms || se.Spent.Bytes > 64<<20 || se.Spent.Bytes < 60<<20 {
			t.Errorf("stopped over %q in %q, spent %+v of %+v, want 64 MiB", se.Over, se.Phase, se.Spent, se.Budget)
		}
	})
	t.Run("larger budget", func(t *testing.T) {
		// with the candidates for every page, the walks of pml4-spin.raw
		// end: no PML4 maps the banner
		err := discoverWithin(t, hostileMem(t, "pml4-spin.raw"), WithBudget(Budget{Candidates: 1 << 20}))
		var se *StopError
		if errors.As(err, &se) || !errors.Is(err, ErrNotLinux) {
			t.Errorf("error %v, want ErrNotLinux", err)
		}
	})
}

// cancelAfter is a context whose Err turns to context.Canceled at its
// n-th call: discovery cancelled at a point that does not depend on time.
type cancelAfter struct {
	context.Context
	n atomic.Int64
}

func (c *cancelAfter) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

// TestDiscoveryCanceled: a cancelled discovery says in which phase it
// stopped and how far it got, and its error is the context's.
func TestDiscoveryCanceled(t *testing.T) {
	for _, tc := range []struct {
		file  string
		n     int64
		phase Phase
	}{
		{"pml4-spin.raw", 2, PhaseBanner},           // in the pass over memory (one check a 4 MiB chunk)
		{"pml4-spin.raw", 1000, PhasePageTables},    // among the PML4 candidates
		{"kallsyms-tables.raw", 100, PhaseKallsyms}, // among the token tables
	} {
		ctx := &cancelAfter{Context: context.Background()}
		ctx.n.Store(tc.n)
		_, err := Discover(ctx, hostileMem(t, tc.file))
		se := stopError(t, err)
		if !errors.Is(err, context.Canceled) || se.Over != "" || se.Phase != tc.phase {
			t.Errorf("%s after %d checks: %v (phase %q), want context.Canceled in phase %q", tc.file, tc.n, err, se.Phase, tc.phase)
		}
		if vmerr.ExitCode(err, false) != vmerr.ExitCanceled {
			t.Errorf("exit code %d for %v", vmerr.ExitCode(err, false), err)
		}
	}
}

// TestHostileAddressWrap: an object placed so that a member's address
// wraps past the top of the address space (container_of of a hostile
// pointer) is corrupt, with the structure named; no read is made at the
// wrapped address.
func TestHostileAddressWrap(t *testing.T) {
	h := newHostileKernel(t)
	top := vmi.VA(0xfffffffffffffff8) // pid is at +16, comm at +72
	for name, read := range map[string]func(o *obj) uint64{
		"u32":  func(o *obj) uint64 { return uint64(o.u32("pid")) },
		"uint": func(o *obj) uint64 { return o.uint("pid") },
		"str":  func(o *obj) uint64 { return uint64(len(o.str("comm", 16))) },
	} {
		o := h.obj("task_struct", top)
		before := h.BytesRead()
		v := read(o)
		var fe *vmerr.FormatError
		if v != 0 || !errors.Is(o.err, vmi.ErrCorrupt) || !errors.As(o.err, &fe) || !strings.Contains(fe.Struct, "task_struct") {
			t.Errorf("%s: value %d, error %v: want a FormatError of task_struct wrapping vmi.ErrCorrupt", name, v, o.err)
		}
		if h.BytesRead() != before {
			t.Errorf("%s: read %d bytes at a wrapped address", name, h.BytesRead()-before)
		}
	}
	// a member below the top still reads (and fails only as not present)
	o := h.obj("task_struct", top)
	if o.u64("tasks"); !errors.Is(o.err, vmi.ErrNotPresent) {
		t.Errorf("tasks at %#x: %v, want not present", uint64(top), o.err)
	}
}
