package vmi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Access is a kind of memory access, a set of read, write and execute
// (gVisor's hostarch.AccessType). A breakpoint is an Execute trap, a
// write watchpoint a Write one.
type Access struct {
	Read, Write, Execute bool
}

// The accesses traps and stop events name.
var (
	NoAccess  = Access{}
	Read      = Access{Read: true}
	Write     = Access{Write: true}
	Execute   = Access{Execute: true}
	ReadWrite = Access{Read: true, Write: true}
	AnyAccess = Access{Read: true, Write: true, Execute: true}
)

// Any reports whether a names at least one access.
func (a Access) Any() bool { return a.Read || a.Write || a.Execute }

// Union is the accesses of a or b.
func (a Access) Union(b Access) Access {
	return Access{Read: a.Read || b.Read, Write: a.Write || b.Write, Execute: a.Execute || b.Execute}
}

// String is "rwx" with '-' for an access not in the set.
func (a Access) String() string {
	b := []byte("---")
	if a.Read {
		b[0] = 'r'
	}
	if a.Write {
		b[1] = 'w'
	}
	if a.Execute {
		b[2] = 'x'
	}
	return string(b)
}

// ParseAccess parses "r", "w", "x", "rw", "rwx" (in any order, '-'
// ignored) into an Access.
func ParseAccess(s string) (Access, error) {
	var a Access
	for _, c := range s {
		switch c {
		case 'r':
			a.Read = true
		case 'w':
			a.Write = true
		case 'x':
			a.Execute = true
		case '-':
		default:
			return NoAccess, fmt.Errorf("vmi: access %q: want letters of rwx", s)
		}
	}
	if !a.Any() {
		return NoAccess, fmt.Errorf("vmi: access %q names no access", s)
	}
	return a, nil
}

// Trap is a breakpoint or a watchpoint at a guest-virtual address (in the
// kernel's address space: the one every vCPU shares). A breakpoint is
// Access Execute and Len 1; a watchpoint is Read, Write or ReadWrite over
// Len bytes (1, 2, 4 or 8, aligned to Len, as the x86 debug registers
// take them).
type Trap struct {
	Addr   VA
	Len    uint64
	Access Access
}

// Breakpoint is the execute trap at va.
func Breakpoint(va VA) Trap { return Trap{Addr: va, Len: 1, Access: Execute} }

// PageExecSize is the length of a page execute trap.
const PageExecSize = 4096

// PageExec is the execute trap on the whole 4 KiB page at va (va rounded
// down): a stop on any instruction fetched from it. Validate refuses it
// (a debug stub breaks on one address); only a backend that traps by
// page permissions accepts it (vmi/libvmi).
func PageExec(va VA) Trap {
	return Trap{Addr: va &^ (PageExecSize - 1), Len: PageExecSize, Access: Execute}
}

// IsPageExec reports whether t is a PageExec trap.
func (t Trap) IsPageExec() bool {
	return t.Access == Execute && t.Len == PageExecSize && t.Addr%PageExecSize == 0
}

// Watchpoint is a trap on accesses a (read, write or both) of n bytes at va.
func Watchpoint(va VA, n uint64, a Access) Trap { return Trap{Addr: va, Len: n, Access: a} }

// ErrBadTrap is a trap a backend cannot set as asked.
var ErrBadTrap = errors.New("vmi: invalid trap")

// Validate checks the shape of a trap: a breakpoint of length 1, or a
// read/write watchpoint of 1, 2, 4 or 8 aligned bytes.
func (t Trap) Validate() error {
	switch {
	case t.Access == Execute:
		if t.Len != 1 {
			return fmt.Errorf("%w: breakpoint at %v of length %d (want 1)", ErrBadTrap, t.Addr, t.Len)
		}
	case t.Access.Execute || !t.Access.Any():
		return fmt.Errorf("%w: access %s at %v (want x, or r, w, rw)", ErrBadTrap, t.Access, t.Addr)
	case t.Len != 1 && t.Len != 2 && t.Len != 4 && t.Len != 8:
		return fmt.Errorf("%w: watchpoint at %v of %d bytes (want 1, 2, 4 or 8)", ErrBadTrap, t.Addr, t.Len)
	case uint64(t.Addr)%t.Len != 0:
		return fmt.Errorf("%w: watchpoint at %v not aligned to its %d bytes", ErrBadTrap, t.Addr, t.Len)
	}
	return nil
}

