package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// Guest is a running QEMU guest seen through its process (memory, when
// the spec names it: qemu:pid=…), its GDB stub (registers, traps,
// single-step; memory otherwise) and its monitor (run state, memory map,
// registers while the stub is not attached, dumps). It is a vmi.Live and
// a vmi.Tracer over guest-physical addresses.
//
// Guest never leaves the guest altered: Close, which every user must call
// (also on error and after the context is cancelled), removes every
// breakpoint and watchpoint it set, turns physical-memory mode off,
// detaches (QEMU then resumes the guest), lets a guest it paused through
// QMP run again and, if the monitor said the guest was paused before
// Open, leaves it paused. Only a process killed with SIGKILL cannot do
// that: QEMU then keeps the guest stopped, with its traps, and the journal
// Open wrote says what Release must undo.
//
// Between Open and Close the guest runs as it did before Open unless
// Pause stops it. Reads from the process never stop it; reads through the
// stub stop a running guest for the time of the read (each ReadAt is one
// consistent stop). Pause first for a view consistent across reads.
type Guest struct {
	spec     Spec
	ep       Endpoint
	ownEP    bool    // Close closes ep (Open dialled it)
	mon      Monitor // ep.Monitor; nil without one
	qmp      *QMP    // mon when it is a *QMP
	pm       *ProcMemory
	gdb      *GDB // nil until the stub is attached
	stubAddr string
	// closeStub closes a stub ep.OpenGDB opened, at Close.
	closeStub func(context.Context) error
	stubLeft  bool // attaching the stub failed half-way: keep the journal
	target    *Target
	thread    []int // GDB thread id per vCPU index
	ncpu      int
	ranges    []vmi.Range
	journal   *journal // nil when opened WithoutJournal
	execKind  BreakKind
	found     string // the run state found, for the journal

	wasPaused bool // QMP said the guest was not running before Open
	qmpPaused bool // Pause stopped the guest through QMP (no stub attached)

	op sync.Mutex // one control operation at a time

	mu       sync.Mutex // the fields below
	running  bool
	runDone  chan struct{} // closed by the watcher when the current run stops
	lastStop Stop
	quiet    bool // the stop ending this run was asked for (Pause, Step): no event
	bps      map[Breakpoint]struct{}
	closed   bool
	attached bool // the stub is attached (g.gdb set)

	events  chan vmi.Stop
	dropped int
	watchWG sync.WaitGroup
	cancel  context.CancelFunc
}

// ErrClosed is an operation on a closed Guest.
var ErrClosed = errors.New("qemu: guest closed")

// Guest is a vmi.Live and a vmi.Tracer.
var (
	_ vmi.Live   = (*Guest)(nil)
	_ vmi.Tracer = (*Guest)(nil)
)

// Option is an optional setting of Open.
type Option func(*options)

type options struct {
	journal   string
	noJournal bool
	hardware  bool
}

// WithJournal keeps the journal at path instead of JournalPath(spec).
func WithJournal(path string) Option { return func(o *options) { o.journal = path } }

// WithoutJournal writes no journal: a SIGKILL then leaves nothing that
// Release can undo. For callers that hold the guest's journal themselves.
func WithoutJournal() Option { return func(o *options) { o.noJournal = true } }

// WithHardwareBreakpoints makes execute traps hardware breakpoints (Z1)
// instead of software ones (Z0). Under TCG both are QEMU's own
// breakpoints; under KVM a software breakpoint patches guest memory and a
// hardware one takes a debug register (4 per vCPU).
func WithHardwareBreakpoints() Option { return func(o *options) { o.hardware = true } }

// Open resolves spec (gdb://HOST:PORT[,qmp=unix:PATH] or
// qemu:pid=PID,qmp=unix:PATH[,gdb=HOST:PORT], see Spec) with Dial and
// attaches to it as OpenEndpoint does; Close also closes what Dial opened.
func Open(ctx context.Context, spec string, opts ...Option) (*Guest, error) {
	sp, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	ep, err := DialSpec(ctx, sp)
	if err != nil {
		return nil, err
	}
	g, err := OpenEndpoint(ctx, ep, opts...)
	if err != nil {
		if ep.Close != nil {
			ep.Close()
		}
		return nil, err
	}
	g.spec, g.ownEP = sp, true
	return g, nil
}

