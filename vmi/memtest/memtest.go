// Package memtest is the conformance kit for guest-physical memory
// sources (vmi.Memory): Agree checks that two sources of the same guest
// at the same moment (a dump in two formats, a paused live guest and a
// dump of it, two writers' dumps) agree, so that a new dump format or live
// backend costs a few lines of test (after go-containerregistry's
// pkg/v1/validate).
//
// What Agree checks, reporting each failure through t.Errorf:
//   - present ranges: each source's Ranges are sorted, disjoint and
//     non-empty; the two lists are equal, or one lies inside the other when
//     the test declares it (BInA, AInB: makedumpfile leaves out the VGA
//     memory and the BIOS ROM, LiME holds only System RAM, a raw image has
//     no holes below its end);
//   - bytes over the ranges both hold (or the part of them Only names):
//     every byte when they are small (FullUpTo), else every page of a
//     stride, random pages, the page-table roots of the saved vCPUs, and
//     every page of each Region (the kernel image); a difference fails
//     unless a named Tolerate accepts it (JumpLabel for two moments of one
//     kernel);
//   - reads of odd sizes at odd addresses across page, range and hole
//     boundaries, on each source: the count is the bytes up to the first
//     address not in the source's own Ranges, a short read fails with a
//     *vmi.HoleError (wrapping vmi.ErrNotPresent) naming that address, and
//     the bytes equal the source's own page-aligned reads;
//   - holes (gaps between ranges, past the end, near the top of the
//     address space) read as *vmi.HoleError in both;
//   - vCPU state where both hold it (a method CPUs() []vmi.CPU, as
//     vmi/snapshot has, or CPUs(ctx) ([]vmi.CPU, error), as a vmi.Live
//     has): the same vCPUs, and each register both sides say they hold.
//
// The sampling is deterministic (Seed) and bounded, so a pair of 256 MiB
// dumps is checked in seconds and a live guest through a GDB stub in a few
// more (Stride, RandomPages, OddReads).
package memtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/vmscope/vmscope/vmi"
)

const page = vmi.PageBytes

// Relation is how the two sources' present ranges relate.
type Relation int

const (
	Equal Relation = iota // the same ranges
	BInA                  // b's ranges lie inside a's (b holds less)
	AInB                  // a's ranges lie inside b's
)

// Tolerance is a named difference two sources may show: at the first
// byte where a and b differ, it returns how many bytes the difference
// spans when it is one it allows, else 0.
type Tolerance struct {
	Name  string
	Match func(a, b []byte) int
}

type config struct {
	ctx          context.Context
	nameA, nameB string
	rel          Relation
	fullUpTo     uint64
	stride       uint64 // pages
	random       int
	odd          int
	holes        int
	seed         uint64
	only         []vmi.Range
	regions      []region
	tols         []Tolerance
	noCPUs       string
	maxErrors    int
}

type region struct {
	name string
	r    vmi.Range
}

// Option changes what Agree checks.
type Option func(*config)

// Names names the two sources in failure messages (default "a" and "b").
func Names(a, b string) Option { return func(c *config) { c.nameA, c.nameB = a, b } }

// Ranges declares how the present ranges relate (default Equal).
func Ranges(r Relation) Option { return func(c *config) { c.rel = r } }

// FullUpTo compares every byte when the ranges both hold total at most n
// bytes (default 32 MiB).
func FullUpTo(n uint64) Option { return func(c *config) { c.fullUpTo = n } }

// Stride compares every n-th page of the common ranges when they are not
// compared in full (default 64; 0 turns the stride off).
func Stride(n uint64) Option { return func(c *config) { c.stride = n } }

// RandomPages compares n more pages at random (default 1024).
func RandomPages(n int) Option { return func(c *config) { c.random = n } }

// OddReads makes n reads of odd sizes at odd addresses (default 256).
func OddReads(n int) Option { return func(c *config) { c.odd = n } }

// Holes probes at most n gaps of each source (default 64).
func Holes(n int) Option { return func(c *config) { c.holes = n } }

// Seed seeds the random choices (default 1).
func Seed(s uint64) Option { return func(c *config) { c.seed = s } }