// Covers reports whether the trap watches or breaks on address a.
func (t Trap) Covers(a VA) bool { return a >= t.Addr && uint64(a-t.Addr) < t.Len }

func (t Trap) String() string {
	if t.Access == Execute {
		return "breakpoint at " + t.Addr.String()
	}
	return fmt.Sprintf("%s watchpoint on %d bytes at %v", t.Access, t.Len, t.Addr)
}

// StopReason is why a traced guest stopped on its own.
type StopReason int

const (
	// StopTrap is a trap hit (a breakpoint or watchpoint), or a step.
	StopTrap StopReason = iota + 1
	// StopPaused is a pause the tracer did not ask for (a QMP stop, another
	// debugger, an interrupt): the guest runs again when its owner says.
	StopPaused
	// StopExited is the guest gone (QEMU quit, the domain destroyed).
	StopExited
)

func (r StopReason) String() string {
	switch r {
	case StopTrap:
		return "trap"
	case StopPaused:
		return "paused"
	case StopExited:
		return "exited"
	}
	return fmt.Sprintf("StopReason(%d)", int(r))
}

// Stop is a stop a traced guest made on its own while it ran.
type Stop struct {
	Reason StopReason
	CPU    int // the vCPU that stopped; -1 when the backend did not say
	// Access is what the trap saw: Execute for a breakpoint, Read, Write
	// or ReadWrite (the backend cannot tell which) for a watchpoint;
	// NoAccess when Reason is not StopTrap.
	Access Access
	// Addr is the watched address accessed for a watchpoint, the
	// instruction's address for a breakpoint when the backend reports it
	// (0 when not: read the vCPU's RIP).
	Addr VA
}

// Tracer is a live guest whose execution can be observed: traps
// (breakpoints and watchpoints) by address and length, single-step, and a
// stream of the stops they cause. Tracing reads the guest and controls
// when it runs; it does not write guest memory or registers (that is a
// Controller). vmi/qemu implements it through the GDB stub; vmi/libvmi
// through LibVMI events.
type Tracer interface {
	Live
	// Regs reads the registers of one vCPU.
	Regs(ctx context.Context, cpu int) (CPU, error)
	// Insert arms a trap; inserting a trap already armed does nothing.
	// Closing the tracer removes every trap it armed.
	Insert(ctx context.Context, t Trap) error
	// Remove disarms a trap Insert armed.
	Remove(ctx context.Context, t Trap) error
	// Step runs one instruction on vCPU cpu of a paused guest, the others
	// staying stopped, and returns the registers after it.
	Step(ctx context.Context, cpu int) (CPU, error)
	// Events is the stream of stops the guest made on its own. It is
	// buffered; a backend drops what does not fit and says how it counts.
	Events() <-chan Stop
}

// RunsOn is a Tracer whose traps do not hold the vCPU: the access
// completes and the guest runs on (LibVMI's emulated memory events), so a
// stop is a notification. Trace neither steps past nor resumes after
// their hits.
type RunsOn interface {
	TrapsRunOn() bool
}

// OthersRunner is a Tracer that can let every vCPU but one run while
// that one stays stopped. A vCPU being stepped (interrupts masked, the
// others stopped) that spins on a lock another vCPU holds waits forever;
// letting the others run a moment, the stepped one still frozen, lets
// the holder release it without any instruction of the stepped vCPU
// going unobserved.
type OthersRunner interface {
	// RunOthers lets every vCPU but cpu of a paused guest run for d (less
	// if one of them stops on its own), then pauses the guest again. It
	// returns how many vCPUs ran: with one vCPU, none.
	RunOthers(ctx context.Context, cpu int, d time.Duration) (int, error)
}

