package cfi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// KindKallsymsModified: bytes of the kernel's kallsyms tables that differ
// from the build's image (a rootkit renaming, moving or hiding symbols).
const KindKallsymsModified Kind = "kallsyms-modified"

// Caps on the kallsyms tables read from the image.
const (
	maxKallsymsSyms = 1 << 22
	maxKallsymsSpan = 64 << 20
)

// kallsymsTable is one of the kallsyms tables of the image: name, link
// address and size.
type kallsymsTable struct {
	name string
	link vmi.VA
	size uint64
}

// kallsymsTables finds the kallsyms tables in the image's .rodata, laid
// out by scripts/kallsyms.c, each label 8-aligned:
//
//	kallsyms_offsets        s32 x num_syms
//	kallsyms_relative_base  u64 (a 64-bit relocation)
//	kallsyms_num_syms       u32
//	kallsyms_names          num_syms x (len, len bytes); len >= 0x80 takes two bytes
//	kallsyms_markers        u32 x ceil(num_syms/256): offset in names of every 256th symbol
//	kallsyms_seqs_of_names  3 bytes a symbol (6.1 stable, 6.2 on; optional)
//	kallsyms_token_table    256 NUL-terminated tokens
//	kallsyms_token_index    u16 x 256: offset of each token in the table
//
// The image is the reference: the candidate is the only 64-bit relocation
// in .rodata followed by a symbol count whose names end where markers
// start that agree with them, the token index agreeing with its table.
func (ti *textImage) kallsymsTables() ([]kallsymsTable, error) {
	ro, lo := ti.section(".rodata")
	if ro == nil {
		return nil, fmt.Errorf("cfi: kernel image has no readable .rodata: %w", vmerr.ErrUnsupported)
	}
	rs := ti.relocs[2]
	i := sort.Search(len(rs), func(i int) bool { return rs[i] >= lo })
	for ; i < len(rs) && rs[i] < lo+vmi.VA(len(ro)); i++ {
		if rs[i]%8 != 0 {
			continue
		}
		if t, ok := kallsymsAt(ro, int(rs[i]-lo)); ok {
			for j := range t {
				t[j].link += lo
			}
			return t, nil
		}
	}
	return nil, fmt.Errorf("cfi: no kallsyms tables in the kernel image's .rodata: %w", vmerr.ErrUnsupported)
}

// kallsymsAt parses the tables around kallsyms_relative_base at offset
// base of ro (offsets relative to ro).
func kallsymsAt(ro []byte, base int) ([]kallsymsTable, bool) {
	if base+16 > len(ro) {
		return nil, false
	}
	num := int(binary.LittleEndian.Uint32(ro[base+8:]))
	if num == 0 || num > maxKallsymsSyms || binary.LittleEndian.Uint32(ro[base+12:]) != 0 || 4*num > base {
		return nil, false
	}
	offs := (base - 4*num) &^ 7
	names := base + 16
	p := names
	nm := (num + 255) / 256
	marks := make([]uint32, 0, nm)
	for s := 0; s < num; s++ {
		if s%256 == 0 {
			marks = append(marks, uint32(p-names))
		}
		if p >= len(ro) {
			return nil, false
		}
		l, hdr := int(ro[p]), 1
		if l&0x80 != 0 {
			if p+1 >= len(ro) {
				return nil, false
			}
			l, hdr = l&0x7f|int(ro[p+1])<<7, 2
		}
		if l == 0 {
			return nil, false
		}
		p += hdr + l
	}
	mk := align8i(p)
	if mk+4*nm > len(ro) {
		return nil, false
	}
	for j, m := range marks {
		if binary.LittleEndian.Uint32(ro[mk+4*j:]) != m {
			return nil, false
		}
	}
	tables := []kallsymsTable{
		{"kallsyms_offsets", vmi.VA(offs), uint64(4 * num)},
		{"kallsyms_relative_base", vmi.VA(base), 8},
		{"kallsyms_num_syms", vmi.VA(base + 8), 4},
		{"kallsyms_names", vmi.VA(names), uint64(p - names)},
		{"kallsyms_markers", vmi.VA(mk), uint64(4 * nm)},
	}
	// the token table follows the markers, or kallsyms_seqs_of_names
	for _, seqs := range []int{0, 3 * num} {
		tt := align8i(mk + 4*nm)
		if seqs > 0 {
			tt = align8i(tt + seqs)
		}
		if tl, ok := tokenTable(ro, tt); ok {
			if seqs > 0 {
				tables = append(tables, kallsymsTable{"kallsyms_seqs_of_names", vmi.VA(align8i(mk + 4*nm)), uint64(seqs)})
			}
			return append(tables,
				kallsymsTable{"kallsyms_token_table", vmi.VA(tt), uint64(tl)},
				kallsymsTable{"kallsyms_token_index", vmi.VA(align8i(tt + tl)), 512}), true
		}
	}
	return nil, false
}

// tokenTable checks 256 NUL-terminated tokens at off of ro, followed
// (8-aligned) by the u16 index of each, and returns the table's length.
func tokenTable(ro []byte, off int) (int, bool) {
	var idx [256]int
	p := off
	for j := range idx {
		if p >= len(ro) {
			return 0, false
		}
		e := bytes.IndexByte(ro[p:], 0)
		if e <= 0 || e > 64 {
			return 0, false
		}
		idx[j] = p - off
		p += e + 1
	}
	ix := align8i(p)
	if ix+512 > len(ro) {
		return 0, false
	}
	for j, v := range idx {
		if int(binary.LittleEndian.Uint16(ro[ix+2*j:])) != v {
			return 0, false
		}
	}
	return p - off, true
}

func align8i(v int) int { return (v + 7) &^ 7 }

// kallsyms compares the kernel's kallsyms tables in memory with the
// image's (relocated: kallsyms_relative_base is an address); each table
// that differs is one finding at its first differing byte.
func (c *checker) kallsyms(ctx context.Context) (int, []Finding, error) {
	ti, err := c.image()
	if err != nil {
		return 0, nil, err
	}
	tables, err := ti.kallsymsTables()
	if err != nil {
		return 0, nil, err
	}
	var out []Finding
	n := 0
	for _, t := range tables {
		if err := ctx.Err(); err != nil {
			return 0, nil, err
		}
		if t.size > maxKallsymsSpan {
			return 0, nil, fmt.Errorf("cfi: kernel image %s of %d bytes: %w", t.name, t.size, vmi.ErrCorrupt)
		}
		va := vmi.VA(int64(t.link) + ti.delta)
		img, err := ti.at(va, t.size)
		if err != nil {
			return 0, nil, err
		}
		mem := make([]byte, t.size)
		if _, err := c.k.AS.ReadVirt(mem, va); err != nil {
			c.problem(t.name, va, err)
			continue
		}
		n++
		first, diff := -1, 0
		for i := range mem {
			if mem[i] != img[i] {
				if first < 0 {
					first = i
				}
				diff++
			}
		}
		if first < 0 {
			continue
		}
		show := min(16, len(mem)-first)
		out = append(out, c.m.newFinding(KindKallsymsModified, va+vmi.VA(first), fmt.Sprintf("%s+%#x", t.name, first),
			fmt.Sprintf("%d bytes of %s (%d bytes at %#x) differ from the kernel image, the first at offset %#x (memory % x, image % x)",
				diff, t.name, t.size, uint64(va), first, mem[first:first+show], img[first:first+show])))
	}
	return n, out, nil
}
