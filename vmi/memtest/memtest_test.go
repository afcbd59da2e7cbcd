package memtest_test

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/memtest"
)

// mem is guest-physical memory built in the test: ranges and their bytes,
// read as the vmi.Memory contract says (a HoleError at the first missing
// address). The kit's own tests break it in one way each.
type mem struct {
	ranges []vmi.Range
	data   [][]byte
	cpus   []vmi.CPU
	// the ways to break it
	holesZero  bool // holes read as zeros, no error
	holeOff    int  // the HoleError names an address this far off
	crossPages bool // a read across a page boundary repeats its first page
}

func (m *mem) Ranges() []vmi.Range { return m.ranges }
func (m *mem) CPUs() []vmi.CPU     { return m.cpus }

func (m *mem) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		a := vmi.PA(off) + vmi.PA(n)
		i := sort.Search(len(m.ranges), func(i int) bool { return m.ranges[i].End() > a })
		if i == len(m.ranges) || a < m.ranges[i].Start {
			if m.holesZero {
				p[n] = 0
				n++
				continue
			}
			return n, &vmi.HoleError{Addr: a + vmi.PA(m.holeOff)}
		}
		n += copy(p[n:], m.data[i][a-m.ranges[i].Start:])
	}
	if m.crossPages && len(p) > 1 && (uint64(off)&4095)+uint64(len(p)) > 4096 {
		first := 4096 - int(off&4095)
		for i := first; i < n; i++ {
			p[i] = p[i%first]
		}
	}
	return n, nil
}

// newMem is three ranges with holes between them, below 4 GiB and above,
// of random bytes.
func newMem(seed uint64, sizes ...uint64) *mem {
	rng := rand.New(rand.NewPCG(seed, 0))
	m := &mem{cpus: []vmi.CPU{{ID: 0, RIP: 0xffffffff81000000, CR3: 0x100000, HasGPRs: true, HasControl: true}}}
	starts := []vmi.PA{0, 0x100000, 0x100000000}
	for i, s := range sizes {
		m.ranges = append(m.ranges, vmi.Range{Start: starts[i], Size: s})
		b := make([]byte, s)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		m.data = append(m.data, b)
	}
	return m
}

// clone copies m's bytes and ranges.
func (m *mem) clone() *mem {
	c := *m
	c.ranges = append([]vmi.Range(nil), m.ranges...)
	c.data = make([][]byte, len(m.data))
	for i, d := range m.data {
		c.data[i] = append([]byte(nil), d...)
	}
	c.cpus = append([]vmi.CPU(nil), m.cpus...)
	return &c
}

// recorder is a testing.TB that records the kit's failures.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Logf(string, ...any)       {}
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(f, a...)) }

func agree(t *testing.T, a, b vmi.Memory, opts ...memtest.Option) (memtest.Report, []string) {
	r := &recorder{TB: t}
	rep := memtest.Agree(r, a, b, opts...)
	return rep, r.errs
}

// wantFail checks that the kit failed with a message that holds want.
func wantFail(t *testing.T, errs []string, want string) {
	t.Helper()
	for _, e := range errs {
		if strings.Contains(e, want) {
			return
		}
	}
	t.Errorf("no failure with %q; failures: %q", want, errs)
}

const mib = 1 << 20

func TestAgreeEqual(t *testing.T) {
	a := newMem(1, 640<<10, 3*mib, 256<<10)
	rep, errs := agree(t, a, a.clone())
	if len(errs) != 0 {
		t.Fatalf("equal sources: %q", errs)
	}
	if !rep.Full || rep.Bytes != (640<<10)+3*mib+(256<<10) || rep.CPUs != 1 || rep.OddReads == 0 || rep.Holes == 0 {
		t.Errorf("report %v", rep)
	}
}

func TestAgreeByteDiffers(t *testing.T) {
	a := newMem(1, 640<<10, 3*mib, 256<<10)
	b := a.clone()
	b.data[1][0x12345] ^= 1
	_, errs := agree(t, a, b)
	wantFail(t, errs, fmt.Sprintf("byte at %#x differs", 0x100000+0x12345))
}

// TestAgreeSampled breaks bytes in a source too large to compare in full:
// a page of the declared region, a page of the stride and a page-table
// root are always found.
func TestAgreeSampled(t *testing.T) {
	a := newMem(1, 640<<10, 16*mib, 256<<10)
	for _, c := range []struct {
		name string
		at   vmi.PA
		opts []memtest.Option
	}{
		{"region", 0x100000 + 5*mib + 0x777, []memtest.Option{memtest.Region("kernel", vmi.Range{Start: 0x100000 + 5*mib, Size: mib})}},
		{"stride", 0x100000 + 64*4096*7 + 3, nil},
		{"page-table root", 0x100000 + 0x10, []memtest.Option{memtest.Stride(0), memtest.RandomPages(0), memtest.OddReads(0)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := a.clone()
			b.data[1][c.at-0x100000] ^= 0x80
			rep, errs := agree(t, a, b, append(c.opts, memtest.FullUpTo(mib))...)
			if rep.Full {
				t.Errorf("compared in full: %v", rep)
			}
			wantFail(t, errs, fmt.Sprintf("byte at %#x differs", uint64(c.at)))
		})
	}
	// and random pages find a difference in every page
	b := a.clone()
	for i := 3; i < len(b.data[1]); i += 4096 {
		b.data[1][i] ^= 1
	}
	_, errs := agree(t, a, b, memtest.FullUpTo(mib), memtest.Stride(0), memtest.OddReads(0))
	wantFail(t, errs, "differs")
}

