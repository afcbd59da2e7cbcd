// Package control is the write side of a live QEMU guest: it implements
// vmi.Controller (guest-physical memory and vCPU registers) over a
// qemu.Guest's GDB stub, with the 'M' and 'P' packets. It is a package
// of its own so that what links it can be checked: only system-call
// injection (package inject) may import it; the read-only analyses, the
// scanners and the tracers never do (cmd/vmscope's dependency test
// enforces it).
//
// Invariants: a write goes to guest-physical RAM the memory map lists
// (never a hole, never MMIO), in packets the stub takes (at most its
// packet size); each write runs with the guest stopped and no other
// operation of the Guest in flight; only the general registers, RIP and
// RFLAGS are written, never control or segment registers.
package control

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// Controller writes to a live QEMU guest.
type Controller struct {
	g *qemu.Guest
}

var _ vmi.Controller = (*Controller)(nil)

// New is the Controller of an open Guest. Closing the Guest ends it.
func New(g *qemu.Guest) *Controller { return &Controller{g: g} }

// ErrOutside is a write that is not wholly inside guest-physical RAM.
var ErrOutside = errors.New("control: write outside guest RAM")

// WritePhys writes p at guest-physical address pa. The whole write must
// lie in one range of the memory map (QMP); without QMP it is refused.
func (c *Controller) WritePhys(ctx context.Context, p []byte, pa vmi.PA) error {
	if len(p) == 0 {
		return nil
	}
	end, ok := pa.Add(uint64(len(p)))
	if !ok {
		return fmt.Errorf("%w: %v+%#x overflows", ErrOutside, pa, len(p))
	}
	inside := false
	for _, r := range c.g.Ranges() {
		if r.Contains(pa) && end <= r.End() {
			inside = true
			break
		}
	}
	if !inside {
		return fmt.Errorf("%w: %v+%#x (the memory map needs QMP)", ErrOutside, pa, len(p))
	}
	return c.g.Exclusive(ctx, func(s qemu.Session) error {
		// "M" addr "," len ":" hex, within the packet size.
		chunk := (s.GDB.PacketSize() - 40) / 2
		for off := 0; off < len(p); off += chunk {
			n := min(chunk, len(p)-off)
			a := uint64(pa) + uint64(off)
			q := fmt.Sprintf("M%x,%x:%s", a, n, hex.EncodeToString(p[off:off+n]))
			if err := s.GDB.Exec(ctx, q); err != nil {
				return fmt.Errorf("control: write guest-physical %#x: %w", a, err)
			}
		}
		return nil
	})
}

// writable are the registers SetRegs writes, by their name in the
// stub's target description.
func writable(c *vmi.CPU) map[string]*uint64 {
	return map[string]*uint64{
		"rax": &c.RAX, "rbx": &c.RBX, "rcx": &c.RCX, "rdx": &c.RDX,
		"rsi": &c.RSI, "rdi": &c.RDI, "rbp": &c.RBP, "rsp": &c.RSP,
		"r8": &c.R8, "r9": &c.R9, "r10": &c.R10, "r11": &c.R11,
		"r12": &c.R12, "r13": &c.R13, "r14": &c.R14, "r15": &c.R15,
		"rip": &c.RIP, "eflags": &c.RFLAGS,
	}
}

// SetRegs writes the general registers, RIP and RFLAGS of vCPU cpu that
// differ from their current values ('P', one register at a time).
// Control registers, bases and segments are left alone.
func (c *Controller) SetRegs(ctx context.Context, cpu int, want vmi.CPU) error {
	return c.g.Exclusive(ctx, func(s qemu.Session) error {
		if cpu < 0 || cpu >= len(s.Threads) {
			return fmt.Errorf("control: no vCPU %d", cpu)
		}
		cur, err := s.Regs(ctx, cpu)
		if err != nil {
			return err
		}
		have, to := writable(&cur), writable(&want)
		for name, w := range to {
			if *have[name] == *w {
				continue
			}
			r, ok := s.Target.Reg(name)
			if !ok || r.Bits < 8 || r.Bits > 64 {
				return fmt.Errorf("control: the stub has no 64-bit register %s", name)
			}
			var v [8]byte
			binary.LittleEndian.PutUint64(v[:], *w)
			if err := s.GDB.SelectThread(ctx, s.Threads[cpu]); err != nil {
				return err
			}
			q := fmt.Sprintf("P%x=%s", r.Num, hex.EncodeToString(v[:r.Bits/8]))
			if err := s.GDB.Exec(ctx, q); err != nil {
				return fmt.Errorf("control: set %s of vCPU %d: %w", name, cpu, err)
			}
		}
		return nil
	})
}
