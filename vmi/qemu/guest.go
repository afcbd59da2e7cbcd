package qemu

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// Spec says where a live guest is: its GDB stub and, optionally, its QMP
// socket. The text form is gdb://HOST:PORT[,qmp=unix:PATH].
type Spec struct {
	GDB string // host:port
	QMP string // unix socket path; "" when none
}

// ParseSpec parses gdb://HOST:PORT[,qmp=unix:PATH].
func ParseSpec(s string) (Spec, error) {
	rest, ok := strings.CutPrefix(s, "gdb://")
	if !ok {
		return Spec{}, fmt.Errorf("qemu: guest %q: want gdb://HOST:PORT[,qmp=unix:PATH]", s)
	}
	parts := strings.Split(rest, ",")
	sp := Spec{GDB: parts[0]}
	if sp.GDB == "" || !strings.Contains(sp.GDB, ":") {
		return Spec{}, fmt.Errorf("qemu: guest %q: want HOST:PORT after gdb://", s)
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch {
		case k == "qmp" && strings.HasPrefix(v, "unix:") && len(v) > len("unix:"):
			sp.QMP = strings.TrimPrefix(v, "unix:")
		default:
			return Spec{}, fmt.Errorf("qemu: guest %q: unknown option %q (want qmp=unix:PATH)", s, p)
		}
	}
	return sp, nil
}

func (s Spec) String() string {
	if s.QMP == "" {
		return "gdb://" + s.GDB
	}
	return "gdb://" + s.GDB + ",qmp=unix:" + s.QMP
}

// Guest is a running QEMU guest seen through its GDB stub (memory,
// registers, execution control) and its QMP socket (run state, memory
// map, dumps). It implements vmi.Memory over guest-physical addresses.
//
// Guest never leaves the guest altered: Close, which every user must call
// (also on error and after the context is cancelled), removes every
// breakpoint and watchpoint it set, turns physical-memory mode off,
// detaches (QEMU then resumes the guest) and, if QMP said the guest was
// paused before Open, pauses it again. Only a process killed with SIGKILL
// cannot do that: QEMU then keeps the guest stopped, with its breakpoints,
// until a client attaches and detaches (opening and closing a Guest does).
//
// Between Open and Close the guest runs as it did before Open unless
// Pause stops it. Reads of a running guest stop it for the time of the
// read (each ReadAt is one consistent stop); Pause first for a view
// consistent across reads.
type Guest struct {
	spec   Spec
	gdb    *GDB
	qmp    *QMP // nil without QMP
	target *Target
	thread []int // GDB thread id per vCPU index
	ranges []vmi.Range

	wasPaused bool // QMP said the guest was not running before Open

	op sync.Mutex // one control operation at a time

	mu       sync.Mutex // the fields below
	running  bool
	runDone  chan struct{} // closed by the watcher when the current run stops
	lastStop Stop
	quiet    bool // the stop ending this run was asked for (Pause, Step): no event
	bps      map[Breakpoint]struct{}
	closed   bool

	events  chan StopEvent
	dropped int
	watchWG sync.WaitGroup
	cancel  context.CancelFunc
}

// Breakpoint is a breakpoint or watchpoint at a guest-virtual address.
type Breakpoint struct {
	Kind BreakKind
	Addr vmi.VA
	Size int // watched bytes (1, 2, 4, 8); 1 for breakpoints
}

// StopEvent is the guest stopping on its own while it ran: a breakpoint,
// a watchpoint, or someone else (QMP stop, another debugger) pausing it.
type StopEvent struct {
	CPU    int    // vCPU index that stopped
	Signal int    // 5: breakpoint/watchpoint, 2: paused
	Watch  string // "watch", "rwatch", "awatch" for a watchpoint
	Addr   vmi.VA // the watched address that was hit
	Exited bool   // the guest is gone
}

// ErrClosed is an operation on a closed Guest.
var ErrClosed = errors.New("qemu: guest closed")

// Guest is a vmi.Live.
var _ vmi.Live = (*Guest)(nil)

