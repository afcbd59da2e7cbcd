package vmi_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// physMem is sparse guest-physical memory for tests: 4 KiB frames by
// number; absent frames are holes.
type physMem struct {
	frames map[uint64][]byte
	reads  int
}

func newPhys() *physMem { return &physMem{frames: map[uint64][]byte{}} }

func (m *physMem) frame(pa vmi.PA) []byte {
	f, ok := m.frames[uint64(pa)>>12]
	if !ok {
		f = make([]byte, 4096)
		m.frames[uint64(pa)>>12] = f
	}
	return f
}

func (m *physMem) set(pa vmi.PA, v uint64) {
	binary.LittleEndian.PutUint64(m.frame(pa)[pa&0xfff:], v)
}

func (m *physMem) ReadAt(p []byte, off int64) (int, error) {
	m.reads++
	n := 0
	for n < len(p) {
		a := uint64(off) + uint64(n)
		f, ok := m.frames[a>>12]
		if !ok {
			return n, &vmi.HoleError{Addr: vmi.PA(a)}
		}
		n += copy(p[n:], f[a&0xfff:])
	}
	return n, nil
}

const (
	p  = 1      // present
	rw = 1 << 1 // writable
	ps = 1 << 7 // page size
)

// tables builds page tables the way a kernel would: the root at 0x1000 and
// tables allocated from 0x100000 on.
type tables struct {
	m    *physMem
	root vmi.PA
	next vmi.PA
	la57 bool
}

func newTables(la57 bool) *tables {
	t := &tables{m: newPhys(), root: 0x1000, next: 0x100000, la57: la57}
	t.m.frame(t.root)
	return t
}

// mapPage maps va to pa with a page of size (4K, 2M, 1G).
func (t *tables) mapPage(va vmi.VA, pa vmi.PA, size vmi.PageSize) {
	levels := 4
	if t.la57 {
		levels = 5
	}
	table := t.root
	for level := levels; ; level-- {
		shift := 12 + 9*uint(level-1)
		at := table + vmi.PA((uint64(va)>>shift)&0x1ff*8)
		if vmi.PageSize(1)<<shift == size {
			e := uint64(pa) | p | rw
			if level > 1 {
				e |= ps
			}
			t.m.set(at, e|1<<63) // NX set: it must be ignored
			return
		}
		f := t.m.frame(at)
		e := binary.LittleEndian.Uint64(f[at&0xfff:])
		if e&p == 0 {
			e = uint64(t.next) | p | rw
			t.m.frame(t.next)
			t.next += 0x1000
			t.m.set(at, e)
		}
		table = vmi.PA(e & 0x000ffffffffff000)
	}
}

func TestTranslate(t *testing.T) {
	for _, la57 := range []bool{false, true} {
		tb := newTables(la57)
		kernel := vmi.VA(0xffffffff81000000)
		direct := vmi.VA(0xffff888000000000)
		if la57 {
			direct = 0xff11000000000000
		}
		tb.mapPage(0x400000, 0x200000+0x3000, vmi.Page4K)
		tb.mapPage(0x401000, 0x200000+0x9000, vmi.Page4K)
		tb.mapPage(kernel, 0x1000000, vmi.Page2M)
		tb.mapPage(direct, 0x40000000, vmi.Page1G)
		as := vmi.AddressSpace{Mem: tb.m, Root: tb.root | 0x18, LA57: la57} // PWT|PCD flags in CR3 ignored
		for _, c := range []struct {
			va   vmi.VA
			pa   vmi.PA
			size vmi.PageSize
		}{
			{0x400123, 0x203123, vmi.Page4K},
			{0x401fff, 0x209fff, vmi.Page4K},
			{kernel + 0x12345, 0x1012345, vmi.Page2M},
			{direct + 0x3fffffff, 0x7fffffff, vmi.Page1G},
		} {
			tb.m.reads = 0
			pa, size, err := as.Translate(c.va)
			if err != nil || pa != c.pa || size != c.size {
				t.Errorf("la57=%v %v: %v %#x %v, want %v %#x", la57, c.va, pa, size, err, c.pa, c.size)
			}
			if tb.m.reads > 5 {
				t.Errorf("%v: %d reads", c.va, tb.m.reads)
			}
		}
		for _, va := range []vmi.VA{0x402000, kernel + 0x200000, 0x800000000000, direct - 1} {
			_, _, err := as.Translate(va)
			var pf *vmi.PageFault
			if !errors.As(err, &pf) || !errors.Is(err, vmi.ErrNotPresent) {
				t.Errorf("la57=%v %v: err %v, want a PageFault", la57, va, err)
			}
		}
		// a read across two 4K pages mapped to distant frames
		tb.m.frame(0x203000)[0xffe] = 'a'
		tb.m.frame(0x203000)[0xfff] = 'b'
		tb.m.frame(0x209000)[0] = 'c'
		got := make([]byte, 3)
		if n, err := as.ReadVirt(got, 0x400ffe); n != 3 || err != nil || string(got) != "abc" {
			t.Errorf("ReadVirt across pages: %d %q %v", n, got, err)
		}
		// a read running into an unmapped page stops there
		big := make([]byte, 0x3000)
		if n, err := as.ReadVirt(big, 0x400000); n != 0x2000 || !errors.Is(err, vmi.ErrNotPresent) {
			t.Errorf("ReadVirt into a hole: %d %v", n, err)
		}
	}
	// PS in a PML4 entry is reserved
	tb := newTables(false)
	tb.m.set(tb.root, 0x200000|p|ps)
	if _, _, err := vmi.Translate(tb.m, tb.root, 0x1000, false); !errors.Is(err, vmi.ErrCorrupt) {
		t.Errorf("PS in PML4E: %v", err)
	}
	// a page table outside memory: the hole is reported
	tb.m.set(tb.root, 0x7000000|p)
	if _, _, err := vmi.Translate(tb.m, tb.root, 0x1000, false); !errors.Is(err, vmi.ErrNotPresent) {
		t.Errorf("table in a hole: %v", err)
	}
}

