package qemu

import (
	"context"
	"fmt"
	"sort"

	"github.com/vmscope/vmscope/vmi"
)

// Breakpoint is a trap as the stub takes it: a Z packet's type, a
// guest-virtual address and a length.
type Breakpoint struct {
	Kind BreakKind
	Addr vmi.VA
	Size int // watched bytes (1, 2, 4, 8); 1 for breakpoints
}

// The signals of the stub's stop replies (GDB's numbering).
const (
	sigINT  = 2 // interrupted: a pause someone asked for
	sigTRAP = 5 // a breakpoint, a watchpoint or a step
)

// breakpointOf maps a vmi.Trap to the stub's trap: an execute trap is a
// software breakpoint (Z0, or Z1 WithHardwareBreakpoints), a write, read
// or read-write watchpoint Z2, Z3 or Z4.
func (g *Guest) breakpointOf(t vmi.Trap) (Breakpoint, error) {
	if err := t.Validate(); err != nil {
		return Breakpoint{}, err
	}
	bp := Breakpoint{Addr: t.Addr, Size: int(t.Len)}
	switch t.Access {
	case vmi.Execute:
		bp.Kind = g.execKind
	case vmi.Write:
		bp.Kind = WriteWatch
	case vmi.Read:
		bp.Kind = ReadWatch
	case vmi.ReadWrite:
		bp.Kind = AccessWatch
	}
	return bp, nil
}

// stopOf maps a stop reply to a vmi.Stop.
func stopOf(s Stop) vmi.Stop {
	st := vmi.Stop{CPU: s.Thread - 1}
	switch {
	case s.Exited:
		st.Reason = vmi.StopExited
	case s.Signal == sigTRAP:
		st.Reason = vmi.StopTrap
		switch s.Watch {
		case "watch":
			st.Access = vmi.Write
		case "rwatch":
			st.Access = vmi.Read
		case "awatch":
			st.Access = vmi.ReadWrite
		default:
			st.Access = vmi.Execute
		}
		st.Addr = vmi.VA(s.Addr)
	default:
		st.Reason = vmi.StopPaused
	}
	return st
}

// Insert arms a trap (vmi.Tracer); Close removes it.
func (g *Guest) Insert(ctx context.Context, t vmi.Trap) error {
	bp, err := g.breakpointOf(t)
	if err != nil {
		return err
	}
	return g.SetBreakpoint(ctx, bp)
}

// Remove disarms a trap Insert armed (vmi.Tracer).
func (g *Guest) Remove(ctx context.Context, t vmi.Trap) error {
	bp, err := g.breakpointOf(t)
	if err != nil {
		return err
	}
	return g.ClearBreakpoint(ctx, bp)
}

// SetBreakpoint sets a breakpoint or watchpoint as the stub takes it;
// Close removes it. The journal records it before it is inserted.
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
		if err := g.journal.addTrap(bp); err != nil {
			return err
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