// Open attaches to a live guest described by spec
// (gdb://HOST:PORT[,qmp=unix:PATH]). It reads the register layout, the
// vCPUs and, with QMP, the guest-physical memory map, turns on
// physical-memory mode, and lets the guest run again if it was running.
func Open(ctx context.Context, spec string) (*Guest, error) {
	sp, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	g := &Guest{spec: sp, bps: map[Breakpoint]struct{}{}, events: make(chan StopEvent, 64)}
	if sp.QMP != "" {
		if g.qmp, err = DialQMP(ctx, sp.QMP); err != nil {
			return nil, err
		}
		st, err := g.qmp.Status(ctx)
		if err != nil {
			g.qmp.Close()
			return nil, err
		}
		g.wasPaused = !st.Running
	}
	if g.gdb, err = DialGDB(ctx, sp.GDB); err != nil {
		if g.qmp != nil {
			g.qmp.Close()
		}
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	g.watchWG.Add(1)
	go g.watch(wctx)
	if err := g.setup(ctx); err != nil {
		return nil, errors.Join(err, g.Close(context.WithoutCancel(ctx)))
	}
	return g, nil
}

// FoundRunning reports the run state QMP gave when Open attached (known is
// false without QMP). Attaching the GDB stub stops the guest for a moment;
// this is the state the guest was in, and the one Close restores.
func (g *Guest) FoundRunning() (running, known bool) { return !g.wasPaused, g.qmp != nil }

func (g *Guest) setup(ctx context.Context) error {
	var err error
	if g.thread, err = g.gdb.Threads(ctx); err != nil {
		return err
	}
	if len(g.thread) == 0 || len(g.thread) > 4096 {
		return fmt.Errorf("%w: %d vCPUs", ErrProtocol, len(g.thread))
	}
	if g.target, err = g.gdb.ReadTarget(ctx, g.thread[0]); err != nil {
		return err
	}
	for _, n := range []string{"rip", "cr3"} {
		if _, ok := g.target.Reg(n); !ok {
			return fmt.Errorf("qemu: gdb stub has no %s register (architecture %q)", n, g.target.Arch)
		}
	}
	if err := g.gdb.SetPhysicalMode(ctx, true); err != nil {
		return err
	}
	if g.qmp != nil {
		if g.ranges, err = memoryMap(ctx, g.qmp); err != nil {
			return err
		}
	}
	if !g.wasPaused {
		return g.Resume(ctx)
	}
	return nil
}

// memoryMap reads the RAM and ROM ranges of the "memory" address space
// from HMP "info mtree -f" (the flat view QEMU itself uses; it is what
// dump-guest-memory writes).
func memoryMap(ctx context.Context, q *QMP) ([]vmi.Range, error) {
	s, err := q.HMP(ctx, "info mtree -f")
	if err != nil {
		return nil, err
	}
	r, err := parseMtree(s)
	if err != nil {
		return nil, fmt.Errorf("qemu: info mtree -f: %w", err)
	}
	return r, nil
}

func parseMtree(s string) ([]vmi.Range, error) {
	var out []vmi.Range
	inView, found := false, false
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "FlatView "):
			if found {
				return mergeRanges(out), nil
			}
			inView = false
		case strings.HasPrefix(l, ` AS "memory",`):
			inView, found = true, true
		case inView && (strings.Contains(l, ", ram)") || strings.Contains(l, ", rom)")):
			f := strings.Fields(l)
			lo, hi, ok := strings.Cut(f[0], "-")
			if !ok {
				return nil, fmt.Errorf("%w: line %q", ErrProtocol, l)
			}
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 != nil || err2 != nil || b < a || len(out) > 1<<16 {
				return nil, fmt.Errorf("%w: line %q", ErrProtocol, l)
			}
			out = append(out, vmi.Range{Start: vmi.PA(a), Size: b - a + 1})
		}
	}
	if !found {
		return nil, fmt.Errorf("%w: no flat view of address space \"memory\"", ErrProtocol)
	}
	return mergeRanges(out), nil
}

