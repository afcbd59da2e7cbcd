package cfi

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// idtGate is the handler of a present 64-bit IDT gate (Intel SDM vol. 3,
// 6.14.1: offset bits 15:0, 31:16 and 63:32 at bytes 0, 6 and 8; P is
// bit 7 of byte 5).
func idtGate(g []byte) (vmi.VA, bool) {
	if g[5]&0x80 == 0 {
		return 0, false
	}
	off := uint64(binary.LittleEndian.Uint16(g[0:])) |
		uint64(binary.LittleEndian.Uint16(g[6:]))<<16 |
		uint64(binary.LittleEndian.Uint32(g[8:]))<<32
	return vmi.VA(off), true
}

// idt checks every present gate of each vCPU's IDT (IDTR base and limit,
// from the CPU state) and of the kernel's idt_table: its handler must be
// in core kernel text.
func (c *checker) idt(ctx context.Context) (int, []Finding, error) {
	type table struct {
		base  vmi.VA
		limit uint32
		what  string
	}
	var tables []table
	seen := map[vmi.VA]bool{}
	for _, cpu := range c.o.cpus {
		if !cpu.HasControl || cpu.IDT.Base == 0 || seen[vmi.VA(cpu.IDT.Base)] {
			continue
		}
		seen[vmi.VA(cpu.IDT.Base)] = true
		tables = append(tables, table{vmi.VA(cpu.IDT.Base), cpu.IDT.Limit, fmt.Sprintf("IDT of cpu %d", cpu.ID)})
	}
	if a, ok := c.k.Symbols.Addr("idt_table"); ok && !seen[a] {
		tables = append(tables, table{a, 256*16 - 1, "idt_table"})
	}
	if len(tables) == 0 {
		return 0, nil, fmt.Errorf("no IDTR in the CPU state and no idt_table symbol: %w", vmerr.ErrNotPresent)
	}
	// The kernel points the 32 exception vectors at early_idt_handler_array
	// (init text) at boot and replaces only those it handles: the others
	// keep their boot-time handler, in init text freed and unmapped since.
	early, earlySpan, _ := c.m.symbolSpan("early_idt_handler_array", 32*16)
	var out []Finding
	checked := 0
	for _, t := range tables {
		n := min(int(t.limit)+1, 256*16) / 16
		b := make([]byte, n*16)
		if _, err := c.k.AS.ReadVirt(b, t.base); err != nil {
			c.problem(t.what, t.base, err)
			continue
		}
		for v := 0; v < n; v++ {
			h, ok := idtGate(b[v*16:])
			if !ok {
				continue
			}
			checked++
			if v < 32 && early != 0 && h >= early && uint64(h-early) < earlySpan {
				continue
			}
			if !c.m.InCore(h) {
				out = append(out, c.m.newFinding(KindIDTHook, h, fmt.Sprintf("%s at %#x, vector %d", t.what, uint64(t.base), v),
					"gate handler outside core kernel text"))
			}
		}
	}
	return checked, out, nil
}
