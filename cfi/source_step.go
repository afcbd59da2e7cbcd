package cfi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// StepSource single-steps bounded windows: a breakpoint on Entry (a
// function's first instruction, e.g. a system call's __x64_sys_*), then
// from each hit one instruction at a time (QEMU masks interrupts and
// timers while it steps: its default qemu.sstep flags) until the function
// returns to the address on the stack at entry, or MaxSteps. Every page
// change inside a window is an Event with its From page: exact page
// sequences of that function. Between windows the guest runs with the one
// breakpoint armed; Run removes it and leaves the guest running.
type StepSource struct {
	Guest vmi.Tracer
	AS    vmi.AddressSpace // for the return address at entry
	Entry vmi.VA
	// MaxSteps bounds a window (default 20000); Windows the windows of a
	// run (0: until ctx ends).
	MaxSteps, Windows int

	windows, steps, cut atomic.Int64
	armed               bool // the entry breakpoint is set
}

// StepStats count a stepping run.
type StepStats struct {
	Windows int64 // windows stepped
	Steps   int64 // instructions stepped
	Cut     int64 // windows that reached MaxSteps before the return
}

// Stats returns the counts so far.
func (s *StepSource) Stats() StepStats {
	return StepStats{Windows: s.windows.Load(), Steps: s.steps.Load(), Cut: s.cut.Load()}
}

// Name is "step".
func (s *StepSource) Name() string { return "step" }

// errWindowsDone ends a run after Windows windows.
var errWindowsDone = errors.New("cfi: windows done")

// Run steps windows until ctx ends or Windows are done.
func (s *StepSource) Run(ctx context.Context, emit func(Event) error) (err error) {
	if s.Entry < KernelMin {
		return fmt.Errorf("cfi: step entry %#x is not a kernel address", uint64(s.Entry))
	}
	if s.MaxSteps <= 0 {
		s.MaxSteps = 20000
	}
	trap := vmi.Breakpoint(s.Entry)
	s.armed = true // Trace arms it first thing
	defer func() {
		// Leave the guest running without the breakpoint, whatever ended
		// the run (Trace leaves it armed, and stopped after a last hit).
		c := context.WithoutCancel(ctx)
		if s.armed {
			err = errors.Join(err, s.Guest.Remove(c, trap))
		}
		err = errors.Join(err, s.Guest.Resume(c))
	}()
	err = vmi.Trace(ctx, s.Guest, []vmi.Trap{trap}, func(ctx context.Context, h vmi.Hit) (bool, error) {
		if err := s.window(ctx, h, trap, emit); err != nil {
			return false, err
		}
		if s.Windows > 0 && s.windows.Load() >= int64(s.Windows) {
			return false, errWindowsDone
		}
		return true, nil
	})
	if errors.Is(err, errWindowsDone) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}

// window steps one window from a hit on the entry breakpoint.
func (s *StepSource) window(ctx context.Context, h vmi.Hit, trap vmi.Trap, emit func(Event) error) error {
	cpu := max(h.Stop.CPU, 0)
	regs := h.Regs
	var rb [8]byte
	if _, err := s.AS.ReadVirt(rb[:], vmi.VA(regs.RSP)); err != nil {
		return fmt.Errorf("cfi: step: return address at %#x: %w", regs.RSP, err)
	}
	ret := vmi.VA(binary.LittleEndian.Uint64(rb[:]))
	s.windows.Add(1)
	prev := pageOf(vmi.VA(regs.RIP))
	if err := emit(Event{CPU: cpu, Page: prev, Addr: vmi.VA(regs.RIP), Time: time.Now()}); err != nil {
		return err
	}
	// Step without the breakpoint (a recursive call would stop on it).
	if err := s.Guest.Remove(ctx, trap); err != nil {
		return err
	}
	s.armed = false
	defer func() {
		if s.Guest.Insert(context.WithoutCancel(ctx), trap) == nil {
			s.armed = true
		}
	}()
	for n := 0; ; n++ {
		if n >= s.MaxSteps {
			s.cut.Add(1)
			return nil
		}
		c, err := s.Guest.Step(ctx, cpu)
		if err != nil {
			return err
		}
		s.steps.Add(1)
		rip := vmi.VA(c.RIP)
		if rip == ret || c.CS.Selector&3 != 0 || rip < KernelMin {
			return nil
		}
		if pg := pageOf(rip); pg != prev {
			if err := emit(Event{CPU: cpu, Page: pg, From: prev, Addr: rip, Time: time.Now()}); err != nil {
				return err
			}
			prev = pg
		}
	}
}