func TestAgreeRanges(t *testing.T) {
	a := newMem(1, 640<<10, 3*mib, 256<<10)
	b := a.clone()
	b.ranges, b.data = b.ranges[:2], b.data[:2] // b holds less
	_, errs := agree(t, a, b)
	wantFail(t, errs, "ranges differ")
	if _, errs := agree(t, a, b, memtest.Ranges(memtest.BInA)); len(errs) != 0 {
		t.Errorf("b declared inside a: %q", errs)
	}
	_, errs = agree(t, a, b, memtest.Ranges(memtest.AInB))
	wantFail(t, errs, "are not inside")
}

// TestAgreeHoles checks that a source whose holes read as zeros, or whose
// HoleError names the wrong address, fails.
func TestAgreeHoles(t *testing.T) {
	a := newMem(1, 640<<10, 3*mib, 256<<10)
	b := a.clone()
	b.holesZero = true
	_, errs := agree(t, a, b)
	wantFail(t, errs, "b: 1-byte read at 0xa0000: 1 bytes (<nil>), its ranges hold 0")
	b = a.clone()
	b.holeOff = 1
	_, errs = agree(t, a, b)
	wantFail(t, errs, "HoleError at")
}

// TestAgreeOddReads checks that a reader that gets reads across a page
// boundary wrong fails, even against itself.
func TestAgreeOddReads(t *testing.T) {
	a := newMem(1, 640<<10, 3*mib, 256<<10)
	b := a.clone()
	b.crossPages = true
	_, errs := agree(t, b, b.clone(), memtest.Stride(0), memtest.RandomPages(0))
	wantFail(t, errs, "its page read says")
}

func TestAgreeCPUs(t *testing.T) {
	a := newMem(1, 640<<10, 3*mib, 256<<10)
	b := a.clone()
	b.cpus[0].RIP++
	_, errs := agree(t, a, b)
	wantFail(t, errs, "RIP")
	b.cpus = nil
	_, errs = agree(t, a, b)
	wantFail(t, errs, "vCPUs: a has 1, b has 0")
	if _, errs := agree(t, a, b, memtest.NoCPUs("b saves none")); len(errs) != 0 {
		t.Errorf("NoCPUs: %q", errs)
	}
}

// TestAgreeTolerate checks that a jump label flipped between two moments
// is allowed and counted, and that any other difference next to it is not.
func TestAgreeTolerate(t *testing.T) {
	a := newMem(1, 640<<10, 3*mib, 256<<10)
	copy(a.data[1][0x2000:], []byte{0x0f, 0x1f, 0x44, 0, 0})
	copy(a.data[1][0x3000:], []byte{0xeb, 0x10})
	b := a.clone()
	copy(b.data[1][0x2000:], []byte{0xe9, 1, 2, 3, 4})
	copy(b.data[1][0x3000:], []byte{0x66, 0x90})
	rep, errs := agree(t, a, b, memtest.Tolerate(memtest.JumpLabel))
	if len(errs) != 0 || rep.Tolerated[memtest.JumpLabel.Name] < 2 {
		t.Errorf("jump labels: %q, report %v", errs, rep)
	}
	b.data[1][0x2005] ^= 1
	_, errs = agree(t, a, b, memtest.Tolerate(memtest.JumpLabel))
	wantFail(t, errs, fmt.Sprintf("byte at %#x differs", 0x102005))
	_, errs = agree(t, a, b)
	wantFail(t, errs, fmt.Sprintf("byte at %#x differs", 0x102000))
}

// TestAgreeOnly checks that Only limits the comparison to what must be
// equal.
func TestAgreeOnly(t *testing.T) {
	a := newMem(1, 640<<10, 3*mib, 256<<10)
	b := a.clone()
	b.data[1][2*mib] ^= 1
	rep, errs := agree(t, a, b, memtest.Only(vmi.Range{Start: 0x100000, Size: mib}))
	if len(errs) != 0 || rep.Bytes != mib {
		t.Errorf("only the first MiB: %q, report %v", errs, rep)
	}
}

// TestAgreeUnalignedRanges checks sources whose ranges start and end
// inside a page (a BIOS area ending at 0x9fc00): equal ones agree, and
// the hole at the start of the page is still found.
func TestAgreeUnalignedRanges(t *testing.T) {
	a := newMem(1, 0x9fc00, 3*mib, 256<<10)
	a.ranges[1].Start += 0x400
	a.ranges[1].Size -= 0x400
	a.data[1] = a.data[1][0x400:]
	rep, errs := agree(t, a, a.clone(), memtest.OddReads(2000))
	if len(errs) != 0 || rep.OddReads != 2000 {
		t.Fatalf("equal sources: %q, report %v", errs, rep)
	}
	b := a.clone()
	b.holesZero = true
	_, errs = agree(t, a, b)
	wantFail(t, errs, "b: 1-byte read at 0x9fc00: 1 bytes (<nil>), its ranges hold 0")
}
