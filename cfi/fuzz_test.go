package cfi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// fakeMem is guest-physical memory from a byte slice.
type fakeMem []byte

func (m fakeMem) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(m)) {
		return 0, &vmi.HoleError{Addr: vmi.PA(off)}
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, &vmi.HoleError{Addr: vmi.PA(off + int64(n))}
	}
	return n, nil
}

func (m fakeMem) Ranges() []vmi.Range { return []vmi.Range{{Start: 0, Size: uint64(len(m))}} }

// The hostile kernel of the fuzz targets: page tables at physical 0 map
// window (windowPages pages at windowVA, in the module area) onto the fuzz
// input, at physical dataPA; every structure the checks read is there.
const (
	windowVA    = vmi.VA(0xffffffffc0000000)
	windowPages = 16
	dataPA      = 0x4000
)

// hostileMem builds the page tables (PML4 slot 511 -> PDPT slot 511 -> PD
// slot 0 -> PT) and copies data into the window.
func hostileMem(data []byte) fakeMem {
	m := make(fakeMem, dataPA+windowPages*vmi.PageBytes)
	put := func(pa uint64, v uint64) { binary.LittleEndian.PutUint64(m[pa:], v) }
	idx := func(va vmi.VA, level uint) uint64 { return uint64(va) >> (12 + 9*(level-1)) & 0x1ff }
	put(0x0000+idx(windowVA, 4)*8, 0x1000|3)
	put(0x1000+idx(windowVA, 3)*8, 0x2000|3)
	put(0x2000+idx(windowVA, 2)*8, 0x3000|3)
	for i := uint64(0); i < windowPages; i++ {
		put(0x3000+(idx(windowVA, 1)+i)*8, (dataPA+i*vmi.PageBytes)|3) // present, writable, executable
	}
	copy(m[dataPA:], data)
	return m
}

// hostileSyms places every symbol the checks look up in the window, 0x200
// apart; core text is elsewhere (unmapped).
var hostileSymNames = []string{
	"modules", "module_kset", "ftrace_ops_list", "ftrace_list_end", "ftrace_pages_start",
	"ftrace_ops_trampoline_list", "kprobe_table", "kprobe_insn_slots", "kprobe_optinsn_slots",
	"sys_call_table", "syscalls_metadata", "idt_table", "init_task", "pack_list", "nr_node_ids",
	"bpf_kallsyms", "real_mode_header", "early_idt_handler_array", "__start_init_task", "__end_init_task",
}

func hostileSymbols() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ffffffff81000000 T _text\nffffffff82000000 T _etext\n")
	for i, n := range hostileSymNames {
		fmt.Fprintf(&b, "%016x D %s\n", uint64(windowVA)+uint64(i)*0x200, n)
	}
	return b.String()
}

var (
	btfOnce sync.Once
	btfSpec *btf.Spec
	btfErr  error
)

// guestBTF is the guest fixture kernel's BTF (the layouts the checks use),
// or skips the test.
func guestBTF(t testing.TB) *btf.Spec {
	t.Helper()
	p := fixture.GuestPath(t, "kaslr", "guest.elf")
	btfOnce.Do(func() {
		s, err := snapshot.Open(p)
		if err != nil {
			btfErr = err
			return
		}
		defer s.Close()
		k, err := linux.Discover(context.Background(), s, linux.WithCPUs(s.CPUs()))
		if err != nil {
			btfErr = err
			return
		}
		btfSpec = k.Types
	})
	if btfErr != nil {
		t.Fatal(btfErr)
	}
	return btfSpec
}

func hostileKernel(t testing.TB, data []byte, spec *btf.Spec) *linux.Kernel {
	syms, err := linux.ParseKallsyms(strings.NewReader(hostileSymbols()))
	if err != nil {
		t.Fatal(err)
	}
	mem := hostileMem(data)
	return &linux.Kernel{Mem: mem, AS: vmi.AddressSpace{Mem: mem, Root: 0}, Text: 0xffffffff81000000, ImageEnd: 0xffffffff82000000,
		Symbols: syms, Types: spec, Version: "fuzz"}
}

// seedWindow is a window whose lists point at each other: every list head
// holds pointers into the window, a few self-loops and cycles.
func seedWindow(f *testing.F) {
	f.Add([]byte{})
	// the symbols' area holds pointers scattered over the window
	w := make([]byte, windowPages*vmi.PageBytes)
	for i := 0; i+8 <= 0x3000; i += 8 {
		binary.LittleEndian.PutUint64(w[i:], uint64(windowVA)+uint64((i*7919)%len(w))&^7)
	}
	f.Add(w)
	self := make([]byte, windowPages*vmi.PageBytes)
	for i := 0; i+8 <= len(self); i += 8 {
		binary.LittleEndian.PutUint64(self[i:], uint64(windowVA)+uint64(i))
	}
	f.Add(self)
	next := make([]byte, windowPages*vmi.PageBytes)
	for i := 0; i+8 <= len(next); i += 8 {
		binary.LittleEndian.PutUint64(next[i:], uint64(windowVA)+uint64(i+0x100)%uint64(len(next)))
	}
	f.Add(next)
}