func mergeRanges(rs []vmi.Range) []vmi.Range {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start < rs[j].Start })
	var out []vmi.Range
	for _, r := range rs {
		if n := len(out); n > 0 && out[n-1].End() >= r.Start {
			if e := r.End(); e > out[n-1].End() {
				out[n-1].Size = uint64(e - out[n-1].Start)
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// watch takes the stub's stop replies and ends the current run.
func (g *Guest) watch(ctx context.Context) {
	defer g.watchWG.Done()
	for {
		s, err := g.gdb.NextStop(ctx)
		if err != nil {
			g.mu.Lock()
			if g.running {
				g.running = false
				close(g.runDone)
			}
			g.mu.Unlock()
			return
		}
		g.mu.Lock()
		quiet := g.quiet
		if g.running {
			g.running = false
			g.lastStop = s
			close(g.runDone)
		}
		g.quiet = false
		g.mu.Unlock()
		if quiet {
			continue
		}
		ev := StopEvent{CPU: s.Thread - 1, Signal: s.Signal, Watch: s.Watch, Addr: vmi.VA(s.Addr), Exited: s.Exited}
		select {
		case g.events <- ev:
		default:
			g.mu.Lock()
			g.dropped++
			g.mu.Unlock()
		}
	}
}

// Events is the stream of stops the guest made on its own (breakpoints,
// watchpoints, a pause by someone else). It is buffered; events that do
// not fit are dropped and counted (Dropped). It is never closed.
func (g *Guest) Events() <-chan StopEvent { return g.events }

// Dropped is how many events did not fit in the Events buffer.
func (g *Guest) Dropped() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dropped
}

// NumCPU is the number of vCPUs.
func (g *Guest) NumCPU() int { return len(g.thread) }

// Spec is where the guest is.
func (g *Guest) Spec() Spec { return g.spec }

// QMP is the guest's QMP client, nil without one.
func (g *Guest) QMP() *QMP { return g.qmp }

// Ranges lists the guest-physical RAM and ROM ranges (from QMP). Without
// QMP it is nil and reads are not checked for holes.
func (g *Guest) Ranges() []vmi.Range { return append([]vmi.Range(nil), g.ranges...) }

// Running reports whether the guest runs (as far as the stub said).
func (g *Guest) Running() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.running
}

func (g *Guest) checkOpen() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	return nil
}

// Pause stops every vCPU and waits until the stub reports it.
func (g *Guest) Pause(ctx context.Context) error {
	g.op.Lock()
	defer g.op.Unlock()
	if err := g.checkOpen(); err != nil {
		return err
	}
	return g.pause(ctx)
}

func (g *Guest) pause(ctx context.Context) error {
	g.mu.Lock()
	if !g.running {
		g.mu.Unlock()
		return nil
	}
	done := g.runDone
	g.quiet = true
	g.mu.Unlock()
	if err := g.gdb.Interrupt(); err != nil {
		return fmt.Errorf("qemu: pause: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qemu: pause: %w", ctx.Err())
	case <-time.After(opTimeout):
		return fmt.Errorf("qemu: pause: no stop reply in %v", opTimeout)
	}
}

// Resume lets every vCPU run (vCont;c).
func (g *Guest) Resume(ctx context.Context) error {
	g.op.Lock()
	defer g.op.Unlock()
	if err := g.checkOpen(); err != nil {
		return err
	}
	return g.resume()
}

func (g *Guest) resume() error {
	g.mu.Lock()
	if g.running {
		g.mu.Unlock()
		return nil
	}
	g.running, g.runDone, g.quiet = true, make(chan struct{}), false
	g.mu.Unlock()
	if err := g.gdb.Send("vCont;c"); err != nil {
		g.mu.Lock()
		g.running = false
		g.mu.Unlock()
		return err
	}
	return nil
}

