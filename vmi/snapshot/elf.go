package snapshot

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/vmscope/vmscope/vmi"
)

var le = binary.LittleEndian

const (
	ptLoad = 1
	ptNote = 4
	pnXNum = 0xffff

	ntPRStatus = 1
	// sizes and offsets of QEMU's x86_64_elf_prstatus and QEMUCPUState
	// (target/i386/arch_dump.c)
	prstatusRegs   = 112 // offset of user_regs_struct
	userRegsSize   = 27 * 8
	qemuStateV0    = 432 // QEMUCPUState up to cr[5]
	qemuSegSize    = 24
	qemuKernelGSBs = 432 // kernel_gs_base, version 1 and size >= 440
)

// openELF reads a 64-bit little-endian x86-64 ELF core: PT_LOAD segments by
// p_paddr, CORE NT_PRSTATUS and QEMU notes in PT_NOTE segments.
func (s *Snapshot) openELF() error {
	var h [64]byte
	if _, err := s.r.ReadAt(h[:], 0); err != nil {
		return fmt.Errorf("snapshot: ELF header at offset 0: %v: %w", err, ErrCorrupt)
	}
	if h[4] != 2 || h[5] != 1 {
		return fmt.Errorf("snapshot: ELF class %d data %d at offset 4 (want 64-bit little-endian): %w", h[4], h[5], ErrUnsupported)
	}
	if t := le.Uint16(h[16:]); t != 4 {
		return fmt.Errorf("snapshot: ELF type %d at offset 16 is not a core (4): %w", t, ErrUnsupported)
	}
	if m := le.Uint16(h[18:]); m != 62 {
		return fmt.Errorf("snapshot: ELF machine %d at offset 18 is not x86-64 (62): %w", m, ErrUnsupported)
	}
	phoff := le.Uint64(h[32:])
	shoff := le.Uint64(h[40:])
	phentsize := uint64(le.Uint16(h[54:]))
	phnum := uint64(le.Uint16(h[56:]))
	if phentsize < 56 {
		return fmt.Errorf("snapshot: ELF e_phentsize %d at offset 54: %w", phentsize, ErrCorrupt)
	}
	if phnum == pnXNum { // the real count is section 0's sh_info
		var sh [64]byte
		if _, err := s.r.ReadAt(sh[:], int64(min(shoff, 1<<62))); err != nil {
			return fmt.Errorf("snapshot: ELF section header 0 at offset %#x: %v: %w", shoff, err, ErrCorrupt)
		}
		phnum = uint64(le.Uint32(sh[44:]))
	}
	if phnum > maxSegments+16 {
		return fmt.Errorf("snapshot: ELF has %d program headers (cap %d): %w", phnum, maxSegments+16, ErrUnsupported)
	}
	if phoff > uint64(s.size) || phnum*phentsize > uint64(s.size)-phoff {
		return fmt.Errorf("snapshot: ELF program headers at offset %#x (%d of %d bytes) past the end of the file: %w", phoff, phnum, phentsize, ErrCorrupt)
	}
	var segs []segment
	var notes []byte
	ph := make([]byte, 56)
	for i := uint64(0); i < phnum; i++ {
		at := phoff + i*phentsize
		if _, err := s.r.ReadAt(ph, int64(at)); err != nil {
			return fmt.Errorf("snapshot: ELF program header %d at offset %#x: %v: %w", i, at, err, ErrCorrupt)
		}
		typ := le.Uint32(ph)
		off, paddr := le.Uint64(ph[8:]), le.Uint64(ph[24:])
		filesz, memsz := le.Uint64(ph[32:]), le.Uint64(ph[40:])
		switch typ {
		case ptLoad:
			if filesz > memsz || off > 1<<62 {
				return fmt.Errorf("snapshot: ELF PT_LOAD %d at offset %#x: p_filesz %#x > p_memsz %#x or bad p_offset: %w", i, at, filesz, memsz, ErrCorrupt)
			}
			if len(segs) >= maxSegments {
				return fmt.Errorf("snapshot: ELF has more than %d PT_LOADs: %w", maxSegments, ErrUnsupported)
			}
			segs = append(segs, segment{start: vmi.PA(paddr), size: memsz, off: int64(off), fileSize: filesz})
		case ptNote:
			if filesz > maxNotes || uint64(len(notes))+filesz > maxNotes || off > uint64(s.size) || filesz > uint64(s.size)-off {
				return fmt.Errorf("snapshot: ELF PT_NOTE %d at offset %#x: %#x bytes at %#x do not fit (cap %d): %w", i, at, filesz, off, maxNotes, ErrCorrupt)
			}
			b := make([]byte, filesz)
			if _, err := s.r.ReadAt(b, int64(off)); err != nil && !(err == io.EOF && filesz == 0) {
				return fmt.Errorf("snapshot: ELF PT_NOTE %d data at offset %#x: %v: %w", i, off, err, ErrCorrupt)
			}
			notes = append(notes, b...)
		}
	}
	if err := s.addSegments(segs, "ELF PT_LOAD"); err != nil {
		return err
	}
	cpus, err := parseNotes(notes)
	if err != nil {
		return fmt.Errorf("snapshot: ELF notes: %w", err)
	}
	s.cpus = cpus
	return nil
}