// FuzzCheck runs every check on a kernel whose structures (lists, tables,
// module area, stacks) are the fuzz input: Check must end without panic,
// its findings sorted and within bounds, every carved module valid.
func FuzzCheck(f *testing.F) {
	seedWindow(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		spec := guestBTF(t)
		k := hostileKernel(t, data, spec)
		ctx := context.Background()
		rep, err := Check(ctx, k)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				t.Fatal(err)
			}
			return
		}
		if !sort.SliceIsSorted(rep.Findings, func(i, j int) bool {
			a, b := rep.Findings[i], rep.Findings[j]
			return a.Kind < b.Kind || a.Kind == b.Kind && a.Address < b.Address
		}) {
			t.Errorf("findings not sorted")
		}
		if len(rep.Findings) > 1<<20 {
			t.Errorf("%d findings", len(rep.Findings))
		}
		cm, _, err := CarveModules(ctx, k)
		if err != nil {
			return
		}
		modOff, _ := k.Field("module", "mkobj.mod")
		for _, m := range cm {
			self, err := k.ReadU64(m.Addr + vmi.VA(modOff))
			if err != nil || vmi.VA(self) != m.Addr || m.Name == "" || m.Base < moduleAreaLo || m.Base >= moduleAreaHi {
				t.Errorf("carved module %+v not valid", m)
			}
		}
	})
}

// FuzzWalkList follows hostile list_heads: the walk ends, visits each
// entry once, and stays on kernel pointers.
func FuzzWalkList(f *testing.F) {
	seedWindow(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		k := hostileKernel(t, data, nil)
		for _, head := range []vmi.VA{windowVA, windowVA + 0x208, windowVA + vmi.VA(len(data)&^7)} {
			seen := map[vmi.VA]bool{}
			walkList(k, head, 64, func(e vmi.VA) bool {
				if seen[e] || !kernelPtr(e) || e == head {
					t.Fatalf("entry %#x: seen %v", uint64(e), seen[e])
				}
				seen[e] = true
				return true
			})
			if len(seen) > 64 {
				t.Fatalf("%d entries past the cap", len(seen))
			}
		}
	})
}

// FuzzExecRanges walks hostile page tables (the input is guest-physical
// memory from 0, the root at 0): ranges sorted, disjoint, non-empty, in
// the kernel half, the tables read capped.
func FuzzExecRanges(f *testing.F) {
	f.Add([]byte(hostileMem(nil)[:dataPA+vmi.PageBytes]))
	loop := make([]byte, 0x2000)
	for i := 0; i < 512; i++ {
		binary.LittleEndian.PutUint64(loop[i*8:], 0x1000|3)
		binary.LittleEndian.PutUint64(loop[0x1000+i*8:], 0x0000|3)
	}
	f.Add(loop)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, la57 := range []bool{false, true} {
			rs, _, err := ExecRanges(context.Background(), bytes.NewReader(data), 0, la57)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range rs {
				if r.End <= r.Start || !kernelPtr(r.Start) && !la57 || i > 0 && r.Start < rs[i-1].End {
					t.Fatalf("range %d %#x-%#x after %#x", i, uint64(r.Start), uint64(r.End), uint64(rs[max(i-1, 0)].End))
				}
			}
		}
	})
}

var _ io.ReaderAt = fakeMem(nil)

// FuzzTextImage parses hostile kernel images (ELF and relocation table)
// for a kernel whose core text is 4 KiB: no panic, and an image accepted
// has exactly that much text.
func FuzzTextImage(f *testing.F) {
	var b bytes.Buffer
	// a minimal ELF64 with a .text section is built by the seed below
	f.Add(minimalELF(&b))
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, payload []byte) {
		k := &linux.Kernel{Text: 0xffffffff81000000}
		m := &KernelMap{Kernel: k, Core: Region{Start: 0xffffffff81000000, End: 0xffffffff81001000}}
		ti, err := newTextImage(m, payload)
		if err != nil {
			return
		}
		if len(ti.text) != 0x1000 {
			t.Fatalf("%d bytes of text", len(ti.text))
		}
	})
}

