package cfi

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// Caps on the kernel image the text check reads.
const (
	maxRelocs    = 1 << 24
	maxSiteBytes = 64 << 20
)

// span is a range of kernel virtual addresses, [lo, hi).
type span struct{ lo, hi vmi.VA }

// textImage is the build's core text as the kernel would have it before
// any runtime patching: the .text section of its vmlinux (the payload of
// the distribution's vmlinuz), relocated by the KASLR slide with the
// relocation table that follows the ELF in that payload (the format
// arch/x86/boot/compressed/misc.c's handle_relocations reads), and the
// patch sites the build recorded.
type textImage struct {
	e     *elf.File
	raw   []byte
	delta int64 // runtime VA - link VA
	text  []byte
	link  vmi.VA // link address of .text
	// relocs are the relocation table's 32-bit, inverse 32-bit and 64-bit
	// lists, link addresses, sorted
	relocs [3][]vmi.VA
	sites  []span // runtime VAs the kernel patches at boot or at run time
}

// readLink reads n bytes at link address a from the ELF's loaded segments.
func (ti *textImage) readLink(a vmi.VA, n uint64) ([]byte, error) {
	for _, p := range ti.e.Progs {
		if p.Type != elf.PT_LOAD || uint64(a) < p.Vaddr || uint64(a)-p.Vaddr+n > p.Filesz || n > maxSiteBytes {
			continue
		}
		b := make([]byte, n)
		if _, err := p.ReadAt(b, int64(uint64(a)-p.Vaddr)); err != nil {
			return nil, err
		}
		return b, nil
	}
	return nil, fmt.Errorf("link address %#x+%d is in no loaded segment of the image: %w", uint64(a), n, vmerr.ErrNotPresent)
}

// newTextImage parses the vmlinux payload for the kernel of m.
func newTextImage(m *KernelMap, payload []byte) (*textImage, error) {
	e, err := elf.NewFile(bytes.NewReader(payload))
	if err != nil {
		return nil, fmt.Errorf("cfi: kernel image: %w: %w", err, vmi.ErrCorrupt)
	}
	sec := e.Section(".text")
	if sec == nil || sec.Type == elf.SHT_NOBITS || sec.Size > maxRegionSize {
		return nil, fmt.Errorf("cfi: kernel image has no .text: %w", vmi.ErrCorrupt)
	}
	ti := &textImage{e: e, raw: payload, link: vmi.VA(sec.Addr), delta: int64(m.Core.Start) - int64(sec.Addr)}
	if ti.text, err = sec.Data(); err != nil {
		return nil, fmt.Errorf("cfi: kernel image .text: %w", err)
	}
	if want := uint64(m.Core.End - m.Core.Start); uint64(len(ti.text)) < want {
		return nil, fmt.Errorf("cfi: kernel image .text is %d bytes, the running kernel's %d: another build: %w", len(ti.text), want, vmerr.ErrUnsupported)
	}
	ti.text = ti.text[:m.Core.End-m.Core.Start]
	if err := ti.relocate(); err != nil {
		return nil, err
	}
	return ti, nil
}

// relocate reads the relocation table at the end of the payload
// (working backwards from the end: 32-bit relocations up to a zero, then
// inverse 32-bit ones up to a zero, then 64-bit ones up to a zero; each
// entry the sign-extended link address of a field to adjust by the slide)
// and applies it to .text.
func (ti *textImage) relocate() error {
	b := ti.raw
	i := len(b) - 4
	for pass := 0; pass < 3; pass++ {
		for n := 0; ; n++ {
			if i < 0 || n > maxRelocs {
				return fmt.Errorf("cfi: kernel image relocation table runs off its start: %w", vmi.ErrCorrupt)
			}
			r := binary.LittleEndian.Uint32(b[i:])
			i -= 4
			if r == 0 {
				break
			}
			ti.relocs[pass] = append(ti.relocs[pass], vmi.VA(int64(int32(r))))
		}
	}
	for p := range ti.relocs {
		sort.Slice(ti.relocs[p], func(i, j int) bool { return ti.relocs[p][i] < ti.relocs[p][j] })
	}
	ti.apply(ti.text, ti.link)
	return nil
}

// apply relocates buf, the image's bytes at link address link.
func (ti *textImage) apply(buf []byte, link vmi.VA) {
	if ti.delta == 0 {
		return
	}
	hi := link + vmi.VA(len(buf))
	for pass, rs := range ti.relocs {
		width := vmi.VA(4)
		if pass == 2 {
			width = 8
		}
		i := sort.Search(len(rs), func(i int) bool { return rs[i] >= link })
		for ; i < len(rs) && rs[i]+width <= hi; i++ {
			off := rs[i] - link
			switch pass {
			case 0:
				binary.LittleEndian.PutUint32(buf[off:], binary.LittleEndian.Uint32(buf[off:])+uint32(ti.delta))
			case 1:
				binary.LittleEndian.PutUint32(buf[off:], binary.LittleEndian.Uint32(buf[off:])-uint32(ti.delta))
			case 2:
				binary.LittleEndian.PutUint64(buf[off:], binary.LittleEndian.Uint64(buf[off:])+uint64(ti.delta))
			}
		}
	}
}

