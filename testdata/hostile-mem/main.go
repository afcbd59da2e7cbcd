// Command hostile-mem writes raw memory files made to keep Linux kernel
// discovery (vmi/linux) busy without end, for its hostile tests. Run by
// build.sh; usage: go run ./testdata/hostile-mem DIR
//
// Every file is raw guest-physical memory from address 0 (no CPU state),
// so discovery looks for a "Linux version" banner, then for page tables
// around it. Page-table entries are x86-64 4-level (and read the same as
// 5-level: every table used is its own upper level).
//
//	kallsyms-tables.raw (4 MiB)
//	    A PML4 at 0x1000, PDPT at 0x2000 and PD at 0x3000 map every 2 MiB
//	    slot of the kernel image range [0xffffffff80000000, +1 GiB) to the
//	    one 2 MiB page at 0x200000, which holds a banner and 2047 fake
//	    kallsyms token tables of 1 KiB each (256 one-byte tokens and their
//	    token index, as scripts/kallsyms.c lays them out). Each table passes
//	    the token checks and fails only at kallsyms_markers, after a 2 MiB
//	    read; the image scan finds about 1,000 tables in each of its 256
//	    1 MiB chunks.
//	pml4-spin.raw (96 MiB)
//	    Every page but one is a fake PML4: entry 0 is zero, entries 1..511
//	    point to page 0x1000, which is such a page too. The walk of each
//	    2 MiB slot of the kernel image range then goes PML4 -> 0x1000 ->
//	    0x1000 -> 0x1000 and fails at the last level (entry 0 not present).
//	    The page at 16 MiB holds a banner instead: about 20,000 pages around
//	    it look like kernel PML4s.
//	pml4-wide.raw (96 MiB)
//	    pml4-spin.raw, but the page-directory entries of page 0x1000 point
//	    to 509 different page tables (pages 0x4000..0x200000): each walk
//	    reads 512 different pages, which no cache of a few pages holds.
package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
)

const banner = "Linux version 6.1.0-hostile (hostile@vmscope) (gcc) #1 SMP PREEMPT_DYNAMIC\n\x00"

var le = binary.LittleEndian

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: hostile-mem DIR")
		os.Exit(2)
	}
	dir := os.Args[1]
	for name, b := range map[string][]byte{
		"kallsyms-tables.raw": kallsymsTables(),
		"pml4-spin.raw":       pml4Spin(false),
		"pml4-wide.raw":       pml4Spin(true),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o444); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

// pte is a present, writable entry pointing to pa; ps makes it a large page.
func pte(pa uint64, ps bool) uint64 {
	e := pa | 3
	if ps {
		e |= 1 << 7
	}
	return e
}

func kallsymsTables() []byte {
	m := make([]byte, 4<<20)
	le.PutUint64(m[0x1000+511*8:], pte(0x2000, false)) // PML4[511] -> PDPT
	le.PutUint64(m[0x2000+510*8:], pte(0x3000, false)) // PDPT[510] -> PD
	for i := range 512 {
		le.PutUint64(m[0x3000+8*i:], pte(0x200000, true)) // every slot -> the page
	}
	page := m[0x200000:0x400000]
	copy(page, banner)
	for off := 1024; off+1024 <= len(page); off += 1024 {
		t := page[off : off+1024]
		// token i is the byte i (token 0 is 0x80: a token is never empty),
		// each NUL-terminated: the table is 512 bytes, 8-aligned
		for i := range 256 {
			c := byte(i)
			if i == 0 {
				c = 0x80
			}
			t[2*i] = c
			le.PutUint16(t[512+2*i:], uint16(2*i)) // kallsyms_token_index
		}
	}
	return m
}

func pml4Spin(wide bool) []byte {
	m := make([]byte, 96<<20)
	for p := 0; p < len(m); p += 4096 {
		for i := 1; i < 512; i++ {
			le.PutUint64(m[p+8*i:], pte(0x1000, false))
		}
	}
	if wide {
		// page 0x1000 as a page directory: entry i -> a page table of its
		// own (entries 510 and 511 stay: PML4[511] and PDPT[510])
		for i := 1; i < 510; i++ {
			le.PutUint64(m[0x1000+8*i:], pte(uint64(0x3000+0x1000*i), false))
		}
	}
	b := m[16<<20 : 16<<20+4096]
	clear(b)
	copy(b, banner)
	return m
}
