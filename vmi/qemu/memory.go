package qemu

import (
	"bufio"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/vmscope/vmscope/vmi"
)

// memoryMap reads the RAM and ROM ranges of the "memory" address space
// from HMP "info mtree -f" (the flat view QEMU itself uses; it is what
// dump-guest-memory writes).
func memoryMap(ctx context.Context, m Monitor) ([]vmi.Range, error) {
	s, err := m.HMP(ctx, "info mtree -f")
	if err != nil {
		return nil, err
	}
	r, err := parseMtree(s)
	if err != nil {
		return nil, fmt.Errorf("qemu: info mtree -f: %w", err)
	}
	return r, nil
}

func parseMtree(s string) ([]vmi.Range, error) {
	var out []vmi.Range
	inView, found := false, false
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "FlatView "):
			if found {
				return mergeRanges(out), nil
			}
			inView = false
		case strings.HasPrefix(l, ` AS "memory",`):
			inView, found = true, true
		case inView && (strings.Contains(l, ", ram)") || strings.Contains(l, ", rom)")):
			f := strings.Fields(l)
			lo, hi, ok := strings.Cut(f[0], "-")
			if !ok {
				return nil, fmt.Errorf("%w: line %q", ErrProtocol, l)
			}
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 != nil || err2 != nil || b < a || len(out) > 1<<16 {
				return nil, fmt.Errorf("%w: line %q", ErrProtocol, l)
			}
			out = append(out, vmi.Range{Start: vmi.PA(a), Size: b - a + 1})
		}
	}
	if !found {
		return nil, fmt.Errorf("%w: no flat view of address space \"memory\"", ErrProtocol)
	}
	return mergeRanges(out), nil
}

func mergeRanges(rs []vmi.Range) []vmi.Range {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start < rs[j].Start })
	var out []vmi.Range
	for _, r := range rs {
		if n := len(out); n > 0 && out[n-1].End() >= r.Start {
			if e := r.End(); e > out[n-1].End() {
				out[n-1].Size = uint64(e - out[n-1].Start)
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// ReadPhys reads guest-physical memory at pa into p: from the QEMU
// process when it is known (the guest keeps running), else through the
// stub (a running guest is stopped for the read). A read that meets a
// hole in the memory map returns the bytes before it and a *vmi.HoleError.
func (g *Guest) ReadPhys(ctx context.Context, p []byte, pa vmi.PA) (int, error) {
	if g.pm != nil {
		if err := g.checkOpen(); err != nil {
			return 0, err
		}
		return g.pm.ReadPhys(ctx, p, pa)
	}
	n := len(p)
	var hole error
	if g.ranges != nil {
		n, hole = presentPrefix(g.ranges, pa, len(p))
	}
	if n > 0 {
		err := g.withStopped(ctx, func() error { return g.gdb.ReadMemory(ctx, uint64(pa), p[:n]) })
		if err != nil {
			return 0, err
		}
	}
	return n, hole
}

// presentPrefix is how many bytes from pa are present, and the hole error
// when fewer than n.
func presentPrefix(rs []vmi.Range, pa vmi.PA, n int) (int, error) {
	got := 0
	for got < n {
		a, ok := pa.Add(uint64(got))
		if !ok {
			return got, &vmi.HoleError{Addr: pa}
		}
		i := sort.Search(len(rs), func(i int) bool { return rs[i].End() > a })
		if i == len(rs) || !rs[i].Contains(a) {
			return got, &vmi.HoleError{Addr: a}
		}
		got += int(min(uint64(n-got), uint64(rs[i].End()-a)))
	}
	return got, nil
}

// ReadAt implements io.ReaderAt over guest-physical addresses (vmi.Memory).
// It cannot be cancelled; each call is bounded by a timeout.
func (g *Guest) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qemu: read at negative offset %d", off)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return g.ReadPhys(ctx, p, vmi.PA(off))
}
