// Package rangeset holds sets of byte ranges as sorted, merged, half-open
// intervals. It is the one currency of "which guest bytes" in vmscope: the
// ranges a qcow2 layer allocates, the dirty ranges of a bitmap or a
// block-hash index, the disk bytes a file occupies.
//
// Invariants of a Set: ranges are sorted by Start, none is empty, and no two
// ranges touch or overlap (adjacent ranges are merged). The zero Set is empty
// and ready to use. Offsets are int64 byte offsets; a range never overflows.
package rangeset

import (
	"fmt"
	"sort"
	"strings"
)

// Range is the half-open byte interval [Start, End).
type Range struct {
	Start, End int64
}

// Len is the number of bytes in r.
func (r Range) Len() int64 { return r.End - r.Start }

func (r Range) String() string { return fmt.Sprintf("[%d,%d)", r.Start, r.End) }

// Set is a sorted set of disjoint, non-adjacent ranges.
type Set struct {
	r []Range
}

// Of builds a Set from ranges in any order; empty or inverted ranges are
// ignored.
func Of(rs ...Range) Set {
	var s Set
	for _, r := range rs {
		s.Add(r.Start, r.End)
	}
	return s
}

// Ranges returns the ranges of s in order. The caller must not modify it.
func (s Set) Ranges() []Range { return s.r }

// Len is the number of ranges.
func (s Set) Len() int { return len(s.r) }

// Empty reports whether s holds no byte.
func (s Set) Empty() bool { return len(s.r) == 0 }

// Bytes is the total number of bytes covered.
func (s Set) Bytes() int64 {
	var n int64
	for _, r := range s.r {
		n += r.Len()
	}
	return n
}

// Add inserts [start, end). An empty or inverted range is ignored.
func (s *Set) Add(start, end int64) {
	if end <= start {
		return
	}
	n := len(s.r)
	// Fast path: appending in order, as every producer does.
	if n == 0 || s.r[n-1].End < start {
		s.r = append(s.r, Range{start, end})
		return
	}
	if s.r[n-1].Start <= start {
		if end > s.r[n-1].End {
			s.r[n-1].End = end
		}
		return
	}
	// First range whose End >= start (touching counts, to merge).
	i := sort.Search(n, func(k int) bool { return s.r[k].End >= start })
	// First range whose Start > end.
	j := sort.Search(n, func(k int) bool { return s.r[k].Start > end })
	if i == j {
		s.r = append(s.r, Range{})
		copy(s.r[i+1:], s.r[i:])
		s.r[i] = Range{start, end}
		return
	}
	if s.r[i].Start < start {
		start = s.r[i].Start
	}
	if s.r[j-1].End > end {
		end = s.r[j-1].End
	}
	s.r[i] = Range{start, end}
	s.r = append(s.r[:i+1], s.r[j:]...)
}

// AddSet inserts every range of o.
func (s *Set) AddSet(o Set) {
	for _, r := range o.r {
		s.Add(r.Start, r.End)
	}
}

// Union returns a new set holding the bytes of a or b.
func Union(a, b Set) Set {
	out := Set{r: make([]Range, 0, len(a.r)+len(b.r))}
	i, j := 0, 0
	for i < len(a.r) || j < len(b.r) {
		var r Range
		if j >= len(b.r) || (i < len(a.r) && a.r[i].Start <= b.r[j].Start) {
			r = a.r[i]
			i++
		} else {
			r = b.r[j]
			j++
		}
		out.Add(r.Start, r.End)
	}
	return out
}

// Intersect returns the bytes in both a and b.
func Intersect(a, b Set) Set {
	var out Set
	i, j := 0, 0
	for i < len(a.r) && j < len(b.r) {
		lo := max(a.r[i].Start, b.r[j].Start)
		hi := min(a.r[i].End, b.r[j].End)
		if lo < hi {
			out.r = append(out.r, Range{lo, hi})
		}
		if a.r[i].End < b.r[j].End {
			i++
		} else {
			j++
		}
	}
	return out
}

// Subtract returns the bytes of a not in b.
func Subtract(a, b Set) Set {
	var out Set
	j := 0
	for _, r := range a.r {
		start := r.Start
		for j < len(b.r) && b.r[j].End <= start {
			j++
		}
		k := j
		for k < len(b.r) && b.r[k].Start < r.End {
			if b.r[k].Start > start {
				out.r = append(out.r, Range{start, b.r[k].Start})
			}
			if b.r[k].End > start {
				start = b.r[k].End
			}
			k++
		}
		if start < r.End {
			out.r = append(out.r, Range{start, r.End})
		}
	}
	return out
}

// Overlaps reports whether any byte of [start, end) is in s.
func (s Set) Overlaps(start, end int64) bool {
	if end <= start {
		return false
	}
	i := sort.Search(len(s.r), func(k int) bool { return s.r[k].End > start })
	return i < len(s.r) && s.r[i].Start < end
}

// Contains reports whether byte off is in s.
func (s Set) Contains(off int64) bool { return s.Overlaps(off, off+1) }

// Clip returns the part of s inside [start, end).
func (s Set) Clip(start, end int64) Set { return Intersect(s, Of(Range{start, end})) }

// Equal reports whether a and b hold the same bytes.
func Equal(a, b Set) bool {
	if len(a.r) != len(b.r) {
		return false
	}
	for i := range a.r {
		if a.r[i] != b.r[i] {
			return false
		}
	}
	return true
}

func (s Set) String() string {
	var b strings.Builder
	b.WriteByte('{')
	for i, r := range s.r {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(r.String())
	}
	b.WriteByte('}')
	return b.String()
}