// parseNotes reads ELF notes: the i-th CORE NT_PRSTATUS and the i-th QEMU
// note describe vCPU i (QEMU writes all PRSTATUS notes, then all QEMU notes).
func parseNotes(b []byte) ([]vmi.CPU, error) {
	var cpus []vmi.CPU
	nQEMU := 0
	cpu := func(i int) *vmi.CPU {
		for len(cpus) <= i {
			cpus = append(cpus, vmi.CPU{ID: len(cpus)})
		}
		return &cpus[i]
	}
	nCore := 0
	for off := 0; off+12 <= len(b); {
		namesz, descsz, typ := int(le.Uint32(b[off:])), int(le.Uint32(b[off+4:])), le.Uint32(b[off+8:])
		nameOff := off + 12
		descOff := nameOff + align4(namesz)
		end := descOff + align4(descsz)
		if namesz < 0 || descsz < 0 || namesz > len(b) || descsz > len(b) || descOff > len(b) || end > len(b) || descOff+descsz > len(b) {
			return nil, fmt.Errorf("note at offset %#x: name %d and desc %d bytes past the end (%d): %w", off, namesz, descsz, len(b), ErrCorrupt)
		}
		name := string(b[nameOff : nameOff+namesz])
		desc := b[descOff : descOff+descsz]
		switch {
		case name == "CORE\x00" && typ == ntPRStatus:
			if nCore >= maxCPUs {
				return nil, fmt.Errorf("more than %d CPUs: %w", maxCPUs, ErrUnsupported)
			}
			if len(desc) < prstatusRegs+userRegsSize {
				return nil, fmt.Errorf("NT_PRSTATUS note at offset %#x: %d bytes, want %d: %w", off, len(desc), prstatusRegs+userRegsSize, ErrCorrupt)
			}
			parsePRStatus(cpu(nCore), desc[prstatusRegs:])
			nCore++
		case name == "QEMU\x00":
			if nQEMU >= maxCPUs {
				return nil, fmt.Errorf("more than %d CPUs: %w", maxCPUs, ErrUnsupported)
			}
			if err := parseQEMUState(cpu(nQEMU), desc); err != nil {
				return nil, fmt.Errorf("QEMU note at offset %#x: %w", off, err)
			}
			nQEMU++
		}
		off = end
	}
	return cpus, nil
}

func align4(n int) int { return (n + 3) &^ 3 }

// parsePRStatus reads x86-64 struct user_regs_struct.
func parsePRStatus(c *vmi.CPU, r []byte) {
	g := func(i int) uint64 { return le.Uint64(r[i*8:]) }
	c.R15, c.R14, c.R13, c.R12, c.RBP, c.RBX = g(0), g(1), g(2), g(3), g(4), g(5)
	c.R11, c.R10, c.R9, c.R8, c.RAX, c.RCX = g(6), g(7), g(8), g(9), g(10), g(11)
	c.RDX, c.RSI, c.RDI = g(12), g(13), g(14)
	c.RIP = g(16)
	c.CS.Selector = uint16(g(17))
	c.RFLAGS, c.RSP = g(18), g(19)
	c.SS.Selector = uint16(g(20))
	c.FSBase, c.GSBase = g(21), g(22)
	c.DS.Selector, c.ES.Selector, c.FS.Selector, c.GS.Selector = uint16(g(23)), uint16(g(24)), uint16(g(25)), uint16(g(26))
	c.HasGPRs = true
}

// parseQEMUState reads QEMU's QEMUCPUState: version, size, the general
// registers, rip, rflags, cs ds es fs gs ss ldt tr gdt idt (selector,
// limit, flags, pad, base), cr[5], and from version 1 kernel_gs_base.
// It holds no EFER.
func parseQEMUState(c *vmi.CPU, d []byte) error {
	if len(d) < qemuStateV0 {
		return fmt.Errorf("QEMUCPUState of %d bytes, want at least %d: %w", len(d), qemuStateV0, ErrCorrupt)
	}
	size := le.Uint32(d[4:])
	if size < qemuStateV0 || uint64(size) > uint64(len(d)) {
		return fmt.Errorf("QEMUCPUState size field %d (note %d bytes): %w", size, len(d), ErrCorrupt)
	}
	version := le.Uint32(d)
	g := func(i int) uint64 { return le.Uint64(d[8+i*8:]) }
	c.RAX, c.RBX, c.RCX, c.RDX, c.RSI, c.RDI, c.RSP, c.RBP = g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7)
	c.R8, c.R9, c.R10, c.R11, c.R12, c.R13, c.R14, c.R15 = g(8), g(9), g(10), g(11), g(12), g(13), g(14), g(15)
	c.RIP, c.RFLAGS = g(16), g(17)
	seg := func(i int) vmi.Segment {
		o := 8 + 18*8 + i*qemuSegSize
		return vmi.Segment{Selector: uint16(le.Uint32(d[o:])), Limit: le.Uint32(d[o+4:]), Flags: le.Uint32(d[o+8:]), Base: le.Uint64(d[o+16:])}
	}
	c.CS, c.DS, c.ES, c.FS, c.GS, c.SS = seg(0), seg(1), seg(2), seg(3), seg(4), seg(5)
	c.LDT, c.TR, c.GDT, c.IDT = seg(6), seg(7), seg(8), seg(9)
	c.FSBase, c.GSBase = c.FS.Base, c.GS.Base
	cr := 8 + 18*8 + 10*qemuSegSize
	c.CR0, c.CR2, c.CR3, c.CR4 = le.Uint64(d[cr:]), le.Uint64(d[cr+16:]), le.Uint64(d[cr+24:]), le.Uint64(d[cr+32:])
	if version >= 1 && size >= qemuKernelGSBs+8 {
		c.KernelGSBase = le.Uint64(d[qemuKernelGSBs:])
		c.HasKernelGSBase = true
	}
	c.HasGPRs, c.HasControl = true, true
	return nil
}
