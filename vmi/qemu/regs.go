package qemu

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/vmscope/vmscope/vmi"
)

// CPUs returns the registers of every vCPU: through the stub when it is
// attached (at one stop), else from HMP "info registers -a" (the guest
// keeps running; Pause first for a consistent view).
func (g *Guest) CPUs(ctx context.Context) ([]vmi.CPU, error) {
	if c, ok, err := g.hmpRegs(ctx); ok {
		return c, err
	}
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

// hmpRegs reads the registers through HMP when the stub is not attached
// and there is a monitor (ok false: use the stub).
func (g *Guest) hmpRegs(ctx context.Context) ([]vmi.CPU, bool, error) {
	g.op.Lock()
	defer g.op.Unlock()
	if err := g.checkOpen(); err != nil {
		return nil, true, err
	}
	if g.gdb != nil || g.mon == nil {
		return nil, false, nil
	}
	cpus, err := hmpCPUs(ctx, g.mon)
	if err == nil && len(cpus) != g.ncpu {
		err = fmt.Errorf("%w: info registers -a lists %d vCPUs, query-cpus-fast %d", ErrMonitor, len(cpus), g.ncpu)
	}
	return cpus, true, err
}

// Regs returns the registers of vCPU cpu (from HMP, as CPUs, while the
// stub is not attached).
func (g *Guest) Regs(ctx context.Context, cpu int) (vmi.CPU, error) {
	if cs, ok, err := g.hmpRegs(ctx); ok {
		if err != nil {
			return vmi.CPU{}, err
		}
		if cpu < 0 || cpu >= len(cs) {
			return vmi.CPU{}, fmt.Errorf("qemu: registers: no vCPU %d", cpu)
		}
		return cs[cpu], nil
	}
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