// Only restricts the byte comparison to these ranges (within the ones both
// hold): for two moments of one guest, what must not have changed.
func Only(rs ...vmi.Range) Option { return func(c *config) { c.only = append(c.only, rs...) } }

// Region compares every page of r (within what is compared), e.g. the
// kernel image.
func Region(name string, r vmi.Range) Option {
	return func(c *config) { c.regions = append(c.regions, region{name, r}) }
}

// Tolerate allows a named difference.
func Tolerate(t Tolerance) Option { return func(c *config) { c.tols = append(c.tols, t) } }

// NoCPUs declares that one source holds no vCPU state (LiME, raw), so
// the vCPUs are not compared; why says which and is logged.
func NoCPUs(why string) Option { return func(c *config) { c.noCPUs = why } }

// Context bounds the calls to a live source's CPUs (default: none).
func Context(ctx context.Context) Option { return func(c *config) { c.ctx = ctx } }

// MaxErrors stops reporting byte differences after n (default 20).
func MaxErrors(n int) Option { return func(c *config) { c.maxErrors = n } }

// JumpLabel is a static branch the kernel patched between two moments
// (a jump label): a 2-byte NOP (66 90) against a short jump (eb), or a
// 5-byte NOP (0f 1f 44 00 00) against a near jump (e9), either way round.
// The random driver's crng_is_ready key flips a few seconds after boot.
var JumpLabel = Tolerance{Name: "jump label", Match: func(a, b []byte) int {
	if n := jumpLabel(a, b); n > 0 {
		return n
	}
	return jumpLabel(b, a)
}}

func jumpLabel(nop, jmp []byte) int {
	switch {
	case len(nop) >= 2 && len(jmp) >= 2 && nop[0] == 0x66 && nop[1] == 0x90 && jmp[0] == 0xeb:
		return 2
	case len(nop) >= 5 && len(jmp) >= 5 && nop[0] == 0x0f && nop[1] == 0x1f && nop[2] == 0x44 && nop[3] == 0 && nop[4] == 0 && jmp[0] == 0xe9:
		return 5
	}
	return 0
}

// Report is what Agree compared.
type Report struct {
	Common    []vmi.Range    // the ranges both hold (after Only)
	Full      bool           // every byte of Common was compared
	Pages     int            // pages compared (a full compare counts every page)
	Bytes     uint64         // bytes compared
	Sampled   int            // pages of the stride, the random pages and the page-table roots (when not Full)
	NonZero   int            // sampled pages that hold a non-zero byte
	Tolerated map[string]int // allowed differences met, by Tolerance name
	OddReads  int            // odd reads made on each source
	Holes     int            // hole probes made on each source
	CPUs      int            // vCPUs compared
}

func (r Report) String() string {
	return fmt.Sprintf("%d ranges, %d MiB compared (full %v, %d pages, %d sampled, %d of them non-zero), %d odd reads and %d hole probes each, %d vCPUs, tolerated %v",
		len(r.Common), r.Bytes>>20, r.Full, r.Pages, r.Sampled, r.NonZero, r.OddReads, r.Holes, r.CPUs, r.Tolerated)
}

type checker struct {
	t      testing.TB
	c      config
	a, b   vmi.Memory
	ra, rb []vmi.Range
	cmp    []vmi.Range // compared: common ∩ only
	rep    Report
	diffs  int
}

// Agree checks that a and b are the same guest memory (see the package
// doc) and returns what it compared. Failures are reported with t.Errorf;
// Agree returns early when the ranges themselves are unusable.
func Agree(t testing.TB, a, b vmi.Memory, opts ...Option) Report {
	t.Helper()
	c := config{nameA: "a", nameB: "b", fullUpTo: 32 << 20, stride: 64, random: 1024, odd: 256, holes: 64, seed: 1, maxErrors: 20}
	for _, o := range opts {
		o(&c)
	}
	k := &checker{t: t, c: c, a: a, b: b, ra: a.Ranges(), rb: b.Ranges()}
	k.rep.Tolerated = map[string]int{}
	if !k.checkRanges() {
		return k.rep
	}
	k.checkCPUs()
	k.compareBytes()
	k.oddReads()
	k.probeHoles()
	t.Logf("memtest: %s vs %s: %v", c.nameA, c.nameB, k.rep)
	return k.rep
}