// Controller changes a live guest: its memory and its vCPUs' registers.
// Only system-call injection (package inject) takes one; the read-only
// analyses, the scanners and the tracers never link an implementation
// (cmd/vmscope's dependency test enforces it). vmi/qemu/control
// implements it.
type Controller interface {
	// WritePhys writes p at guest-physical address pa.
	WritePhys(ctx context.Context, p []byte, pa PA) error
	// SetRegs writes the general registers, RIP and RFLAGS of vCPU cpu
	// that differ from want; control and segment registers are left
	// alone.
	SetRegs(ctx context.Context, cpu int, want CPU) error
}

// Hit is a trap hit as Trace reports it: the stop, the traps it matched
// and the registers of the vCPU at the stop.
type Hit struct {
	Stop  Stop
	Traps []Trap
	Regs  CPU
}

// ErrExited is the guest gone while it was traced.
var ErrExited = errors.New("vmi: guest exited")

// Trace arms traps, lets the guest run, and calls onHit for every stop on
// one of them, with the vCPU's registers at the stop. After each hit it
// steps the vCPU past the traps the stop matched with those traps
// removed, re-arms them and resumes, so that one hit is reported once and
// the next pass hits again. It returns when onHit returns false or an
// error, when ctx ends (ctx.Err()), or when the guest exits (ErrExited).
// Stops the tracer did not cause (StopPaused: someone else paused the
// guest) are waited out: the guest runs again when its owner resumes it.
// Trace leaves the traps armed and the guest as the last step left it
// (stopped after a hit that ended the trace, running otherwise); closing
// the tracer removes the traps and restores the run state. With a tracer
// whose traps run on (RunsOn), Hit.Regs are read after the hit, not at it.
func Trace(ctx context.Context, t Tracer, traps []Trap, onHit func(ctx context.Context, h Hit) (more bool, err error)) error {
	for _, tr := range traps {
		if err := tr.Validate(); err != nil {
			return err
		}
		if err := t.Insert(ctx, tr); err != nil {
			return err
		}
	}
	if err := t.Resume(ctx); err != nil {
		return err
	}
	for {
		var st Stop
		select {
		case <-ctx.Done():
			return ctx.Err()
		case st = <-t.Events():
		}
		switch st.Reason {
		case StopExited:
			return ErrExited
		case StopTrap:
		default:
			continue // paused by someone else: wait until they resume it
		}
		cpu := max(st.CPU, 0)
		regs, err := t.Regs(ctx, cpu)
		if err != nil {
			return err
		}
		hit := Hit{Stop: st, Regs: regs, Traps: matching(traps, st, VA(regs.RIP))}
		more, err := onHit(ctx, hit)
		if err != nil || !more {
			return err
		}
		if r, ok := t.(RunsOn); ok && r.TrapsRunOn() {
			continue
		}
		if err := stepPast(ctx, t, cpu, hit.Traps); err != nil {
			return err
		}
		if err := t.Resume(ctx); err != nil {
			return err
		}
	}
}

// matching is the traps a stop hit: execute traps at rip for a
// breakpoint stop, watchpoints covering the accessed address for a
// watchpoint stop.
func matching(traps []Trap, st Stop, rip VA) []Trap {
	var out []Trap
	for _, tr := range traps {
		if tr.Access == Execute {
			if tr.Addr == rip {
				out = append(out, tr)
			}
		} else if st.Access != Execute && st.Access.Any() && tr.Covers(st.Addr) {
			out = append(out, tr)
		}
	}
	return out
}

// stepPast removes traps, steps vCPU cpu one instruction and re-arms
// them, so that resuming does not stop on the same instruction again.
func stepPast(ctx context.Context, t Tracer, cpu int, traps []Trap) error {
	for _, tr := range traps {
		if err := t.Remove(ctx, tr); err != nil {
			return err
		}
	}
	_, err := t.Step(ctx, cpu)
	var errs []error
	if err != nil {
		errs = append(errs, fmt.Errorf("vmi: stepping past %s: %w", joinTraps(traps), err))
	}
	for _, tr := range traps {
		if err := t.Insert(ctx, tr); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func joinTraps(traps []Trap) string {
	var s []string
	for _, t := range traps {
		s = append(s, t.String())
	}
	if len(s) == 0 {
		return "a trap"
	}
	return strings.Join(s, ", ")
}