// Step executes one instruction on vCPU cpu, the others staying stopped,
// and returns the state after it. The guest must be paused. QEMU masks
// interrupts and timers during the step (its default qemu.sstep flags).
func (g *Guest) Step(ctx context.Context, cpu int) (vmi.CPU, error) {
	g.op.Lock()
	defer g.op.Unlock()
	if err := g.checkOpen(); err != nil {
		return vmi.CPU{}, err
	}
	if cpu < 0 || cpu >= len(g.thread) {
		return vmi.CPU{}, fmt.Errorf("qemu: step: no vCPU %d", cpu)
	}
	g.mu.Lock()
	if g.running {
		g.mu.Unlock()
		return vmi.CPU{}, errors.New("qemu: step: the guest is running (Pause first)")
	}
	g.running, g.runDone, g.quiet = true, make(chan struct{}), true
	done := g.runDone
	g.mu.Unlock()
	if err := g.gdb.Send(fmt.Sprintf("vCont;s:%x", g.thread[cpu])); err != nil {
		return vmi.CPU{}, err
	}
	select {
	case <-done:
	case <-ctx.Done():
		return vmi.CPU{}, errors.Join(fmt.Errorf("qemu: step: %w", ctx.Err()), g.pause(context.WithoutCancel(ctx)))
	}
	return g.regs(ctx, cpu)
}

// withStopped runs f with the guest stopped: if it runs, it is paused for
// the time of f and resumed after.
func (g *Guest) withStopped(ctx context.Context, f func() error) error {
	g.op.Lock()
	defer g.op.Unlock()
	if err := g.checkOpen(); err != nil {
		return err
	}
	g.mu.Lock()
	wasRunning := g.running
	g.mu.Unlock()
	if wasRunning {
		if err := g.pause(ctx); err != nil {
			return err
		}
	}
	err := f()
	if wasRunning {
		err = errors.Join(err, g.resume())
	}
	return err
}

// ReadPhys reads guest-physical memory at pa into p. A read that meets a
// hole in the memory map returns the bytes before it and a *vmi.HoleError.
func (g *Guest) ReadPhys(ctx context.Context, p []byte, pa vmi.PA) (int, error) {
	n := len(p)
	var hole error
	if g.ranges != nil {
		n, hole = presentPrefix(g.ranges, pa, len(p))
	}
	if n > 0 {
		err := g.withStopped(ctx, func() error { return g.gdb.ReadMemory(ctx, uint64(pa), p[:n]) })
		if err != nil {
			return 0, err
		}
	}
	return n, hole
}

// presentPrefix is how many bytes from pa are present, and the hole error
// when fewer than n.
func presentPrefix(rs []vmi.Range, pa vmi.PA, n int) (int, error) {
	got := 0
	for got < n {
		a, ok := pa.Add(uint64(got))
		if !ok {
			return got, &vmi.HoleError{Addr: pa}
		}
		i := sort.Search(len(rs), func(i int) bool { return rs[i].End() > a })
		if i == len(rs) || !rs[i].Contains(a) {
			return got, &vmi.HoleError{Addr: a}
		}
		got += int(min(uint64(n-got), uint64(rs[i].End()-a)))
	}
	return got, nil
}

// ReadAt implements io.ReaderAt over guest-physical addresses (vmi.Memory).
// It cannot be cancelled; each call is bounded by a timeout.
func (g *Guest) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qemu: read at negative offset %d", off)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return g.ReadPhys(ctx, p, vmi.PA(off))
}

// CPUs returns the registers of every vCPU.
func (g *Guest) CPUs(ctx context.Context) ([]vmi.CPU, error) {
	var cpus []vmi.CPU
	err := g.withStopped(ctx, func() error {
		for i := range g.thread {
			c, err := g.regs(ctx, i)
			if err != nil {
				return err
			}
			cpus = append(cpus, c)
		}
		return nil
	})
	return cpus, err
}

// Regs returns the registers of vCPU cpu.
func (g *Guest) Regs(ctx context.Context, cpu int) (vmi.CPU, error) {
	var c vmi.CPU
	err := g.withStopped(ctx, func() error {
		var err error
		c, err = g.regs(ctx, cpu)
		return err
	})
	return c, err
}