// checkRanges checks each list and how the two relate, and sets the
// common ranges.
func (k *checker) checkRanges() bool {
	k.t.Helper()
	ok := true
	for _, s := range []struct {
		name string
		rs   []vmi.Range
	}{{k.c.nameA, k.ra}, {k.c.nameB, k.rb}} {
		if len(s.rs) == 0 {
			k.t.Errorf("%s: no present ranges", s.name)
			ok = false
		}
		for i, r := range s.rs {
			if r.Size == 0 || uint64(r.Start) > math.MaxUint64-r.Size {
				k.t.Errorf("%s: range %d %v is empty or wraps", s.name, i, r)
				ok = false
			}
			if i > 0 && r.Start < s.rs[i-1].End() {
				k.t.Errorf("%s: range %d %v is not after %v", s.name, i, r, s.rs[i-1])
				ok = false
			}
		}
	}
	if !ok {
		return false
	}
	switch k.c.rel {
	case Equal:
		if !equalRanges(k.ra, k.rb) {
			k.t.Errorf("ranges differ:\n%s %v\n%s %v", k.c.nameA, k.ra, k.c.nameB, k.rb)
		}
	case BInA:
		if !inside(k.rb, k.ra) {
			k.t.Errorf("%s's ranges %v are not inside %s's %v", k.c.nameB, k.rb, k.c.nameA, k.ra)
		}
	case AInB:
		if !inside(k.ra, k.rb) {
			k.t.Errorf("%s's ranges %v are not inside %s's %v", k.c.nameA, k.ra, k.c.nameB, k.rb)
		}
	}
	k.cmp = intersect(k.ra, k.rb)
	if k.c.only != nil {
		only := append([]vmi.Range(nil), k.c.only...)
		sort.Slice(only, func(i, j int) bool { return only[i].Start < only[j].Start })
		k.cmp = intersect(k.cmp, merge(only))
	}
	k.rep.Common = k.cmp
	if len(k.cmp) == 0 {
		k.t.Errorf("%s and %s hold no memory in common to compare (%v, %v, only %v)", k.c.nameA, k.c.nameB, k.ra, k.rb, k.c.only)
		return false
	}
	return true
}

func equalRanges(a, b []vmi.Range) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// inside reports whether every range of in lies inside one of out.
func inside(in, out []vmi.Range) bool {
	for _, r := range in {
		i := sort.Search(len(out), func(i int) bool { return out[i].End() > r.Start })
		if i == len(out) || r.Start < out[i].Start || r.End() > out[i].End() {
			return false
		}
	}
	return true
}

// intersect returns the ranges both sorted lists cover.
func intersect(a, b []vmi.Range) []vmi.Range {
	var out []vmi.Range
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		lo, hi := max(a[i].Start, b[j].Start), min(a[i].End(), b[j].End())
		if lo < hi {
			out = append(out, vmi.Range{Start: lo, Size: uint64(hi - lo)})
		}
		if a[i].End() < b[j].End() {
			i++
		} else {
			j++
		}
	}
	return out
}