// OpenEndpoint attaches to a live guest. It takes the guest's journal (an
// error wrapping ErrInUse or ErrLeftBehind when another vmscope holds it
// or one killed left it) and records the run state the monitor reports.
//
// With the QEMU process known (ep.PID) and a monitor, memory is read from
// the process (OpenProcMemory: the layout proved, a few pages checked):
// nothing is attached, the guest is never stopped, registers come from
// HMP "info registers -a", and Pause/Resume are QMP stop/cont. The GDB
// stub (ep.GDB, or ep.OpenGDB on demand) is attached only when something
// needs it: traps, single-step, Exclusive, and registers once attached.
//
// Without the process, memory goes through the stub, attached at once:
// attaching stops the guest; Open reads the register layout, the vCPUs
// and, with a monitor, the memory map, turns on physical-memory mode and
// lets the guest run again if it was running.
//
// The caller still closes ep after Close.
func OpenEndpoint(ctx context.Context, ep Endpoint, opts ...Option) (*Guest, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if ep.Name == "" {
		ep.Name = ep.GDB
	}
	g := &Guest{ep: ep, mon: ep.Monitor, bps: map[Breakpoint]struct{}{}, events: make(chan vmi.Stop, 64), execKind: SoftwareBreak, found: foundUnknown}
	g.qmp, _ = ep.Monitor.(*QMP)
	if o.hardware {
		g.execKind = HardwareBreak
	}
	if ep.PID == 0 && ep.GDB == "" && ep.OpenGDB == nil {
		return nil, fmt.Errorf("qemu: guest %s: neither a QEMU process with its monitor nor a GDB stub to read memory through", ep.Name)
	}
	var err error
	if !o.noJournal {
		path := o.journal
		if path == "" {
			if path, err = journalPathOf(ep); err != nil {
				return nil, err
			}
		}
		if g.journal, err = openJournal(path, ep.Name); err != nil {
			return nil, err
		}
	}
	fail := func(err error) (*Guest, error) {
		if g.pm != nil {
			g.pm.Close()
		}
		g.journal.discard()
		return nil, err
	}
	if g.mon != nil {
		st, err := monStatus(ctx, g.mon)
		if err != nil {
			return fail(err)
		}
		g.wasPaused = !st.Running
		g.found = map[bool]string{true: foundRunning, false: foundPaused}[st.Running]
	}
	if ep.PID != 0 && g.mon != nil {
		if g.pm, err = OpenProcMemory(ctx, g.mon, ep.PID); err != nil {
			return fail(err)
		}
		g.ranges = g.pm.Ranges()
		cpus, err := monCPUCount(ctx, g.mon)
		if err != nil {
			return fail(err)
		}
		g.ncpu = cpus
		return g, nil
	}
	// Memory through the stub: attach it now.
	if err := g.attachStub(ctx); err != nil {
		if g.stubLeft {
			// connected, then the exchange failed: the stub may hold
			// the guest stopped. The journal stays for Release.
			g.journal.keep()
			return nil, err
		}
		if g.gdb != nil {
			return nil, errors.Join(err, g.Close(context.WithoutCancel(ctx)))
		}
		return fail(err)
	}
	return g, nil
}

// journalPathOf is the default journal of an endpoint: by its GDB stub
// (which holds the traps) when it has one, else by the QEMU process.
func journalPathOf(ep Endpoint) (string, error) {
	return JournalPath(Spec{GDB: ep.GDB, PID: ep.PID, Process: ep.GDB == ""})
}

// attachStub attaches the GDB stub (ep.GDB, or one ep.OpenGDB opens):
// the journal first records it, attaching stops the guest; then the
// register layout, the vCPUs, physical-memory mode, and the guest runs
// again if it ran (not found paused, not paused through QMP). The caller
// holds g.op (or is Open).
func (g *Guest) attachStub(ctx context.Context) error {
	if g.gdb != nil {
		return nil
	}
	if g.stubLeft {
		return errors.New("qemu: the GDB stub failed to attach before")
	}
	addr := g.ep.GDB
	if addr == "" {
		if g.ep.OpenGDB == nil {
			return ErrNoStub
		}
		a, closeStub, err := g.ep.OpenGDB(ctx)
		if err != nil {
			return fmt.Errorf("qemu: opening a GDB stub: %w", err)
		}
		addr, g.closeStub = a, closeStub
	}
	g.stubAddr = addr
	// The first change: attaching stops the guest.
	if err := g.journal.begin(g.found); err != nil {
		return err
	}
	gdb, err := DialGDB(ctx, addr)
	if err != nil {
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "dial" {
			g.stubLeft = true
		}
		return err
	}
	g.gdb = gdb
	g.mu.Lock()
	g.attached = true
	g.mu.Unlock()
	wctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	g.watchWG.Add(1)
	go g.watch(wctx)
	return g.setup(ctx)
}

// FoundRunning reports the run state the monitor gave when the guest was
// opened (known is false without a monitor). Attaching the GDB stub stops
// the guest for a moment; this is the state the guest was in, and the one
// Close restores.
func (g *Guest) FoundRunning() (running, known bool) { return !g.wasPaused, g.mon != nil }