// regField maps a register of the target description to a field of vmi.CPU.
func regField(c *vmi.CPU, name string) *uint64 {
	switch name {
	case "rax":
		return &c.RAX
	case "rbx":
		return &c.RBX
	case "rcx":
		return &c.RCX
	case "rdx":
		return &c.RDX
	case "rsi":
		return &c.RSI
	case "rdi":
		return &c.RDI
	case "rbp":
		return &c.RBP
	case "rsp":
		return &c.RSP
	case "r8":
		return &c.R8
	case "r9":
		return &c.R9
	case "r10":
		return &c.R10
	case "r11":
		return &c.R11
	case "r12":
		return &c.R12
	case "r13":
		return &c.R13
	case "r14":
		return &c.R14
	case "r15":
		return &c.R15
	case "rip":
		return &c.RIP
	case "eflags":
		return &c.RFLAGS
	case "fs_base":
		return &c.FSBase
	case "gs_base":
		return &c.GSBase
	case "k_gs_base":
		return &c.KernelGSBase
	case "cr0":
		return &c.CR0
	case "cr2":
		return &c.CR2
	case "cr3":
		return &c.CR3
	case "cr4":
		return &c.CR4
	case "efer":
		return &c.EFER
	}
	return nil
}

var segNames = []string{"cs", "ss", "ds", "es", "fs", "gs"}

func segField(c *vmi.CPU, name string) *vmi.Segment {
	switch name {
	case "cs":
		return &c.CS
	case "ss":
		return &c.SS
	case "ds":
		return &c.DS
	case "es":
		return &c.ES
	case "fs":
		return &c.FS
	case "gs":
		return &c.GS
	}
	return nil
}

// regs reads vCPU cpu's 'g' block and, with 'p', the registers past it.
// The stub gives segment selectors, not descriptors: the Segment bases
// are the FS/GS bases, the other descriptor fields are zero.
func (g *Guest) regs(ctx context.Context, cpu int) (vmi.CPU, error) {
	c := vmi.CPU{ID: cpu}
	if cpu < 0 || cpu >= len(g.thread) {
		return c, fmt.Errorf("qemu: registers: no vCPU %d", cpu)
	}
	tid := g.thread[cpu]
	blk, err := g.gdb.ReadRegisters(ctx, tid)
	if err != nil {
		return c, err
	}
	get := func(r Reg) (uint64, error) {
		var b []byte
		if r.Offset >= 0 && r.Offset+r.Bits/8 <= len(blk) {
			b = blk[r.Offset : r.Offset+r.Bits/8]
		} else if b, err = g.gdb.ReadRegister(ctx, tid, r.Num); err != nil {
			return 0, err
		}
		var v [8]byte
		copy(v[:], b)
		return binary.LittleEndian.Uint64(v[:]), nil
	}
	for _, r := range g.target.Regs {
		if f := regField(&c, r.Name); f != nil {
			if *f, err = get(r); err != nil {
				return c, err
			}
			switch r.Name {
			case "efer":
				c.HasEFER = true
			case "k_gs_base":
				c.HasKernelGSBase = true
			case "cr0":
				c.HasControl = true
			case "rip":
				c.HasGPRs = true
			}
		} else if s := segField(&c, r.Name); s != nil {
			v, err := get(r)
			if err != nil {
				return c, err
			}
			s.Selector = uint16(v)
		}
	}
	c.FS.Base, c.GS.Base = c.FSBase, c.GSBase
	return c, nil
}

// SetRegs writes the general registers, RIP and RFLAGS of vCPU cpu that
// differ from their current values ('P', one register at a time). Control
// registers, bases and segments are left alone.
func (g *Guest) SetRegs(ctx context.Context, cpu int, want vmi.CPU) error {
	return g.withStopped(ctx, func() error {
		cur, err := g.regs(ctx, cpu)
		if err != nil {
			return err
		}
		for _, r := range g.target.Regs {
			if r.Name == "cr0" || r.Name == "cr2" || r.Name == "cr3" || r.Name == "cr4" || r.Name == "efer" ||
				r.Name == "fs_base" || r.Name == "gs_base" || r.Name == "k_gs_base" {
				continue
			}
			f, w := regField(&cur, r.Name), regField(&want, r.Name)
			if f == nil || *f == *w {
				continue
			}
			val := make([]byte, r.Bits/8)
			var v [8]byte
			binary.LittleEndian.PutUint64(v[:], *w)
			copy(val, v[:])
			if err := g.gdb.WriteRegister(ctx, g.thread[cpu], r.Num, val); err != nil {
				return fmt.Errorf("qemu: set %s of vCPU %d: %w", r.Name, cpu, err)
			}
		}
		return nil
	})
}