// minimalELF writes an ELF64 with one .text section of 4 KiB at
// 0xffffffff81000000 and a relocation table of three empty lists.
func minimalELF(b *bytes.Buffer) []byte {
	le := binary.LittleEndian
	const textOff, textSize = 0x1000, 0x1000
	shoff := textOff + textSize
	hdr := make([]byte, 64)
	copy(hdr, "\x7fELF\x02\x01\x01")
	le.PutUint16(hdr[16:], 2)    // ET_EXEC
	le.PutUint16(hdr[18:], 0x3e) // x86-64
	le.PutUint32(hdr[20:], 1)
	le.PutUint64(hdr[40:], uint64(shoff))
	le.PutUint16(hdr[52:], 64)
	le.PutUint16(hdr[58:], 64)
	le.PutUint16(hdr[60:], 3) // null, .text, .shstrtab
	le.PutUint16(hdr[62:], 2)
	out := make([]byte, shoff+3*64+32+12)
	copy(out, hdr)
	strtab := []byte("\x00.text\x00.shstrtab\x00")
	strOff := shoff + 3*64
	copy(out[strOff:], strtab)
	sh := func(i int, name, typ uint32, flags, addr, off, size uint64) {
		s := out[shoff+i*64:]
		le.PutUint32(s[0:], name)
		le.PutUint32(s[4:], typ)
		le.PutUint64(s[8:], flags)
		le.PutUint64(s[16:], addr)
		le.PutUint64(s[24:], off)
		le.PutUint64(s[32:], size)
	}
	sh(1, 1, 1, 6, 0xffffffff81000000, textOff, textSize)
	sh(2, 7, 3, 0, 0, uint64(strOff), uint64(len(strtab)))
	b.Write(out)
	return b.Bytes()
}

// TestTextImageRelocates checks the relocation table reader on the seed
// image: one 32-bit, one inverse 32-bit and one 64-bit relocation in
// .text, applied with the slide.
func TestTextImageRelocates(t *testing.T) {
	var b bytes.Buffer
	img := minimalELF(&b)
	le := binary.LittleEndian
	le.PutUint32(img[0x1000+0x10:], 0x81000100)
	le.PutUint32(img[0x1000+0x20:], 0x100)
	le.PutUint64(img[0x1000+0x30:], 0xffffffff81000200)
	// backwards from the end: 32-bit list, 0, inverse list, 0, 64-bit list, 0
	var tab []uint32
	tab = append(tab, 0, 0x81000030, 0, 0x81000020, 0, 0x81000010)
	for _, v := range tab {
		img = le.AppendUint32(img, v)
	}
	const slide = 0x2000000
	k := &linux.Kernel{Text: 0xffffffff81000000 + slide}
	m := &KernelMap{Kernel: k, Core: Region{Start: 0xffffffff81000000 + slide, End: 0xffffffff81001000 + slide}}
	ti, err := newTextImage(m, img)
	if err != nil {
		t.Fatal(err)
	}
	if v := le.Uint32(ti.text[0x10:]); v != 0x81000100+slide {
		t.Errorf("32-bit: %#x", v)
	}
	inv := uint32(0x100)
	inv -= slide
	if v := le.Uint32(ti.text[0x20:]); v != inv {
		t.Errorf("inverse 32-bit: %#x", v)
	}
	if v := le.Uint64(ti.text[0x30:]); v != 0xffffffff81000200+slide {
		t.Errorf("64-bit: %#x", v)
	}
}

// TestRegionNested checks lookups among nested regions (JIT images inside
// a BPF pack): the innermost region that holds an address answers, and a
// pack's address past many images is still in the pack.
func TestRegionNested(t *testing.T) {
	m := &KernelMap{Kernel: &linux.Kernel{}}
	m.Regions = []Region{{Start: 0x1000, End: 0x201000, Kind: RegionBPF, Name: "pack"}}
	for i := 0; i < 10; i++ {
		a := vmi.VA(0x1000 + i*0x100)
		m.Regions = append(m.Regions, Region{Start: a, End: a + 0x80, Kind: RegionBPF, Name: fmt.Sprintf("prog%d", i)})
	}
	m.maxEnd = make([]vmi.VA, len(m.Regions))
	for i := range m.Regions {
		m.maxEnd[i] = 0x201000
	}
	for va, want := range map[vmi.VA]string{0x1010: "prog0", 0x1990: "pack", 0x1910: "prog9", 0x100000: "pack"} {
		if r, ok := m.Region(va); !ok || r.Name != want {
			t.Errorf("Region(%#x) = %q %v, want %q", uint64(va), r.Name, ok, want)
		}
	}
	if _, ok := m.Region(0x201000); ok {
		t.Errorf("Region past the pack found")
	}
	got := subtract(0, 0x300000, []Region{{Start: 0x1000, End: 0x201000}})
	if len(got) != 2 || got[0] != [2]vmi.VA{0, 0x1000} || got[1] != [2]vmi.VA{0x201000, 0x300000} {
		t.Errorf("subtract: %v", got)
	}
}

