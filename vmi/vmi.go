// Package vmi is vmscope's memory-introspection core: typed guest addresses,
// guest-physical memory as an io.ReaderAt over guest-physical addresses (from
// a snapshot file or a live guest alike), the saved state of a vCPU, and the
// x86-64 page walker; page numbers (page.go); and the interfaces of a live
// guest (live.go): Live, Tracer (traps, single-step, stop events) and
// Controller (writes), with Trace, the step-and-re-arm loop every tracer
// shares.
//
// Invariants: addresses never wrap silently (Add reports overflow); a read
// of guest-physical memory that is not present (a hole between RAM ranges,
// a page a dump left out) fails with an error that wraps ErrNotPresent
// (a *HoleError says where) after returning the bytes before the hole;
// every walk of guest-controlled structures is bounded.
package vmi

import (
	"context"
	"fmt"
	"github.com/vmscope/vmscope/vmerr"
	"io"
	"math"
)

// PA is a guest-physical address.
type PA uint64

// VA is a guest-virtual address.
type VA uint64

// Add returns a+n, and false when the sum overflows 64 bits.
func (a PA) Add(n uint64) (PA, bool) {
	if uint64(a) > math.MaxUint64-n {
		return 0, false
	}
	return a + PA(n), true
}

// Add returns a+n, and false when the sum overflows 64 bits.
func (a VA) Add(n uint64) (VA, bool) {
	if uint64(a) > math.MaxUint64-n {
		return 0, false
	}
	return a + VA(n), true
}

func (a PA) String() string { return fmt.Sprintf("pa:%#x", uint64(a)) }
func (a VA) String() string { return fmt.Sprintf("va:%#x", uint64(a)) }

// Range is a present range of guest-physical memory, [Start, Start+Size).
type Range struct {
	Start PA
	Size  uint64
}

// End is the first address after the range (it saturates at 2^64-1).
func (r Range) End() PA {
	e, ok := r.Start.Add(r.Size)
	if !ok {
		return math.MaxUint64
	}
	return e
}

// Contains reports whether a is in the range.
func (r Range) Contains(a PA) bool { return a >= r.Start && uint64(a-r.Start) < r.Size }

// Memory is guest-physical memory: ReadAt takes a guest-physical address as
// its offset and fails with an error wrapping ErrNotPresent where memory is
// not present. Ranges lists the present ranges, sorted and disjoint.
type Memory interface {
	io.ReaderAt
	Ranges() []Range
}

// Live is a running guest every live backend offers (vmi/qemu through the
// GDB stub and QMP, vmi/libvmi through LibVMI): its guest-physical memory,
// its vCPUs' registers, and pause/resume. The live modules take a Live;
// a Tracer adds traps, single-step and stop events, a Controller writes
// (live.go).
type Live interface {
	Memory
	CPUs(ctx context.Context) ([]CPU, error)
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

var (
	// ErrNotPresent is a read of guest memory that is not there: a hole in
	// guest-physical memory or a virtual address with no mapping.
	ErrNotPresent = vmerr.New("vmi: not present", vmerr.ErrNotPresent)
	// ErrCorrupt is guest state that breaks its own rules (a page-table
	// walk that cannot end, a reserved bit set).
	ErrCorrupt = vmerr.New("vmi: corrupt", vmerr.ErrCorrupt)
)

// HoleError is a read of guest-physical memory at an address that is not
// present. It wraps ErrNotPresent.
type HoleError struct {
	Addr PA
}

func (e *HoleError) Error() string {
	return fmt.Sprintf("vmi: guest-physical %#x not present", uint64(e.Addr))
}
func (e *HoleError) Unwrap() error { return ErrNotPresent }

// Segment is a segment register as a dump saves it.
type Segment struct {
	Selector uint16
	Base     uint64
	Limit    uint32
	Flags    uint32 // the descriptor's attribute bits as QEMU keeps them
}

// CPU is the saved state of one x86-64 vCPU. Fields a source does not hold
// are zero and their Has* flag is false.
type CPU struct {
	ID int // vCPU index

	RAX, RBX, RCX, RDX, RSI, RDI, RBP, RSP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64

	CS, DS, ES, FS, GS, SS Segment
	LDT, TR, GDT, IDT      Segment

	FSBase, GSBase, KernelGSBase uint64
	CR0, CR2, CR3, CR4           uint64
	EFER                         uint64

	HasGPRs         bool // general registers and RIP
	HasControl      bool // CR0-CR4 and segments (QEMU's own note)
	HasKernelGSBase bool
	HasEFER         bool // no dump format saves EFER; a live guest does
}

// LongMode reports whether the vCPU is in 64-bit paging: from EFER.LMA when
// known, else from CR0.PG, CR4.PAE and the code segment's L bit.
func (c *CPU) LongMode() bool {
	if c.HasEFER {
		return c.EFER&(1<<10) != 0
	}
	return c.CR0&(1<<31) != 0 && c.CR4&(1<<5) != 0 && c.CS.Flags&(1<<21) != 0
}

// LA57 reports whether 5-level paging is on (CR4.LA57).
func (c *CPU) LA57() bool { return c.CR4&(1<<12) != 0 }

// PageTableRoot is CR3 without its PCID and flag bits.
func (c *CPU) PageTableRoot() PA { return PA(c.CR3 &^ 0xfff & (1<<52 - 1)) }