// SetBreakpoint sets a breakpoint or watchpoint; Close removes it.
func (g *Guest) SetBreakpoint(ctx context.Context, bp Breakpoint) error {
	if bp.Size == 0 {
		bp.Size = 1
	}
	return g.withStopped(ctx, func() error {
		g.mu.Lock()
		_, dup := g.bps[bp]
		g.mu.Unlock()
		if dup {
			return nil
		}
		if err := g.gdb.Insert(ctx, bp.Kind, uint64(bp.Addr), bp.Size); err != nil {
			return fmt.Errorf("qemu: set %s at %v: %w", bp.Kind, bp.Addr, err)
		}
		g.mu.Lock()
		g.bps[bp] = struct{}{}
		g.mu.Unlock()
		return nil
	})
}

// ClearBreakpoint removes a breakpoint or watchpoint SetBreakpoint set.
func (g *Guest) ClearBreakpoint(ctx context.Context, bp Breakpoint) error {
	if bp.Size == 0 {
		bp.Size = 1
	}
	return g.withStopped(ctx, func() error {
		g.mu.Lock()
		_, ok := g.bps[bp]
		g.mu.Unlock()
		if !ok {
			return fmt.Errorf("qemu: clear %s at %v: not set", bp.Kind, bp.Addr)
		}
		if err := g.gdb.Remove(ctx, bp.Kind, uint64(bp.Addr), bp.Size); err != nil {
			return fmt.Errorf("qemu: clear %s at %v: %w", bp.Kind, bp.Addr, err)
		}
		g.mu.Lock()
		delete(g.bps, bp)
		g.mu.Unlock()
		return nil
	})
}

// Breakpoints lists the breakpoints and watchpoints set.
func (g *Guest) Breakpoints() []Breakpoint {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []Breakpoint
	for bp := range g.bps {
		out = append(out, bp)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Addr != out[j].Addr {
			return out[i].Addr < out[j].Addr
		}
		return out[i].Kind < out[j].Kind
	})
	return out
}

// closeTimeout bounds Close when its context has no deadline.
const closeTimeout = 15 * time.Second

// Close restores the guest and disconnects: it stops the guest if it
// runs (the stub takes commands only then), removes every breakpoint and
// watchpoint set, turns physical-memory mode off, detaches (QEMU resumes
// the guest) and, if the guest was paused before Open, pauses it again
// through QMP. It goes on past errors and returns them all. Pass a
// context that is not cancelled (context.WithoutCancel of a cancelled
// one); it is bounded by closeTimeout anyway.
func (g *Guest) Close(ctx context.Context) error {
	g.op.Lock()
	defer g.op.Unlock()
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	g.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, closeTimeout)
	defer cancel()

	var errs []error
	if err := g.pause(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, bp := range g.Breakpoints() {
		// E22 means it is not set: a removal cut short by a cancelled
		// context may have gone through already.
		var se *StubError
		if err := g.gdb.Remove(ctx, bp.Kind, uint64(bp.Addr), bp.Size); err != nil && !errors.As(err, &se) {
			errs = append(errs, fmt.Errorf("qemu: close: clear %s at %v: %w", bp.Kind, bp.Addr, err))
		}
	}
	g.mu.Lock()
	g.bps = map[Breakpoint]struct{}{}
	g.mu.Unlock()
	if err := g.gdb.SetPhysicalMode(ctx, false); err != nil {
		errs = append(errs, err)
	}
	// Detach removes anything left (QEMU clears all breakpoints of the
	// process) and resumes the guest, even one QMP had paused. A guest
	// found paused is left without it: closing the connection leaves it
	// stopped (its breakpoints are removed above), so it never runs between
	// the detach and the QMP stop below.
	if !g.wasPaused {
		if err := g.gdb.Detach(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	g.cancel()
	errs = append(errs, g.gdb.Close())
	g.watchWG.Wait()
	if g.qmp != nil {
		if g.wasPaused {
			if err := g.qmp.Stop(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		errs = append(errs, g.qmp.Close())
	}
	return errors.Join(errs...)
}