// merge joins overlapping or adjacent ranges of a sorted list.
func merge(rs []vmi.Range) []vmi.Range {
	var out []vmi.Range
	for _, r := range rs {
		if n := len(out); n > 0 && out[n-1].End() >= r.Start {
			if r.End() > out[n-1].End() {
				out[n-1].Size = uint64(r.End() - out[n-1].Start)
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// present is how many bytes from pa are in rs, up to n.
func present(rs []vmi.Range, pa vmi.PA, n uint64) uint64 {
	got := uint64(0)
	for got < n {
		a, ok := pa.Add(got)
		if !ok {
			return got
		}
		i := sort.Search(len(rs), func(i int) bool { return rs[i].End() > a })
		if i == len(rs) || !rs[i].Contains(a) {
			return got
		}
		got += min(n-got, uint64(rs[i].End()-a))
	}
	return got
}

func total(rs []vmi.Range) uint64 {
	var n uint64
	for _, r := range rs {
		n += r.Size
	}
	return n
}

// diff reports a byte difference between a's and b's bytes at pa unless a
// Tolerance allows it; it returns false once reporting stops.
func (k *checker) diff(pa vmi.PA, x, y []byte, what string) bool {
	k.t.Helper()
	for i := 0; i < len(x); i++ {
		if x[i] == y[i] {
			continue
		}
		n := 0
		name := ""
		for _, tl := range k.c.tols {
			if n = tl.Match(x[i:], y[i:]); n > 0 {
				name = tl.Name
				break
			}
		}
		if n > 0 {
			k.rep.Tolerated[name]++
			i += n - 1
			continue
		}
		k.diffs++
		if k.diffs > k.c.maxErrors {
			return false
		}
		e := min(i+8, len(x))
		k.t.Errorf("%s: byte at %#x differs: %s % x, %s % x", what, uint64(pa)+uint64(i), k.c.nameA, x[i:e], k.c.nameB, y[i:e])
		if k.diffs == k.c.maxErrors {
			k.t.Errorf("more byte differences not reported (MaxErrors %d)", k.c.maxErrors)
		}
		return true // one report per buffer
	}
	return true
}

// readBoth reads [pa, pa+n) from both sources, which must hold it.
func (k *checker) readBoth(pa vmi.PA, x, y []byte, what string) bool {
	k.t.Helper()
	for _, s := range []struct {
		name string
		m    vmi.Memory
		buf  []byte
	}{{k.c.nameA, k.a, x}, {k.c.nameB, k.b, y}} {
		if n, err := s.m.ReadAt(s.buf, int64(pa)); n != len(s.buf) || err != nil {
			k.t.Errorf("%s: %s: reading %d bytes at %#x: %d bytes, %v", what, s.name, len(s.buf), uint64(pa), n, err)
			return false
		}
	}
	return true
}

// compareSpan compares [r.Start, r.End()) in chunks.
func (k *checker) compareSpan(r vmi.Range, what string) bool {
	k.t.Helper()
	const chunk = 1 << 20
	x, y := make([]byte, chunk), make([]byte, chunk)
	for a := r.Start; a < r.End(); a += chunk {
		l := min(uint64(chunk), uint64(r.End()-a))
		if !k.readBoth(a, x[:l], y[:l], what) || !k.diff(a, x[:l], y[:l], what) {
			return false
		}
		k.rep.Bytes += l
		k.rep.Pages += int((l + page - 1) / page)
	}
	return true
}

// compareBytes compares everything, or the sample.
func (k *checker) compareBytes() {
	k.t.Helper()
	if total(k.cmp) <= k.c.fullUpTo {
		k.rep.Full = true
		for _, r := range k.cmp {
			if !k.compareSpan(r, "full compare") {
				return
			}
		}
		return
	}
	for _, g := range k.c.regions {
		for _, r := range intersect(k.cmp, []vmi.Range{g.r}) {
			if !k.compareSpan(r, g.name) {
				return
			}
		}
		if present(k.cmp, g.r.Start, g.r.Size) != g.r.Size {
			k.t.Logf("memtest: region %s %v is not all in the compared ranges", g.name, g.r)
		}
	}
	// Pages: the stride, random pages, the vCPUs' page-table roots.
	var pages []vmi.PA
	if k.c.stride > 0 {
		for _, r := range k.cmp {
			for a := r.Start.PageBase(); a < r.End(); a += vmi.PA(k.c.stride * page) {
				pages = append(pages, a)
			}
		}
	}
	rng := rand.New(rand.NewPCG(k.c.seed, 0x6d656d74657374))
	n := total(k.cmp)
	for range k.c.random {
		pages = append(pages, at(k.cmp, rng.Uint64N(n)).PageBase())
	}
	if cs := cpusOf(k.c, k.a); cs != nil {
		for _, c := range cs {
			pages = append(pages, c.PageTableRoot())
		}
	}
	x, y := make([]byte, page), make([]byte, page)
	for _, p := range pages {
		// the part of the page in the compared ranges
		nonzero := false
		for _, r := range intersect(k.cmp, []vmi.Range{{Start: p, Size: page}}) {
			if !k.readBoth(r.Start, x[:r.Size], y[:r.Size], "page") || !k.diff(r.Start, x[:r.Size], y[:r.Size], "page") {
				return
			}
			k.rep.Bytes += r.Size
			if slices.ContainsFunc(x[:r.Size], func(c byte) bool { return c != 0 }) {
				nonzero = true
			}
		}
		k.rep.Pages++
		k.rep.Sampled++
		if nonzero {
			k.rep.NonZero++
		}
	}
}

// at is the address off bytes into the ranges.
func at(rs []vmi.Range, off uint64) vmi.PA {
	for _, r := range rs {
		if off < r.Size {
			return r.Start + vmi.PA(off)
		}
		off -= r.Size
	}
	return rs[len(rs)-1].End() - 1
}

// oddReads reads odd spans across page, range and hole boundaries from
// both sources: each read must stop exactly at the source's first hole
// with a HoleError, equal the source's page-aligned reads of the same
// bytes, and equal the other source where both hold the bytes.
func (k *checker) oddReads() {
	k.t.Helper()
	if k.c.odd == 0 {
		return
	}
	rng := rand.New(rand.NewPCG(k.c.seed, 0x6f6464))
	// boundaries: both sources' range edges, and the compared ranges' pages
	var edges []vmi.PA
	for _, rs := range [][]vmi.Range{k.ra, k.rb, k.cmp} {
		for _, r := range rs {
			edges = append(edges, r.Start, r.End())
		}
	}
	n := total(k.cmp)
	for i := range k.c.odd {
		var pa vmi.PA
		switch i % 3 {
		case 0: // across a range edge
			pa = edges[rng.IntN(len(edges))]
		default: // across a page boundary in the compared ranges
			pa = at(k.cmp, rng.Uint64N(n)).PageBase() + page
		}
		if i%2 == 0 {
			// start before the edge and read across it
			back := rng.Uint64N(2*page) + 1
			if uint64(pa) < back {
				back = uint64(pa)
			}
			pa -= vmi.PA(back)
		} else if e, ok := pa.Add(rng.Uint64N(page)); ok {
			// start just after it, in the same page
			pa = e
		}
		size := rng.Uint64N(3*page) + 1
		if i%7 == 0 {
			size = rng.Uint64N(16) + 1 // small
		}
		k.oddRead(pa, size)
		if k.diffs > k.c.maxErrors {
			return
		}
	}
	k.rep.OddReads = k.c.odd
}

// oddRead checks one read of size bytes at pa on both sources.
func (k *checker) oddRead(pa vmi.PA, size uint64) {
	k.t.Helper()
	// the page-aligned window around the span
	wlo := pa.PageBase()
	whi, ok := pa.Add(size)
	if !ok {
		return
	}
	if whi, ok = whi.RoundUp(); !ok {
		return
	}
	var win [2][]byte
	var got [2]uint64
	for s, src := range []struct {
		name string
		m    vmi.Memory
		rs   []vmi.Range
	}{{k.c.nameA, k.a, k.ra}, {k.c.nameB, k.b, k.rb}} {
		want := present(src.rs, pa, size)
		buf := make([]byte, size)
		n, err := src.m.ReadAt(buf, int64(pa))
		if !k.readResult(src.name, pa, size, want, n, err) {
			return
		}
		// the source's own aligned reads of the same bytes, page by page
		w := make([]byte, uint64(whi-wlo))
		for p := wlo; p < whi; p += page {
			// the parts of the page the source holds (a range may start or
			// end inside a page)
			for _, r := range intersect(src.rs, []vmi.Range{{Start: p, Size: page}}) {
				o := uint64(r.Start - wlo)
				if m, err := src.m.ReadAt(w[o:o+r.Size], int64(r.Start)); uint64(m) != r.Size || err != nil {
					k.t.Errorf("%s: page read at %#x: %d bytes of %d, %v", src.name, uint64(r.Start), m, r.Size, err)
					return
				}
			}
		}
		off := uint64(pa - wlo)
		for i := uint64(0); i < want; i++ {
			if buf[i] != w[off+i] {
				k.diffs++
				k.t.Errorf("%s: %d-byte read at %#x: byte %d (%#x) is %#02x, its page read says %#02x", src.name, size, uint64(pa), i, uint64(pa)+i, buf[i], w[off+i])
				return
			}
		}
		win[s], got[s] = w, want
	}
	// across sources: the window's bytes both hold, in the compared ranges
	for _, r := range intersect(k.cmp, []vmi.Range{{Start: wlo, Size: uint64(whi - wlo)}}) {
		o := uint64(r.Start - wlo)
		if present(k.ra, r.Start, r.Size) == r.Size && present(k.rb, r.Start, r.Size) == r.Size {
			k.diff(r.Start, win[0][o:o+r.Size], win[1][o:o+r.Size], "odd read")
		}
	}
}

// readResult checks a read's count and error against the source's ranges.
func (k *checker) readResult(name string, pa vmi.PA, size, want uint64, n int, err error) bool {
	k.t.Helper()
	if uint64(n) != want {
		k.t.Errorf("%s: %d-byte read at %#x: %d bytes (%v), its ranges hold %d", name, size, uint64(pa), n, err, want)
		return false
	}
	if want == size {
		if err != nil {
			k.t.Errorf("%s: %d-byte read at %#x: all present, err %v", name, size, uint64(pa), err)
			return false
		}
		return true
	}
	var he *vmi.HoleError
	if !errors.As(err, &he) || !errors.Is(err, vmi.ErrNotPresent) {
		k.t.Errorf("%s: %d-byte read at %#x stops at %#x: err %v, want a *vmi.HoleError wrapping vmi.ErrNotPresent", name, size, uint64(pa), uint64(pa)+want, err)
		return false
	}
	if he.Addr != pa+vmi.PA(want) {
		k.t.Errorf("%s: %d-byte read at %#x: HoleError at %#x, the first missing address is %#x", name, size, uint64(pa), uint64(he.Addr), uint64(pa)+want)
		return false
	}
	return true
}

// probeHoles reads in each source's gaps, past its end and near the top
// of the address space.
func (k *checker) probeHoles() {
	k.t.Helper()
	probes := 0
	for _, src := range []struct {
		name string
		m    vmi.Memory
		rs   []vmi.Range
	}{{k.c.nameA, k.a, k.ra}, {k.c.nameB, k.b, k.rb}} {
		var addrs []vmi.PA
		prev := vmi.PA(0)
		for i, r := range src.rs {
			if i >= k.c.holes {
				break
			}
			if r.Start > prev {
				addrs = append(addrs, prev, prev+(r.Start-prev)/2, r.Start-1)
			}
			prev = r.End()
		}
		end := src.rs[len(src.rs)-1].End()
		addrs = append(addrs, end, end+1<<30, math.MaxInt64-7)
		buf := make([]byte, 8)
		for _, a := range addrs {
			for _, l := range []uint64{1, 8} {
				n, err := src.m.ReadAt(buf[:l], int64(a))
				if k.readResult(src.name, a, l, present(src.rs, a, l), n, err) {
					probes++
				}
			}
		}
	}
	k.rep.Holes = probes / 2
}

// cpuSource is a source with saved vCPU state (vmi/snapshot).
type cpuSource interface{ CPUs() []vmi.CPU }

// liveCPUSource is a live guest (vmi.Live).
type liveCPUSource interface {
	CPUs(ctx context.Context) ([]vmi.CPU, error)
}

// cpusOf returns m's vCPUs, nil when it has none or cannot say.
func cpusOf(c config, m vmi.Memory) []vmi.CPU {
	switch s := m.(type) {
	case cpuSource:
		return s.CPUs()
	case liveCPUSource:
		ctx := c.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		cs, err := s.CPUs(ctx)
		if err != nil {
			return nil
		}
		return cs
	}
	return nil
}

func (k *checker) checkCPUs() {
	k.t.Helper()
	if k.c.noCPUs != "" {
		k.t.Logf("memtest: vCPUs not compared: %s", k.c.noCPUs)
		return
	}
	ca, cb := cpusOf(k.c, k.a), cpusOf(k.c, k.b)
	if len(ca) == 0 || len(ca) != len(cb) {
		k.t.Errorf("vCPUs: %s has %d, %s has %d (NoCPUs declares a source without them)", k.c.nameA, len(ca), k.c.nameB, len(cb))
		return
	}
	for i := range ca {
		for _, d := range cpuDiff(ca[i], cb[i]) {
			k.t.Errorf("vCPU %d: %s", i, d)
		}
	}
	k.rep.CPUs = len(ca)
}

// cpuDiff lists the registers both CPUs hold that differ. Segment
// descriptors (limit, flags, the LDT, TR, GDT and IDT) are compared when
// both hold them: a GDB stub gives selectors only (CS flags zero).
func cpuDiff(a, b vmi.CPU) []string {
	var out []string
	cmp := func(name string, x, y uint64) {
		if x != y {
			out = append(out, fmt.Sprintf("%s %#x and %#x", name, x, y))
		}
	}
	cmp("ID", uint64(a.ID), uint64(b.ID))
	if a.HasGPRs && b.HasGPRs {
		for _, r := range []struct {
			n    string
			x, y uint64
		}{
			{"RAX", a.RAX, b.RAX}, {"RBX", a.RBX, b.RBX}, {"RCX", a.RCX, b.RCX}, {"RDX", a.RDX, b.RDX},
			{"RSI", a.RSI, b.RSI}, {"RDI", a.RDI, b.RDI}, {"RBP", a.RBP, b.RBP}, {"RSP", a.RSP, b.RSP},
			{"R8", a.R8, b.R8}, {"R9", a.R9, b.R9}, {"R10", a.R10, b.R10}, {"R11", a.R11, b.R11},
			{"R12", a.R12, b.R12}, {"R13", a.R13, b.R13}, {"R14", a.R14, b.R14}, {"R15", a.R15, b.R15},
			{"RIP", a.RIP, b.RIP}, {"RFLAGS", a.RFLAGS, b.RFLAGS},
			{"FSBase", a.FSBase, b.FSBase}, {"GSBase", a.GSBase, b.GSBase},
			{"CS", uint64(a.CS.Selector), uint64(b.CS.Selector)}, {"SS", uint64(a.SS.Selector), uint64(b.SS.Selector)},
			{"DS", uint64(a.DS.Selector), uint64(b.DS.Selector)}, {"ES", uint64(a.ES.Selector), uint64(b.ES.Selector)},
			{"FS", uint64(a.FS.Selector), uint64(b.FS.Selector)}, {"GS", uint64(a.GS.Selector), uint64(b.GS.Selector)},
		} {
			cmp(r.n, r.x, r.y)
		}
	} else if a.HasGPRs != b.HasGPRs {
		out = append(out, fmt.Sprintf("general registers held %v and %v", a.HasGPRs, b.HasGPRs))
	}
	if a.HasControl && b.HasControl {
		cmp("CR0", a.CR0, b.CR0)
		cmp("CR2", a.CR2, b.CR2)
		cmp("CR3", a.CR3, b.CR3)
		cmp("CR4", a.CR4, b.CR4)
		if a.CS.Flags != 0 && b.CS.Flags != 0 {
			for _, s := range []struct {
				n    string
				x, y vmi.Segment
			}{{"CS", a.CS, b.CS}, {"SS", a.SS, b.SS}, {"DS", a.DS, b.DS}, {"ES", a.ES, b.ES}, {"FS", a.FS, b.FS}, {"GS", a.GS, b.GS},
				{"LDT", a.LDT, b.LDT}, {"TR", a.TR, b.TR}, {"GDT", a.GDT, b.GDT}, {"IDT", a.IDT, b.IDT}} {
				if s.x != s.y {
					out = append(out, fmt.Sprintf("%s %+v and %+v", s.n, s.x, s.y))
				}
			}
		}
	} else if a.HasControl != b.HasControl {
		out = append(out, fmt.Sprintf("control registers held %v and %v", a.HasControl, b.HasControl))
	}
	if a.HasKernelGSBase && b.HasKernelGSBase {
		cmp("KernelGSBase", a.KernelGSBase, b.KernelGSBase)
	}
	if a.HasEFER && b.HasEFER {
		cmp("EFER", a.EFER, b.EFER)
	}
	return out
}
