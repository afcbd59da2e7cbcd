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

// Guest is a running QEMU guest seen through its GDB stub (memory,
// registers, execution control) and its QMP socket (run state, memory
// map, dumps). It is a vmi.Live and a vmi.Tracer over guest-physical
// addresses.
//
// Guest never leaves the guest altered: Close, which every user must call
// (also on error and after the context is cancelled), removes every
// breakpoint and watchpoint it set, turns physical-memory mode off,
// detaches (QEMU then resumes the guest) and, if QMP said the guest was
// paused before Open, leaves it paused. Only a process killed with SIGKILL
// cannot do that: QEMU then keeps the guest stopped, with its traps, and
// the journal Open wrote says what Release must undo.
//
// Between Open and Close the guest runs as it did before Open unless
// Pause stops it. Reads of a running guest stop it for the time of the
// read (each ReadAt is one consistent stop); Pause first for a view
// consistent across reads.
type Guest struct {
	spec     Spec
	gdb      *GDB
	qmp      *QMP // nil without QMP
	target   *Target
	thread   []int // GDB thread id per vCPU index
	ranges   []vmi.Range
	journal  *journal // nil when opened WithoutJournal
	execKind BreakKind

	wasPaused bool // QMP said the guest was not running before Open

	op sync.Mutex // one control operation at a time

	mu       sync.Mutex // the fields below
	running  bool
	runDone  chan struct{} // closed by the watcher when the current run stops
	lastStop Stop
	quiet    bool // the stop ending this run was asked for (Pause, Step): no event
	bps      map[Breakpoint]struct{}
	closed   bool

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

// Open attaches to a live guest described by spec
// (gdb://HOST:PORT[,qmp=unix:PATH]). It takes the guest's journal (an
// error wrapping ErrInUse or ErrLeftBehind when another vmscope holds it
// or one killed left it), records the run state QMP reports, attaches the
// stub (which stops the guest), reads the register layout, the vCPUs
// and, with QMP, the guest-physical memory map, turns on physical-memory
// mode, and lets the guest run again if it was running.
func Open(ctx context.Context, spec string, opts ...Option) (*Guest, error) {
	sp, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	g := &Guest{spec: sp, bps: map[Breakpoint]struct{}{}, events: make(chan vmi.Stop, 64), execKind: SoftwareBreak}
	if o.hardware {
		g.execKind = HardwareBreak
	}
	if !o.noJournal {
		path := o.journal
		if path == "" {
			if path, err = JournalPath(sp); err != nil {
				return nil, err
			}
		}
		if g.journal, err = openJournal(path, sp); err != nil {
			return nil, err
		}
	}
	fail := func(err error) (*Guest, error) {
		if g.qmp != nil {
			g.qmp.Close()
		}
		if g.journal != nil {
			g.journal.discard()
		}
		return nil, err
	}
	found := "unknown"
	if sp.QMP != "" {
		if g.qmp, err = DialQMP(ctx, sp.QMP); err != nil {
			return fail(err)
		}
		st, err := g.qmp.Status(ctx)
		if err != nil {
			return fail(err)
		}
		g.wasPaused = !st.Running
		found = map[bool]string{true: foundRunning, false: foundPaused}[st.Running]
	}
	// The first change: attaching stops the guest.
	if err := g.journal.begin(found); err != nil {
		return fail(err)
	}
	if g.gdb, err = DialGDB(ctx, sp.GDB); err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return fail(err) // nothing attached, nothing changed
		}
		// Connected, then the exchange failed: the stub may hold the
		// guest stopped. The journal stays for Release.
		if g.qmp != nil {
			g.qmp.Close()
		}
		g.journal.keep()
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
	if err := g.journal.update(func(j *journalDoc) { j.PhysicalMode = true }); err != nil {
		return err
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

// NumCPU is the number of vCPUs.
func (g *Guest) NumCPU() int { return len(g.thread) }

// Spec is where the guest is.
func (g *Guest) Spec() Spec { return g.spec }

// QMP is the guest's QMP client, nil without one.
func (g *Guest) QMP() *QMP { return g.qmp }

// JournalPath is where the guest's journal is, "" when Open wrote none.
func (g *Guest) JournalPath() string {
	if g.journal == nil {
		return ""
	}
	return g.journal.path
}

// Ranges lists the guest-physical RAM and ROM ranges (from QMP). Without
// QMP it is nil and reads are not checked for holes.
func (g *Guest) Ranges() []vmi.Range { return append([]vmi.Range(nil), g.ranges...) }

// closeTimeout bounds Close when its context has no deadline.
const closeTimeout = 15 * time.Second

// Close restores the guest and disconnects: it stops the guest if it
// runs (the stub takes commands only then), removes every breakpoint and
// watchpoint set, turns physical-memory mode off, detaches (QEMU resumes
// the guest) unless the guest was paused before Open, and removes the
// journal once all of that went through (after an error it stays, for
// Release). It goes on past errors and returns them all. Pass a context
// that is not cancelled (context.WithoutCancel of a cancelled one); it is
// bounded by closeTimeout anyway. Close is the one way to close a Guest.
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
	// the detach and a QMP stop.
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
	if err := errors.Join(errs...); err != nil {
		// The guest may still hold what the journal names: keep it.
		g.journal.keep()
		return err
	}
	return g.journal.finish()
}
