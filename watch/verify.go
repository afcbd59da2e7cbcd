package watch

import (
	"golang.org/x/arch/x86/x86asm"

	"github.com/vmscope/vmscope/vmi"
)

// maxDecodeBack bounds how much of a function is decoded to find the
// instruction before a stop's RIP.
const maxDecodeBack = 16 << 10

// prevInst decodes the instruction that ends at rip: the function
// containing rip (kallsyms) is decoded from its start. ok is false when
// decoding does not land on rip exactly (an unknown function, bytes that
// are not code, a function longer than maxDecodeBack).
func (x *Watcher) prevInst(rip vmi.VA) (x86asm.Inst, bool) {
	_, off, ok := x.z.Lookup(rip)
	if !ok || off == 0 || off > maxDecodeBack {
		return x86asm.Inst{}, false
	}
	code := make([]byte, off)
	if n, err := x.w.mem.ReadVirt(code, rip-vmi.VA(off)); err != nil || n != len(code) {
		return x86asm.Inst{}, false
	}
	var last x86asm.Inst
	for i := 0; i < len(code); {
		inst, err := x86asm.Decode(code[i:], 64)
		if err != nil || inst.Len == 0 {
			return x86asm.Inst{}, false
		}
		i += inst.Len
		last = inst
		if i == len(code) {
			return last, true
		}
	}
	return x86asm.Inst{}, false
}

// implicitRegs are instructions that write registers their operands do
// not name (or whose memory access is not their explicit operand): the
// address of their access cannot be recomputed from the registers after
// them.
var implicitRegs = map[x86asm.Op]bool{
	x86asm.CMPXCHG: true, x86asm.CMPXCHG8B: true, x86asm.CMPXCHG16B: true, x86asm.XCHG: true, x86asm.XADD: true,
	x86asm.MUL: true, x86asm.IMUL: true, x86asm.DIV: true, x86asm.IDIV: true,
	x86asm.PUSH: true, x86asm.POP: true, x86asm.CALL: true, x86asm.RET: true, x86asm.JMP: true,
	x86asm.ENTER: true, x86asm.LEAVE: true, x86asm.CPUID: true, x86asm.RDMSR: true, x86asm.RDTSC: true,
	x86asm.LODSB: true, x86asm.LODSW: true, x86asm.LODSD: true, x86asm.LODSQ: true,
	x86asm.STOSB: true, x86asm.STOSW: true, x86asm.STOSD: true, x86asm.STOSQ: true,
	x86asm.MOVSB: true, x86asm.MOVSW: true, x86asm.MOVSD: true, x86asm.MOVSQ: true,
	x86asm.SCASB: true, x86asm.SCASW: true, x86asm.SCASD: true, x86asm.SCASQ: true,
	x86asm.CMPSB: true, x86asm.CMPSW: true, x86asm.CMPSD: true, x86asm.CMPSQ: true,
}

// memAccess is the range the explicit memory operand of inst (which ended
// at rip) accessed, recomputed from the registers after it. ok is false
// when that cannot be known for sure: no memory operand or several, a
// segment base (per-CPU data), an unknown size, or an instruction that
// writes a register its address uses.
func memAccess(inst x86asm.Inst, rip vmi.VA, regs vmi.CPU) (lo, hi vmi.VA, ok bool) {
	if implicitRegs[inst.Op] || inst.MemBytes <= 0 {
		return 0, 0, false
	}
	var mem *x86asm.Mem
	var written []x86asm.Reg
	for _, a := range inst.Args {
		switch a := a.(type) {
		case x86asm.Mem:
			if mem != nil {
				return 0, 0, false
			}
			m := a
			mem = &m
		case x86asm.Reg:
			written = append(written, a)
		}
	}
	if mem == nil || mem.Segment != 0 {
		return 0, 0, false
	}
	addr := uint64(mem.Disp)
	for _, r := range []struct {
		reg   x86asm.Reg
		scale uint64
	}{{mem.Base, 1}, {mem.Index, uint64(mem.Scale)}} {
		if r.reg == 0 {
			continue
		}
		v, ok := regValue(r.reg, rip, regs)
		if !ok {
			return 0, 0, false
		}
		for _, w := range written {
			if family(w) == family(r.reg) {
				return 0, 0, false
			}
		}
		addr += v * max(r.scale, 1)
	}
	return vmi.VA(addr), vmi.VA(addr + uint64(inst.MemBytes)), true
}

// family is the 64-bit register a general register is part of (0 for
// other registers).
func family(r x86asm.Reg) x86asm.Reg {
	switch {
	case r >= x86asm.RAX && r <= x86asm.R15:
		return r
	case r >= x86asm.EAX && r <= x86asm.R15L:
		return x86asm.RAX + (r - x86asm.EAX)
	case r >= x86asm.AX && r <= x86asm.R15W:
		return x86asm.RAX + (r - x86asm.AX)
	case r >= x86asm.AL && r <= x86asm.BL:
		return x86asm.RAX + (r - x86asm.AL)
	case r >= x86asm.AH && r <= x86asm.BH:
		return x86asm.RAX + (r - x86asm.AH)
	case r >= x86asm.SPB && r <= x86asm.R15B:
		return x86asm.RSP + (r - x86asm.SPB)
	}
	return 0
}

// regValue is the value of an address register after the instruction
// (RIP: the address after it).
func regValue(r x86asm.Reg, rip vmi.VA, c vmi.CPU) (uint64, bool) {
	if r == x86asm.RIP {
		return uint64(rip), true
	}
	v := []uint64{c.RAX, c.RCX, c.RDX, c.RBX, c.RSP, c.RBP, c.RSI, c.RDI, c.R8, c.R9, c.R10, c.R11, c.R12, c.R13, c.R14, c.R15}
	switch {
	case r >= x86asm.RAX && r <= x86asm.R15:
		return v[r-x86asm.RAX], true
	case r >= x86asm.EAX && r <= x86asm.R15L:
		return v[r-x86asm.EAX] & 0xffffffff, true
	}
	return 0, false
}

// verifyInst keeps the hits the instruction before RIP really accessed:
// QEMU's TCG can report an access to a watched page against a watched
// range it does not overlap (measured on 5.10: a write in
// __ext4_new_inode to a new inode reported against the i_rwsem of a
// watched inode on the same page). When the instruction and its memory
// operand can be recomputed (memAccess), a hit its range does not
// overlap is dropped; otherwise the hits are kept as they are.
func (x *Watcher) verifyInst(regs vmi.CPU, hits []vmi.Trap) []vmi.Trap {
	rip := vmi.VA(regs.RIP)
	inst, ok := x.prevInst(rip)
	if !ok {
		return hits
	}
	lo, hi, ok := memAccess(inst, rip, regs)
	if !ok {
		return hits
	}
	var keep []vmi.Trap
	for _, tr := range hits {
		if tr.Access == vmi.Execute || tr.Addr < hi && lo < tr.Addr+vmi.VA(tr.Len) {
			keep = append(keep, tr)
		}
	}
	return keep
}