// at returns the image's n bytes at runtime address va, relocated: what
// the kernel held there when it was loaded.
func (ti *textImage) at(va vmi.VA, n uint64) ([]byte, error) {
	link := vmi.VA(int64(va) - ti.delta)
	b, err := ti.readLink(link, n)
	if err != nil {
		return nil, err
	}
	ti.apply(b, link)
	return b, nil
}

// section returns the bytes and link address of a section, nil if absent.
func (ti *textImage) section(name string) ([]byte, vmi.VA) {
	s := ti.e.Section(name)
	if s == nil || s.Type == elf.SHT_NOBITS || s.Size > maxSiteBytes {
		return nil, 0
	}
	b, err := s.Data()
	if err != nil {
		return nil, 0
	}
	return b, vmi.VA(s.Addr)
}

// addRel adds the sites of a table of entries of size bytes whose field
// at off is an s32 offset from itself to the site (link addresses in the
// image), each n bytes long (or the length a u8 at lenOff gives, when
// lenOff >= 0).
func (ti *textImage) addRel(b []byte, at vmi.VA, size, off int, n uint64, lenOff int) {
	if size <= 0 {
		return
	}
	for i := 0; i+size <= len(b); i += size {
		site := at + vmi.VA(i+off) + vmi.VA(int64(int32(binary.LittleEndian.Uint32(b[i+off:]))))
		l := n
		if lenOff >= 0 {
			l = uint64(b[i+lenOff])
		}
		ti.addLink(site, l)
	}
}

func (ti *textImage) addLink(site vmi.VA, n uint64) {
	rt := vmi.VA(int64(site) + ti.delta)
	ti.sites = append(ti.sites, span{rt, rt + vmi.VA(n)})
}

// patchSites collects what the kernel patches in its text: from the
// image, .altinstructions (struct alt_instr: instr_offset, instrlen),
// .parainstructions (struct paravirt_patch_site: instr, len),
// .retpoline_sites, .return_sites and .smp_locks (s32 offsets), and
// __mcount_loc (the ftrace call sites, between __start_mcount_loc and
// __stop_mcount_loc); from memory, the jump-label table
// (__start___jump_table: struct jump_entry) and the static-call sites
// (__start_static_call_sites: struct static_call_site) with the static
// call trampolines, the sites ftrace rewrites in its own caller
// (ftrace_call, ftrace_regs_call, ftrace_graph_call) and the registered
// kprobes. Layouts from BTF.
func (c *checker) patchSites(ti *textImage) error {
	k := c.k
	field := func(typ, f string) int {
		o, err := k.Field(typ, f)
		if err != nil {
			return -1
		}
		return int(o)
	}
	size := func(typ string) int {
		n, err := k.Sizeof(typ)
		if err != nil {
			return 0
		}
		return int(n)
	}
	if b, at := ti.section(".altinstructions"); b != nil {
		if size("alt_instr") == 0 || field("alt_instr", "instr_offset") < 0 || field("alt_instr", "instrlen") < 0 {
			return fmt.Errorf("BTF has no struct alt_instr: %w", vmerr.ErrUnsupported)
		}
		ti.addRel(b, at, size("alt_instr"), field("alt_instr", "instr_offset"), 0, field("alt_instr", "instrlen"))
	}
	if b, _ := ti.section(".parainstructions"); b != nil {
		sz, in, ln := size("paravirt_patch_site"), field("paravirt_patch_site", "instr"), field("paravirt_patch_site", "len")
		if sz == 0 || in < 0 || ln < 0 {
			return fmt.Errorf("BTF has no struct paravirt_patch_site: %w", vmerr.ErrUnsupported)
		}
		for i := 0; i+sz <= len(b); i += sz {
			ti.addLink(vmi.VA(binary.LittleEndian.Uint64(b[i+in:])), uint64(b[i+ln]))
		}
	}
	for _, s := range []struct {
		name string
		n    uint64
	}{{".retpoline_sites", 6}, {".return_sites", 5}, {".smp_locks", 1}} {
		if b, at := ti.section(s.name); b != nil {
			ti.addRel(b, at, 4, 0, s.n, -1)
		}
	}
	// __mcount_loc: absolute link addresses, in init data the kernel freed
	if s, ok1 := k.Symbols.Addr("__start_mcount_loc"); ok1 {
		if e, ok2 := k.Symbols.Addr("__stop_mcount_loc"); ok2 && e > s {
			b, err := ti.readLink(vmi.VA(int64(s)-ti.delta), uint64(e-s))
			if err != nil {
				return fmt.Errorf("__mcount_loc: %w", err)
			}
			for i := 0; i+8 <= len(b); i += 8 {
				ti.addLink(vmi.VA(binary.LittleEndian.Uint64(b[i:])), 5)
			}
		}
	}
	// tables that stay in memory
	mem := func(start, stop, typ, f string, n uint64) error {
		s, ok1 := k.Symbols.Addr(start)
		e, ok2 := k.Symbols.Addr(stop)
		if !ok1 || !ok2 || e <= s {
			return nil
		}
		if uint64(e-s) > maxSiteBytes {
			return fmt.Errorf("%s: %d bytes: %w", start, uint64(e-s), vmi.ErrCorrupt)
		}
		sz, off := size(typ), field(typ, f)
		if sz == 0 || off < 0 {
			return fmt.Errorf("BTF has no struct %s: %w", typ, vmerr.ErrUnsupported)
		}
		b := make([]byte, e-s)
		if _, err := k.AS.ReadVirt(b, s); err != nil {
			return fmt.Errorf("%s at %#x: %w", start, uint64(s), err)
		}
		for i := 0; i+sz <= len(b); i += sz {
			site := s + vmi.VA(i+off) + vmi.VA(int64(int32(binary.LittleEndian.Uint32(b[i+off:]))))
			ti.sites = append(ti.sites, span{site, site + vmi.VA(n)})
		}
		return nil
	}
	if err := mem("__start___jump_table", "__stop___jump_table", "jump_entry", "code", 5); err != nil {
		return err
	}
	if err := mem("__start_static_call_sites", "__stop_static_call_sites", "static_call_site", "addr", 5); err != nil {
		return err
	}
	if s, ok1 := k.Symbols.Addr("__static_call_text_start"); ok1 {
		if e, ok2 := k.Symbols.Addr("__static_call_text_end"); ok2 && e > s && e-s < maxSiteBytes {
			ti.sites = append(ti.sites, span{s, e})
		}
	}
	for _, name := range []string{"ftrace_call", "ftrace_regs_call", "ftrace_graph_call"} {
		if a, ok := k.Symbols.Addr(name); ok {
			ti.sites = append(ti.sites, span{a, a + 5})
		}
	}
	for _, a := range c.kprobeAddrs {
		ti.sites = append(ti.sites, span{a, a + 5})
	}
	sort.Slice(ti.sites, func(i, j int) bool { return ti.sites[i].lo < ti.sites[j].lo })
	return nil
}