func (g *Guest) setup(ctx context.Context) error {
	var err error
	if g.thread, err = g.gdb.Threads(ctx); err != nil {
		return err
	}
	if len(g.thread) == 0 || len(g.thread) > 4096 {
		return fmt.Errorf("%w: %d vCPUs", ErrProtocol, len(g.thread))
	}
	g.ncpu = len(g.thread)
	if g.target, err = g.gdb.ReadTarget(ctx, g.thread[0]); err != nil {
		return err
	}
	for _, n := range []string{"rip", "cr3"} {
		if _, ok := g.target.Reg(n); !ok {
			return fmt.Errorf("qemu: gdb stub has no %s register (architecture %q)", n, g.target.Arch)
		}
	}
	if err := g.journal.update(func(j *journalDoc) { j.PhysicalMode = true }); err != nil {
		return err
	}
	if err := g.gdb.SetPhysicalMode(ctx, true); err != nil {
		return err
	}
	if g.mon != nil && g.ranges == nil {
		if g.ranges, err = memoryMap(ctx, g.mon); err != nil {
			return err
		}
	}
	if g.qmpPaused {
		// the stub holds the pause now; Resume goes through it
		g.qmpPaused = false
		return nil
	}
	if !g.wasPaused {
		return g.resume()
	}
	return nil
}

// NumCPU is the number of vCPUs.
func (g *Guest) NumCPU() int { return g.ncpu }

// Spec is where the guest is (zero when opened with OpenEndpoint).
func (g *Guest) Spec() Spec { return g.spec }

// Name is the guest's spec as given.
func (g *Guest) Name() string { return g.ep.Name }

// Process is the process-memory path, nil when memory goes through the
// GDB stub.
func (g *Guest) Process() *ProcMemory { return g.pm }

// Stub is the address of the GDB stub attached, "" while none is.
func (g *Guest) Stub() string {
	g.op.Lock()
	defer g.op.Unlock()
	if g.gdb == nil {
		return ""
	}
	return g.stubAddr
}

// Monitor is the guest's monitor, nil without one.
func (g *Guest) Monitor() Monitor { return g.mon }

// QMP is the guest's QMP client, nil without one (or when the monitor is
// not a QMP socket).
func (g *Guest) QMP() *QMP { return g.qmp }

// JournalPath is where the guest's journal is, "" when Open wrote none.
func (g *Guest) JournalPath() string {
	if g.journal == nil {
		return ""
	}
	return g.journal.path
}

// Ranges lists the guest-physical RAM and ROM ranges (from the monitor).
// Without a monitor it is nil and reads are not checked for holes.
func (g *Guest) Ranges() []vmi.Range { return append([]vmi.Range(nil), g.ranges...) }

// closeTimeout bounds Close when its context has no deadline.
const closeTimeout = 15 * time.Second

// Close restores the guest and disconnects. With the stub attached: it
// stops the guest if it runs (the stub takes commands only then), removes
// every breakpoint and watchpoint set, turns physical-memory mode off,
// detaches (QEMU resumes the guest) unless the guest was paused before
// Open, and closes a stub it opened on demand. A guest paused through QMP
// (Pause without the stub) is let run again (QMP cont) unless it was
// found paused. The journal is removed once all of that went through
// (after an error it stays, for Release). It goes on past errors and
// returns them all. Pass a context that is not cancelled
// (context.WithoutCancel of a cancelled one); it is bounded by
// closeTimeout anyway. Close is the one way to close a Guest.
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
	if g.gdb != nil {
		errs = append(errs, g.closeGDB(ctx)...)
	}
	if g.qmpPaused && !g.wasPaused {
		if err := monExec(ctx, g.mon, "cont"); err != nil {
			errs = append(errs, fmt.Errorf("qemu: close: resuming the guest: %w", err))
		} else {
			g.qmpPaused = false
		}
	}
	if g.pm != nil {
		errs = append(errs, g.pm.Close())
	}
	if g.ownEP && g.ep.Close != nil {
		errs = append(errs, g.ep.Close())
	}
	if err := errors.Join(errs...); err != nil || g.stubLeft {
		// The guest may still hold what the journal names: keep it.
		g.journal.keep()
		return err
	}
	return g.journal.finish()
}

// closeGDB restores what the stub holds and detaches it.
func (g *Guest) closeGDB(ctx context.Context) []error {
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
	// the detach and a QMP stop.
	if !g.wasPaused {
		if err := g.gdb.Detach(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	g.cancel()
	errs = append(errs, g.gdb.Close())
	g.watchWG.Wait()
	if g.mon != nil && g.wasPaused {
		if err := monExec(ctx, g.mon, "stop"); err != nil {
			errs = append(errs, err)
		}
	}
	if g.closeStub != nil {
		if err := g.closeStub(ctx); err != nil {
			errs = append(errs, fmt.Errorf("qemu: close: closing the GDB stub: %w", err))
		}
	}
	return errs
}