// TestGuestGVA2GPA translates kernel symbols (from the guest's
// /proc/kallsyms) in QEMU's ELF dump with the dumped CR3 and compares with
// QEMU's own "gva2gpa" answers for the stopped guest, then checks the
// page walker against QEMU's "info mem" map: each mapped range translates
// at both ends, and the byte after a range followed by a gap does not.
func TestGuestGVA2GPA(t *testing.T) {
	for _, mode := range guesttest.Modes {
		t.Run(mode, func(t *testing.T) {
			s, err := snapshot.Open(guesttest.Path(t, mode, guesttest.ELFDump))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			cpu := s.CPUs()[0]
			if cpu.LA57() != (mode == guesttest.LA57) {
				t.Errorf("LA57 %v in mode %s", cpu.LA57(), mode)
			}
			as := vmi.AddressSpace{Mem: s, Root: cpu.PageTableRoot(), LA57: cpu.LA57()}
			b, err := os.ReadFile(guesttest.Path(t, mode, guesttest.GVA2GPA))
			if err != nil {
				t.Fatal(err)
			}
			checked := 0
			for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				f := strings.Fields(line)
				va, _ := strconv.ParseUint(strings.TrimPrefix(f[1], "0x"), 16, 64)
				pa, size, err := as.Translate(vmi.VA(va))
				if f[2] == "-" {
					if err == nil {
						t.Errorf("%s %#x: %v, QEMU has no mapping", f[0], va, pa)
					}
					continue
				}
				want, _ := strconv.ParseUint(strings.TrimPrefix(f[2], "0x"), 16, 64)
				if err != nil || uint64(pa) != want {
					t.Errorf("%s %#x: %v (%#x) %v, QEMU says %#x", f[0], va, pa, size, err, want)
				}
				checked++
			}
			if checked < 10 {
				t.Errorf("only %d symbols checked", checked)
			}
			// the banner, read through the page tables, is the guest's /proc/version
			tr := guesttest.Load(t, mode)
			banner, _ := tr.Symbol("linux_banner")
			got := make([]byte, len(tr.Version))
			if _, err := as.ReadVirt(got, vmi.VA(banner)); err != nil || string(got) != tr.Version {
				t.Errorf("linux_banner: %q %v", got, err)
			}

			f, err := os.Open(guesttest.Path(t, mode, guesttest.InfoMem))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			var prevEnd uint64
			n := 0
			for sc.Scan() {
				// 0000000000400000-00000000004f0000 00000000000f0000 ur-
				fs := strings.Fields(sc.Text())
				if len(fs) != 3 {
					continue
				}
				lo, hi, ok := strings.Cut(fs[0], "-")
				if !ok {
					continue
				}
				start, _ := strconv.ParseUint(lo, 16, 64)
				end, _ := strconv.ParseUint(hi, 16, 64)
				for _, va := range []uint64{start, end - 1} {
					if _, _, err := as.Translate(vmi.VA(va)); err != nil {
						t.Errorf("info mem maps %#x: %v", va, err)
					}
				}
				if prevEnd != 0 && prevEnd < start && vmi.Canonical(vmi.VA(prevEnd), as.LA57) {
					if _, _, err := as.Translate(vmi.VA(prevEnd)); !errors.Is(err, vmi.ErrNotPresent) {
						t.Errorf("info mem leaves %#x unmapped: %v", prevEnd, err)
					}
				}
				prevEnd = end
				n++
			}
			if n < 10 && mode != guesttest.LA57 {
				t.Errorf("info mem: %d ranges", n)
			}
		})
	}
}

