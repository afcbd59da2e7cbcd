package cfi

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sort"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// Page-table entry bits (Intel SDM vol. 3, 4.5).
const (
	ptePresent = 1 << 0
	pteUser    = 1 << 2
	ptePS      = 1 << 7
	pteNX      = 1 << 63
	pteAddr    = 0x000ffffffffff000
)

// Caps on a page-table walk: tables read and leaf entries kept. A kernel
// of 16 GiB maps its half with a few thousand tables.
const (
	MaxTables = 1 << 16
	maxLeaves = 1 << 22
)

// ExecRange is a run of virtual addresses mapped executable for the
// supervisor: every level's NX clear, and some level's U/S clear.
type ExecRange struct {
	Start vmi.VA `json:"start"`
	End   vmi.VA `json:"end"`
	PA    vmi.PA `json:"pa"` // of Start
}

// ExecRanges walks the kernel half of the page tables at root (PML4 or,
// with la57, PML5 slots 256..511) in mem and returns the supervisor
// executable mappings, merged into runs that are contiguous in virtual
// memory, sorted. The walk reads at most MaxTables tables; a table it
// cannot read is a Problem and the walk goes on without it.
func ExecRanges(ctx context.Context, mem io.ReaderAt, root vmi.PA, la57 bool) ([]ExecRange, []vmerr.Problem, error) {
	return walkKernel(ctx, mem, root, la57, 0, ^vmi.VA(0), true)
}

// MappedRanges is ExecRanges for every mapping (executable or not) that
// overlaps [lo, hi), clipped to it.
func MappedRanges(ctx context.Context, mem io.ReaderAt, root vmi.PA, la57 bool, lo, hi vmi.VA) ([]ExecRange, []vmerr.Problem, error) {
	return walkKernel(ctx, mem, root, la57, lo, hi, false)
}

func walkKernel(ctx context.Context, mem io.ReaderAt, root vmi.PA, la57 bool, lo, hi vmi.VA, execOnly bool) ([]ExecRange, []vmerr.Problem, error) {
	w := &pageWalk{mem: mem, la57: la57, lo: lo, hi: hi, execOnly: execOnly, seen: map[[2]uint64]bool{}}
	levels := 4
	if la57 {
		levels = 5
	}
	if err := w.table(ctx, vmi.PA(uint64(root)&pteAddr), levels, 0, true, 256); err != nil {
		return nil, w.probs, err
	}
	return w.out, w.probs, nil
}

type pageWalk struct {
	mem      io.ReaderAt
	la57     bool
	lo, hi   vmi.VA
	execOnly bool
	seen     map[[2]uint64]bool
	tables   int
	leaves   int
	out      []ExecRange
	probs    []vmerr.Problem
}

// canonical sign-extends a virtual address from bit 47 (or 56).
func (w *pageWalk) canonical(va uint64) vmi.VA {
	bits := uint(48)
	if w.la57 {
		bits = 57
	}
	return vmi.VA(uint64(int64(va<<(64-bits)) >> (64 - bits)))
}

// table walks one table of level (5 PML5 … 1 PT) at pa mapping from va;
// user is true while every level above allowed user access.
func (w *pageWalk) table(ctx context.Context, pa vmi.PA, level int, va uint64, user bool, first int) error {
	if w.tables >= MaxTables {
		w.problem(vmerr.Problem{Where: "kernel page tables", Offset: -1, Addr: uint64(pa),
			Err: fmt.Errorf("more than %d tables: %w", MaxTables, vmi.ErrCorrupt)})
		return nil
	}
	// A table reached twice (at the same level) is walked once: kernels do
	// not share kernel page tables between addresses, and a hostile loop
	// of tables would multiply the walk.
	key := [2]uint64{uint64(pa), uint64(level)}
	if w.seen[key] {
		w.problem(vmerr.Problem{Where: fmt.Sprintf("level-%d page table", level), Offset: -1, Addr: uint64(pa),
			Err: fmt.Errorf("reached again from %#x: %w", uint64(w.canonical(va)), vmi.ErrCorrupt)})
		return nil
	}
	w.seen[key] = true
	w.tables++
	if w.tables&1023 == 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	var tbl [4096]byte
	if _, err := w.mem.ReadAt(tbl[:], int64(pa)); err != nil {
		w.problem(vmerr.Problem{Where: fmt.Sprintf("level-%d page table", level), Offset: -1, Addr: uint64(pa), Err: err})
		return nil
	}
	shift := 12 + 9*uint(level-1)
	for i := first; i < 512; i++ {
		e := binary.LittleEndian.Uint64(tbl[i*8:])
		if e&ptePresent == 0 {
			continue
		}
		eva := va | uint64(i)<<shift
		size := uint64(1) << shift
		if start := w.canonical(eva); start+vmi.VA(size-1) < w.lo || start >= w.hi {
			continue
		}
		u := user && e&pteUser != 0
		leaf := level == 1 || (e&ptePS != 0 && level <= 3)
		if e&ptePS != 0 && level > 3 {
			continue // reserved: the hardware faults
		}
		if !leaf {
			if e&pteNX != 0 && w.execOnly {
				continue // nothing below executes
			}
			if err := w.table(ctx, vmi.PA(e&pteAddr), level-1, eva, u, 0); err != nil {
				return err
			}
			continue
		}
		if w.execOnly && (e&pteNX != 0 || u) {
			continue
		}
		base := e & pteAddr &^ (size - 1)
		start, pa := w.canonical(eva), vmi.PA(base)
		if start < w.lo {
			pa += vmi.PA(w.lo - start)
			size -= uint64(w.lo - start)
			start = w.lo
		}
		if end := start + vmi.VA(size-1); end >= w.hi {
			size = uint64(w.hi - start)
		}
		w.add(start, size, pa)
	}
	return nil
}

// maxWalkProblems caps the problems one walk reports.
const maxWalkProblems = 64

func (w *pageWalk) problem(p vmerr.Problem) {
	if len(w.probs) < maxWalkProblems {
		w.probs = append(w.probs, p)
	}
}

// add appends an executable page, merging it into the previous run when
// it continues it.
func (w *pageWalk) add(va vmi.VA, size uint64, pa vmi.PA) {
	if n := len(w.out); n > 0 && w.out[n-1].End == va && w.out[n-1].PA+vmi.PA(w.out[n-1].End-w.out[n-1].Start) == pa {
		w.out[n-1].End = va + vmi.VA(size)
		return
	}
	if w.leaves >= maxLeaves {
		return
	}
	w.leaves++
	w.out = append(w.out, ExecRange{Start: va, End: va + vmi.VA(size), PA: pa})
}

// subtract returns the parts of [start, end) that no region covers.
func subtract(start, end vmi.VA, regions []Region) [][2]vmi.VA {
	var out [][2]vmi.VA
	cur := start
	i := sort.Search(len(regions), func(i int) bool { return regions[i].End > start })
	for ; i < len(regions) && regions[i].Start < end && cur < end; i++ {
		r := regions[i]
		if r.End <= cur {
			continue
		}
		if r.Start > cur {
			out = append(out, [2]vmi.VA{cur, r.Start})
		}
		cur = max(cur, r.End)
	}
	if cur < end {
		out = append(out, [2]vmi.VA{cur, end})
	}
	return out
}