// TestKprobeHandlerOutsideText registers, in the hostile kernel's memory,
// one struct kprobe (layout from the fixture kernel's BTF) on a core-text
// address whose pre_handler is outside every code region: the kprobes
// check reports exactly that handler, on that probe.
func TestKprobeHandlerOutsideText(t *testing.T) {
	spec := guestBTF(t)
	k0 := hostileKernel(t, nil, spec)
	field := func(f string) uint64 {
		o, err := k0.Field("kprobe", f)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	data := make([]byte, windowPages*vmi.PageBytes)
	const probeOff, handlerOff = 0x8000, 0x9000
	probe := windowVA + probeOff
	var table int
	for i, n := range hostileSymNames {
		if n == "kprobe_table" {
			table = i * 0x200
		}
	}
	le := binary.LittleEndian
	le.PutUint64(data[table:], uint64(probe)+field("hlist")) // bucket 0
	le.PutUint64(data[probeOff+field("hlist"):], 0)          // last on its chain
	le.PutUint64(data[probeOff+field("addr"):], 0xffffffff81001234)
	le.PutUint64(data[probeOff+field("pre_handler"):], uint64(windowVA+handlerOff))
	k := hostileKernel(t, data, spec)
	rep, err := Check(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	var got []Finding
	for _, f := range rep.Findings {
		if f.Kind == KindKprobe {
			got = append(got, f)
		}
	}
	want := fmt.Sprintf("kprobe %#x on _text+0x1234", uint64(probe))
	if len(got) != 1 || got[0].Address != uint64(windowVA+handlerOff) || got[0].Where != want || got[0].Owner != OwnerNone {
		t.Fatalf("kprobe findings %v, want one at %#x in %q", got, uint64(windowVA+handlerOff), want)
	}
}

// kallsymsBlob lays out kallsyms tables of n symbols (names "sN", one
// token per byte value) as scripts/kallsyms.c does, with
// kallsyms_relative_base at the returned offset.
func kallsymsBlob(n int, seqs bool) ([]byte, int) {
	le := binary.LittleEndian
	pad := func(b []byte) []byte {
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
		return b
	}
	var b []byte
	for i := 0; i < n; i++ {
		b = le.AppendUint32(b, uint32(0x100*i))
	}
	b = pad(b)
	base := len(b)
	b = le.AppendUint64(b, 0xffffffff81000000)
	b = le.AppendUint32(b, uint32(n))
	b = pad(b)
	names := len(b)
	var marks []uint32
	for i := 0; i < n; i++ {
		if i%256 == 0 {
			marks = append(marks, uint32(len(b)-names))
		}
		s := fmt.Sprintf("ts%d", i)
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	b = pad(b)
	for _, m := range marks {
		b = le.AppendUint32(b, m)
	}
	b = pad(b)
	if seqs {
		b = pad(append(b, make([]byte, 3*n)...))
	}
	tt := len(b)
	var idx []uint16
	for c := 0; c < 256; c++ {
		idx = append(idx, uint16(len(b)-tt))
		tok := byte(c)
		if tok == 0 {
			tok = '@'
		}
		b = append(b, tok, 0)
	}
	b = pad(b)
	for _, v := range idx {
		b = le.AppendUint16(b, v)
	}
	return b, base
}

// FuzzKallsymsTables parses hostile .rodata for the kallsyms tables: no
// panic, and tables accepted lie in the input, in the order of the
// layout, without overlapping; the synthetic tables (with and without
// kallsyms_seqs_of_names) are found whole.
func FuzzKallsymsTables(f *testing.F) {
	for _, c := range []struct {
		n    int
		seqs bool
	}{{3, false}, {300, false}, {300, true}} {
		b, base := kallsymsBlob(c.n, c.seqs)
		tables, ok := kallsymsAt(b, base)
		if want := 7 + btoi(c.seqs); !ok || len(tables) != want || tables[len(tables)-1].link+512 != vmi.VA(len(b)) {
			f.Fatalf("%d symbols (seqs %v): %v %v, want %d tables ending at %d", c.n, c.seqs, tables, ok, want, len(b))
		}
		f.Add(b, base)
	}
	f.Fuzz(func(t *testing.T, ro []byte, base int) {
		if base < 0 || base%8 != 0 {
			return
		}
		tables, ok := kallsymsAt(ro, base)
		if !ok {
			return
		}
		end := vmi.VA(0)
		for _, tb := range tables {
			if tb.link < end || tb.link+vmi.VA(tb.size) > vmi.VA(len(ro)) {
				t.Fatalf("table %s [%#x,+%d) out of order or out of %d bytes", tb.name, uint64(tb.link), tb.size, len(ro))
			}
			end = tb.link + vmi.VA(tb.size)
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