// refTranslate is a second, naive walker for the fuzz target.
func refTranslate(m *physMem, cr3 uint64, va uint64, la57 bool) (uint64, uint64, bool) {
	bits := 48
	levels := 4
	if la57 {
		bits, levels = 57, 5
	}
	if s := int64(va) >> (bits - 1); s != 0 && s != -1 {
		return 0, 0, false
	}
	table := cr3 &^ 0xfff & (1<<52 - 1)
	for l := levels; l >= 1; l-- {
		buf := make([]byte, 8)
		if _, err := m.ReadAt(buf, int64(table+((va>>(12+9*(l-1)))&511)*8)); err != nil {
			return 0, 0, false
		}
		e := binary.LittleEndian.Uint64(buf)
		if e&1 == 0 {
			return 0, 0, false
		}
		size := uint64(1) << (12 + 9*(l-1))
		if l == 1 || (e&ps != 0 && l <= 3) {
			return (e&(1<<52-1))&^(size-1) | va&(size-1), size, true
		}
		if e&ps != 0 {
			return 0, 0, false
		}
		table = e & (1<<52 - 1) &^ 0xfff
	}
	return 0, 0, false
}

// FuzzTranslate walks random page tables: eight frames of fuzzer bytes at
// 0..0x8000 whose entries point back into them, so walks go deep.
func FuzzTranslate(f *testing.F) {
	tb := newTables(false)
	tb.mapPage(0xffffffff81000000, 0x1000000, vmi.Page2M)
	tb.mapPage(0x400000, 0x3000, vmi.Page4K)
	var seed bytes.Buffer
	for i := uint64(0); i < 8; i++ {
		seed.Write(tb.m.frame(vmi.PA(i << 12)))
	}
	f.Add(seed.Bytes(), uint64(0x1000), uint64(0xffffffff81012345), false)
	f.Add(seed.Bytes(), uint64(0x1000), uint64(0x400123), true)
	f.Fuzz(func(t *testing.T, data []byte, cr3, va uint64, la57 bool) {
		m := newPhys()
		for i := 0; i < 8 && i*4096 < len(data); i++ {
			copy(m.frame(vmi.PA(i<<12)), data[i*4096:])
		}
		// keep table pointers inside the eight frames most of the time
		for _, fr := range m.frames {
			for j := 0; j < 4096; j += 8 {
				e := binary.LittleEndian.Uint64(fr[j:])
				if e&0x8000 == 0 {
					e = e&^(0x000ffffffffff000) | (e>>12&7)<<12
					binary.LittleEndian.PutUint64(fr[j:], e)
				}
			}
		}
		m.reads = 0
		pa, size, err := vmi.Translate(m, vmi.PA(cr3), vmi.VA(va), la57)
		if m.reads > 5 {
			t.Fatalf("%d reads", m.reads)
		}
		rpa, rsize, ok := refTranslate(m, cr3, va, la57)
		if (err == nil) != ok {
			t.Fatalf("walker %v %v %v, reference %#x %#x %v", pa, size, err, rpa, rsize, ok)
		}
		if err != nil {
			if !errors.Is(err, vmi.ErrNotPresent) && !errors.Is(err, vmi.ErrCorrupt) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		if uint64(pa) != rpa || uint64(size) != rsize || uint64(pa)&(uint64(size)-1) != va&(uint64(size)-1) {
			t.Fatalf("walker %v %#x, reference %#x %#x", pa, size, rpa, rsize)
		}
	})
}