// covered reports whether va is inside a patch site (sites sorted by lo;
// a prefix maximum of hi makes the search exact).
type siteSet struct {
	s     []span
	maxHi []vmi.VA
}

func newSiteSet(s []span) *siteSet {
	ss := &siteSet{s: s, maxHi: make([]vmi.VA, len(s))}
	var m vmi.VA
	for i, x := range s {
		m = max(m, x.hi)
		ss.maxHi[i] = m
	}
	return ss
}

func (ss *siteSet) covers(va vmi.VA) bool {
	i := sort.Search(len(ss.s), func(i int) bool { return ss.s[i].lo > va }) - 1
	for ; i >= 0 && ss.maxHi[i] > va; i-- {
		if ss.s[i].hi > va {
			return true
		}
	}
	return false
}

// text compares core text in memory with the build's image, relocated;
// every run of differing bytes that no patch site covers is a finding.
func (c *checker) text(ctx context.Context) (int, []Finding, error) {
	ti, err := c.image()
	if err != nil {
		return 0, nil, err
	}
	if err := c.patchSites(ti); err != nil {
		return 0, nil, err
	}
	sites := newSiteSet(ti.sites)
	var out []Finding
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	n := len(ti.text)
	runStart, runLen := -1, 0
	flush := func() {
		if runStart < 0 {
			return
		}
		va := c.m.Core.Start + vmi.VA(runStart)
		show := min(runLen, 16)
		out = append(out, c.m.newFinding(KindTextModified, va, "",
			fmt.Sprintf("%d bytes differ from the kernel image (memory % x, image % x) where no patch site (alternatives, paravirt, retpoline and return thunk sites, lock prefixes, jump labels, static calls, ftrace call sites, kprobes) is",
				runLen, c.memBytes(va, show), ti.text[runStart:runStart+show])))
		runStart, runLen = -1, 0
	}
	for off := 0; off < n; off += chunk {
		if err := ctx.Err(); err != nil {
			return 0, nil, err
		}
		b := buf[:min(chunk, n-off)]
		if _, err := c.k.AS.ReadVirt(b, c.m.Core.Start+vmi.VA(off)); err != nil {
			c.problem("core text", c.m.Core.Start+vmi.VA(off), err)
			flush()
			continue
		}
		img := ti.text[off : off+len(b)]
		for i := range b {
			if b[i] == img[i] || sites.covers(c.m.Core.Start+vmi.VA(off+i)) {
				flush()
				continue
			}
			if runStart < 0 {
				runStart = off + i
			}
			runLen = off + i - runStart + 1
		}
	}
	flush()
	return n, out, nil
}

// image is the kernel image given, parsed once.
func (c *checker) image() (*textImage, error) {
	if c.o.vmlinux == nil {
		return nil, fmt.Errorf("no kernel image given (--vmlinuz): %w", vmerr.ErrNotPresent)
	}
	if c.img == nil && c.imgErr == nil {
		c.img, c.imgErr = newTextImage(c.m, c.o.vmlinux)
	}
	return c.img, c.imgErr
}

func (c *checker) memBytes(va vmi.VA, n int) []byte {
	b := make([]byte, n)
	c.k.AS.ReadVirt(b, va)
	return b
}
