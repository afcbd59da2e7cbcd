package vmi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// PageSize is the size of a page a translation ends in.
type PageSize uint64

const (
	Page4K PageSize = 1 << 12
	Page2M PageSize = 1 << 21
	Page1G PageSize = 1 << 30
)

// Page-table entry bits (Intel SDM vol. 3, 4.5).
const (
	ptePresent = 1 << 0
	ptePS      = 1 << 7
	pteAddr    = 0x000ffffffffff000 // bits 51:12
)

// PageFault is a virtual address that does not translate: not canonical
// (Level 0), or an entry without its present bit at Level (5 PML5 … 1 PT).
// It wraps ErrNotPresent; a reserved bit set wraps ErrCorrupt.
type PageFault struct {
	VA       VA
	Level    int
	Entry    uint64 // the entry that stopped the walk
	EntryPA  PA     // where it was read
	Reserved bool   // a reserved bit (PS in a PML4E/PML5E) was set
}

func (e *PageFault) Error() string {
	switch {
	case e.Level == 0:
		return fmt.Sprintf("vmi: %#x is not canonical", uint64(e.VA))
	case e.Reserved:
		return fmt.Sprintf("vmi: %#x: level-%d entry %#x at %#x sets a reserved bit", uint64(e.VA), e.Level, e.Entry, uint64(e.EntryPA))
	}
	return fmt.Sprintf("vmi: %#x: level-%d entry %#x at %#x not present", uint64(e.VA), e.Level, e.Entry, uint64(e.EntryPA))
}

func (e *PageFault) Unwrap() error {
	if e.Reserved {
		return ErrCorrupt
	}
	return ErrNotPresent
}

// Canonical reports whether va is canonical for 4-level (48-bit) or
// 5-level (57-bit) paging.
func Canonical(va VA, la57 bool) bool {
	bits := uint(48)
	if la57 {
		bits = 57
	}
	top := int64(va) >> (bits - 1)
	return top == 0 || top == -1
}

// Translate walks the x86-64 page tables rooted at cr3 (4-level, or
// 5-level when la57) in guest-physical memory mem and returns the physical
// address va maps to and the size of its page. The walk reads at most five
// entries. A non-present entry or a non-canonical address gives a
// *PageFault wrapping ErrNotPresent; a failed read of an entry is returned
// wrapped with where it happened. Access rights (U/S, R/W, NX) are not
// checked: this is the view of the hardware walker, not of an access.
func Translate(mem io.ReaderAt, cr3 PA, va VA, la57 bool) (PA, PageSize, error) {
	if !Canonical(va, la57) {
		return 0, 0, &PageFault{VA: va}
	}
	level := 4
	if la57 {
		level = 5
	}
	table := PA(uint64(cr3) & pteAddr)
	var buf [8]byte
	for ; level >= 1; level-- {
		shift := 12 + 9*uint(level-1)
		idx := (uint64(va) >> shift) & 0x1ff
		at := table + PA(idx*8)
		if _, err := mem.ReadAt(buf[:], int64(at)); err != nil {
			return 0, 0, fmt.Errorf("vmi: %#x: level-%d entry at %#x: %w", uint64(va), level, uint64(at), err)
		}
		e := binary.LittleEndian.Uint64(buf[:])
		if e&ptePresent == 0 {
			return 0, 0, &PageFault{VA: va, Level: level, Entry: e, EntryPA: at}
		}
		if e&ptePS != 0 && level > 1 {
			if level > 3 {
				return 0, 0, &PageFault{VA: va, Level: level, Entry: e, EntryPA: at, Reserved: true}
			}
			size := PageSize(1) << shift
			base := e & pteAddr &^ (uint64(size) - 1)
			return PA(base | uint64(va)&(uint64(size)-1)), size, nil
		}
		table = PA(e & pteAddr)
	}
	return table | PA(uint64(va)&0xfff), Page4K, nil
}

// AddressSpace is a guest-virtual address space: page tables at Root in
// guest-physical memory Mem.
type AddressSpace struct {
	Mem  io.ReaderAt
	Root PA // CR3 (its low flag and PCID bits are ignored)
	LA57 bool
}

// Translate is Translate on the address space.
func (as AddressSpace) Translate(va VA) (PA, PageSize, error) {
	return Translate(as.Mem, as.Root, va, as.LA57)
}

// ReadVirt reads len(p) bytes at va, translating each page on its way;
// it returns the bytes read before the first page that does not translate
// or read, and that error.
func (as AddressSpace) ReadVirt(p []byte, va VA) (int, error) {
	n := 0
	for n < len(p) {
		a, ok := va.Add(uint64(n))
		if !ok {
			return n, &PageFault{VA: va}
		}
		pa, size, err := as.Translate(a)
		if err != nil {
			return n, err
		}
		chunk := min(uint64(len(p)-n), uint64(size)-uint64(a)&(uint64(size)-1))
		m, err := as.Mem.ReadAt(p[n:n+int(chunk)], int64(pa))
		n += m
		if m < int(chunk) {
			if err == nil || errors.Is(err, io.EOF) {
				err = &HoleError{Addr: pa + PA(m)}
			}
			return n, fmt.Errorf("vmi: reading %#x at guest-physical %#x: %w", uint64(a), uint64(pa), err)
		}
	}
	return n, nil
}
