package cfi

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// Owners a Symbolize answer names besides "module NAME".
const (
	OwnerKernel = "kernel"
	OwnerNone   = "none"
)

// Region kinds.
const (
	RegionCore     = "core text"
	RegionModule   = "module text"
	RegionFtrace   = "ftrace trampoline"
	RegionBPF      = "bpf jit"
	RegionKprobe   = "kprobe insn slot"
	RegionRealmode = "realmode trampoline"
)

// Caps on the kernel's bookkeeping lists the map walks.
const (
	maxListEntries = 1 << 14
	maxRegionSize  = 1 << 30
)

// Region is a range of kernel virtual addresses that holds code the kernel
// put there: [Start, End).
type Region struct {
	Start vmi.VA `json:"start"`
	End   vmi.VA `json:"end"`
	Kind  string `json:"kind"`
	Owner string `json:"owner"` // "kernel" or "module NAME"
	Name  string `json:"name,omitempty"`
}

// Contains reports whether va is in the region.
func (r Region) Contains(va vmi.VA) bool { return va >= r.Start && va < r.End }

// ModuleText is a listed module's code.
type ModuleText struct {
	Name   string
	Struct vmi.VA // struct module
	Text   Region // core_layout: base .. base+text_size
	Init   Region // init_layout while the module initialises (Start 0 otherwise)
	Base   vmi.VA // core_layout.base
	Size   uint64 // core_layout.size
}

// symbol is a kernel or module symbol, sorted by address in KernelMap.
type symbol struct {
	addr vmi.VA
	name string
}

// KernelMap is where a kernel's code lives: core text, listed modules'
// text and the trampolines the kernel made, and the symbols that name it.
type KernelMap struct {
	Kernel  *linux.Kernel
	Core    Region
	Modules []ModuleText
	// Regions is every code region, sorted by Start.
	Regions []Region
	// Problems are the parts of the kernel's bookkeeping that could not be
	// read; the map is built without them.
	Problems []vmerr.Problem

	syms []symbol
	// maxEnd[i] is the largest End of Regions[:i+1]: regions may nest (BPF
	// JIT images inside their pack)
	maxEnd []vmi.VA
}

// NewKernelMap builds the map of k's code: core text from kallsyms
// (_text.._etext: the head text before _stext is code too; init text is
// left out, because the kernel unmaps it after boot), the modules list with
// each module's layout from BTF, and the trampolines found in the kernel's
// own lists: ftrace_ops_list and ftrace_ops_trampoline_list (each ops's
// trampoline), kprobe_insn_slots and kprobe_optinsn_slots (their pages),
// bpf_kallsyms (JIT images) and real_mode_header (the real-mode trampoline
// the kernel maps executable in the direct map). A missing list is
// skipped; an unreadable one is a Problem.
func NewKernelMap(ctx context.Context, k *linux.Kernel) (*KernelMap, error) {
	m := &KernelMap{Kernel: k}
	start, ok1 := k.Symbols.Addr("_text")
	end, ok2 := k.Symbols.Addr("_etext")
	if !ok1 || !ok2 || end <= start || end-start > maxRegionSize {
		return nil, fmt.Errorf("cfi: kernel text [_text %#x, _etext %#x): %w", uint64(start), uint64(end), linux.ErrLayout)
	}
	m.Core = Region{Start: start, End: end, Kind: RegionCore, Owner: OwnerKernel}
	m.Regions = append(m.Regions, m.Core)
	for _, s := range k.Symbols.List {
		if s.Type == 'a' || s.Type == 'A' {
			continue
		}
		m.syms = append(m.syms, symbol{s.Addr, s.Name})
	}
	if err := m.addModules(ctx); err != nil {
		return nil, err
	}
	m.addFtrace()
	m.addKprobeSlots()
	m.addBPF()
	m.addRealmode()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sort.SliceStable(m.Regions, func(i, j int) bool { return m.Regions[i].Start < m.Regions[j].Start })
	m.maxEnd = make([]vmi.VA, len(m.Regions))
	var e vmi.VA
	for i, r := range m.Regions {
		e = max(e, r.End)
		m.maxEnd[i] = e
	}
	sort.SliceStable(m.syms, func(i, j int) bool { return m.syms[i].addr < m.syms[j].addr })
	return m, nil
}

// Region returns the code region holding va.
func (m *KernelMap) Region(va vmi.VA) (Region, bool) {
	i := sort.Search(len(m.Regions), func(i int) bool { return m.Regions[i].Start > va })
	// the innermost region holding va is the last one starting at or
	// before it that contains it
	for j := i - 1; j >= 0 && m.maxEnd[j] > va; j-- {
		if m.Regions[j].Contains(va) {
			return m.Regions[j], true
		}
	}
	return Region{}, false
}

// InCore reports whether va is core kernel text.
func (m *KernelMap) InCore(va vmi.VA) bool { return m.Core.Contains(va) }

// Known reports whether va is in any code region.
func (m *KernelMap) Known(va vmi.VA) bool {
	_, ok := m.Region(va)
	return ok
}

// Symbolize names va: the nearest symbol at or below it within the same
// code region (for an address outside every region, the nearest symbol
// only inside the kernel image: its data), its offset from that symbol, and the owner
// of the region ("kernel", "module NAME", or "none").
func (m *KernelMap) Symbolize(va vmi.VA) (sym string, off uint64, owner string) {
	r, ok := m.Region(va)
	owner = OwnerNone
	if ok {
		owner = r.Owner
	}
	i := sort.Search(len(m.syms), func(i int) bool { return m.syms[i].addr > va }) - 1
	if i < 0 {
		return "", 0, owner
	}
	s := m.syms[i]
	if ok && s.addr < r.Start {
		if r.Name != "" {
			return r.Name, uint64(va - r.Start), owner
		}
		return "", 0, owner
	}
	if !ok && (va < m.Kernel.Text || va >= m.Kernel.ImageEnd) {
		return "", 0, owner
	}
	return s.name, uint64(va - s.addr), owner
}

// Addr is the address of a kernel symbol.
func (m *KernelMap) Addr(name string) (vmi.VA, bool) { return m.Kernel.Symbols.Addr(name) }

// addModules reads each listed module's layouts and symbols.
func (m *KernelMap) addModules(ctx context.Context) error {
	k := m.Kernel
	mods, probs, err := k.Modules(ctx)
	if err != nil {
		return err
	}
	m.Problems = append(m.Problems, probs...)
	for _, md := range mods {
		r := newReader(k)
		base := vmi.VA(r.uint("module", vmi.VA(md.Addr), "core_layout.base"))
		size := r.uint("module", vmi.VA(md.Addr), "core_layout.size")
		text := r.uint("module", vmi.VA(md.Addr), "core_layout.text_size")
		ibase := vmi.VA(r.uint("module", vmi.VA(md.Addr), "init_layout.base"))
		itext := r.uint("module", vmi.VA(md.Addr), "init_layout.text_size")
		if r.err != nil {
			m.problem("module "+md.Name, vmi.VA(md.Addr), r.err)
			continue
		}
		owner := "module " + md.Name
		mt := ModuleText{Name: md.Name, Struct: vmi.VA(md.Addr), Base: base, Size: size}
		if ok := m.checkRange(base, text, "text of module "+md.Name); ok && text > 0 {
			mt.Text = Region{Start: base, End: base + vmi.VA(text), Kind: RegionModule, Owner: owner, Name: md.Name}
			m.Regions = append(m.Regions, mt.Text)
		}
		if ibase != 0 && itext > 0 && m.checkRange(ibase, itext, "init text of module "+md.Name) {
			mt.Init = Region{Start: ibase, End: ibase + vmi.VA(itext), Kind: RegionModule, Owner: owner, Name: md.Name + " (init)"}
			m.Regions = append(m.Regions, mt.Init)
		}
		m.Modules = append(m.Modules, mt)
	}
	syms, probs, err := k.ModuleSymbols(ctx)
	if err != nil {
		m.problem("module symbols", 0, err)
		return nil
	}
	m.Problems = append(m.Problems, probs...)
	for _, s := range syms {
		m.syms = append(m.syms, symbol{vmi.VA(s.Addr), s.Name})
	}
	return nil
}

// checkRange accepts [va, va+n) when it is a canonical kernel range of
// plausible size; otherwise it records a problem.
func (m *KernelMap) checkRange(va vmi.VA, n uint64, what string) bool {
	if kernelPtr(va) && n <= maxRegionSize && kernelPtr(va+vmi.VA(n)) && va+vmi.VA(n) >= va {
		return true
	}
	m.problem(what, va, fmt.Errorf("range of %#x bytes is not in the kernel half: %w", n, vmi.ErrCorrupt))
	return false
}

func (m *KernelMap) problem(where string, va vmi.VA, err error) {
	m.Problems = append(m.Problems, vmerr.Problem{Where: where, Offset: -1, Addr: uint64(va), Err: err})
}

// kernelPtr reports whether va is a canonical address of the kernel half
// (4- or 5-level paging).
func kernelPtr(va vmi.VA) bool { return uint64(va) >= 0xff00000000000000 }

// addFtrace adds the trampoline of each ftrace_ops on ftrace_ops_list
// (singly linked by next, ending at ftrace_list_end) and on
// ftrace_ops_trampoline_list (a list_head through ops->list).
func (m *KernelMap) addFtrace() {
	k := m.Kernel
	ops, err := FtraceOps(k)
	if err != nil {
		if !errors.Is(err, vmerr.ErrNotPresent) {
			m.problem("ftrace_ops_list", 0, err)
		}
	}
	seen := map[vmi.VA]bool{}
	add := func(o FtraceOpsEntry) {
		if o.Trampoline == 0 || o.TrampolineSize == 0 || seen[o.Addr] {
			return
		}
		seen[o.Addr] = true
		if m.checkRange(o.Trampoline, o.TrampolineSize, fmt.Sprintf("trampoline of ftrace_ops %#x", uint64(o.Addr))) {
			m.Regions = append(m.Regions, Region{Start: o.Trampoline, End: o.Trampoline + vmi.VA(o.TrampolineSize),
				Kind: RegionFtrace, Owner: OwnerKernel, Name: "ftrace_trampoline"})
		}
	}
	for _, o := range ops {
		add(o)
	}
	head, ok := k.Symbols.Addr("ftrace_ops_trampoline_list")
	if !ok {
		return
	}
	listOff, err := k.Field("ftrace_ops", "list")
	if err != nil {
		return
	}
	if p := walkList(k, head, maxListEntries, func(e vmi.VA) bool {
		o, err := readFtraceOps(k, e-vmi.VA(listOff))
		if err != nil {
			m.problem("ftrace_ops_trampoline_list entry", e, err)
			return true
		}
		add(o)
		return true
	}); p != nil {
		m.Problems = append(m.Problems, *p)
	}
}

// addKprobeSlots adds the pages of kprobe_insn_slots and
// kprobe_optinsn_slots (struct kprobe_insn_cache: pages, a list of struct
// kprobe_insn_page whose insns is one page of slots).
func (m *KernelMap) addKprobeSlots() {
	k := m.Kernel
	for _, cache := range []string{"kprobe_insn_slots", "kprobe_optinsn_slots"} {
		a, ok := k.Symbols.Addr(cache)
		if !ok {
			continue
		}
		pagesOff, err1 := k.Field("kprobe_insn_cache", "pages")
		listOff, err2 := k.Field("kprobe_insn_page", "list")
		if err1 != nil || err2 != nil {
			m.problem(cache, a, fmt.Errorf("no kprobe_insn_cache/kprobe_insn_page in BTF: %w", linux.ErrLayout))
			continue
		}
		if p := walkList(k, a+vmi.VA(pagesOff), maxListEntries, func(e vmi.VA) bool {
			r := newReader(k)
			insns := vmi.VA(r.uint("kprobe_insn_page", e-vmi.VA(listOff), "insns"))
			if r.err != nil {
				m.problem(cache+" page", e, r.err)
				return true
			}
			if m.checkRange(insns, vmi.PageBytes, cache+" page") {
				m.Regions = append(m.Regions, Region{Start: insns, End: insns + vmi.PageBytes, Kind: RegionKprobe, Owner: OwnerKernel, Name: cache})
			}
			return true
		}); p != nil {
			m.Problems = append(m.Problems, *p)
		}
	}
}

// addBPF adds each JIT image on bpf_kallsyms (struct bpf_ksym: start,
// end, name, on a list through lnode) and each bpf_prog_pack on pack_list
// (its ptr and BPF_PROG_PACK_SIZE bytes), where the build has them.
func (m *KernelMap) addBPF() {
	k := m.Kernel
	if head, ok := k.Symbols.Addr("bpf_kallsyms"); ok {
		if lnode, err := k.Field("bpf_ksym", "lnode"); err == nil {
			if p := walkList(k, head, maxListEntries, func(e vmi.VA) bool {
				a := e - vmi.VA(lnode)
				r := newReader(k)
				start := vmi.VA(r.uint("bpf_ksym", a, "start"))
				end := vmi.VA(r.uint("bpf_ksym", a, "end"))
				name := r.str("bpf_ksym", a, "name", 128)
				if r.err != nil {
					m.problem("bpf_ksym", a, r.err)
					return true
				}
				if end > start && m.checkRange(start, uint64(end-start), "bpf_ksym "+name) {
					m.Regions = append(m.Regions, Region{Start: start, End: end, Kind: RegionBPF, Owner: OwnerKernel, Name: name})
					m.syms = append(m.syms, symbol{start, name})
				}
				return true
			}); p != nil {
				m.Problems = append(m.Problems, *p)
			}
		}
	}
	// A pack is PMD_SIZE per possible NUMA node (BPF_PROG_PACK_SIZE; the
	// kernel maps it executable as a whole): 2 MiB on x86-64 with 4- or
	// 5-level paging, times nr_node_ids.
	head, ok1 := k.Symbols.Addr("pack_list")
	nodesVar, ok2 := k.Symbols.Addr("nr_node_ids")
	listOff, err := k.Field("bpf_prog_pack", "list")
	if !ok1 || !ok2 || err != nil {
		return
	}
	nodes, err := k.ReadU64(nodesVar)
	nodes &= 0xffffffff // unsigned int
	if err != nil || nodes == 0 || nodes > 1024 {
		m.problem("nr_node_ids", nodesVar, fmt.Errorf("%d nodes: %v: %w", nodes, err, vmi.ErrCorrupt))
		return
	}
	size := nodes << 21
	if p := walkList(k, head, maxListEntries, func(e vmi.VA) bool {
		r := newReader(k)
		ptr := vmi.VA(r.uint("bpf_prog_pack", e-vmi.VA(listOff), "ptr"))
		if r.err != nil {
			m.problem("bpf_prog_pack", e, r.err)
			return true
		}
		if m.checkRange(ptr, size, "bpf_prog_pack") {
			m.Regions = append(m.Regions, Region{Start: ptr, End: ptr + vmi.VA(size), Kind: RegionBPF, Owner: OwnerKernel, Name: "bpf_prog_pack"})
		}
		return true
	}); p != nil {
		m.Problems = append(m.Problems, *p)
	}
}

// addRealmode adds the real-mode trampoline's text: real_mode_header
// points (direct map) at struct real_mode_header, whose text_start and
// ro_end are physical addresses; setup_real_mode maps that range
// executable in the direct map (set_memory_x).
func (m *KernelMap) addRealmode() {
	k := m.Kernel
	a, ok := k.Symbols.Addr("real_mode_header")
	if !ok || k.PageOffset == 0 {
		return
	}
	hdr, err := k.ReadU64(a)
	if err != nil {
		m.problem("real_mode_header", a, err)
		return
	}
	r := newReader(k)
	text := r.uint("real_mode_header", vmi.VA(hdr), "text_start")
	roEnd := r.uint("real_mode_header", vmi.VA(hdr), "ro_end")
	if r.err != nil {
		m.problem("real_mode_header", vmi.VA(hdr), r.err)
		return
	}
	if roEnd <= text {
		return
	}
	start := (k.PageOffset + vmi.VA(text)) &^ (vmi.PageBytes - 1)
	if m.checkRange(start, roEnd-text, "real-mode trampoline") {
		m.Regions = append(m.Regions, Region{Start: start, End: k.PageOffset + vmi.VA(roEnd), Kind: RegionRealmode, Owner: OwnerKernel, Name: "real-mode trampoline"})
	}
}

// reader reads members of kernel structures (layout from BTF); the first
// error sticks.
type reader struct {
	k   *linux.Kernel
	err error
}

func newReader(k *linux.Kernel) *reader { return &reader{k: k} }

// uint reads integer or pointer member path of struct typ at a, of the
// size BTF gives it (linux.Kernel.ReadUint).
func (r *reader) uint(typ string, a vmi.VA, path string) uint64 {
	if r.err != nil {
		return 0
	}
	v, err := r.k.ReadUint(typ, a, path)
	r.err = err
	return v
}

// str reads a NUL-terminated string of at most max bytes that member path
// points to (a char pointer) or holds (a char array, when isArray).
func (r *reader) str(typ string, a vmi.VA, path string, max int) string {
	if r.err != nil {
		return ""
	}
	off, err := r.k.Field(typ, path)
	if err != nil {
		r.err = err
		return ""
	}
	size, _ := r.k.FieldSize(typ, path)
	at, ok := a.Add(off)
	if !ok {
		r.err = fmt.Errorf("cfi: %s at %#x: member %s wraps: %w", typ, uint64(a), path, vmi.ErrCorrupt)
		return ""
	}
	if size == 8 { // a pointer
		p, err := r.k.ReadU64(at)
		if err != nil {
			r.err = err
			return ""
		}
		at = vmi.VA(p)
	} else {
		max = min(max, int(size))
	}
	s, err := r.k.ReadString(at, max)
	if err != nil && s == "" {
		r.err = err
	}
	return strings.ToValidUTF8(s, "?")
}

// walkList is linux.ListWalk that also stops, with a problem, at a next
// pointer that is not a canonical kernel-half address.
func walkList(k *linux.Kernel, head vmi.VA, max int, fn func(vmi.VA) bool) *vmerr.Problem {
	var bad *vmerr.Problem
	prev := head
	p := k.ListWalk("list", head, max, func(e vmi.VA) bool {
		if !kernelPtr(e) {
			bad = &vmerr.Problem{Where: "list", Offset: -1, Addr: uint64(prev), Err: fmt.Errorf("next %#x is not a kernel pointer: %w", uint64(e), vmi.ErrCorrupt)}
			return false
		}
		prev = e
		return fn(e)
	})
	if bad != nil {
		return bad
	}
	return p
}

// FtraceOpsEntry is an ftrace_ops on ftrace_ops_list.
type FtraceOpsEntry struct {
	Addr           vmi.VA
	Func           vmi.VA
	Flags          uint64
	Trampoline     vmi.VA
	TrampolineSize uint64
}

// readFtraceOps reads one struct ftrace_ops.
func readFtraceOps(k *linux.Kernel, a vmi.VA) (FtraceOpsEntry, error) {
	r := newReader(k)
	o := FtraceOpsEntry{Addr: a}
	o.Func = vmi.VA(r.uint("ftrace_ops", a, "func"))
	o.Flags = r.uint("ftrace_ops", a, "flags")
	if r.err != nil {
		return o, r.err
	}
	// trampoline exists with CONFIG_DYNAMIC_FTRACE only
	if _, err := k.Field("ftrace_ops", "trampoline"); err == nil {
		o.Trampoline = vmi.VA(r.uint("ftrace_ops", a, "trampoline"))
		o.TrampolineSize = r.uint("ftrace_ops", a, "trampoline_size")
	}
	return o, r.err
}

// FtraceOps walks ftrace_ops_list: a singly linked list through
// ftrace_ops.next that ends at ftrace_list_end. It fails wrapping
// vmerr.ErrNotPresent when the kernel has no ftrace.
func FtraceOps(k *linux.Kernel) ([]FtraceOpsEntry, error) {
	headVar, ok1 := k.Symbols.Addr("ftrace_ops_list")
	end, ok2 := k.Symbols.Addr("ftrace_list_end")
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("cfi: no ftrace_ops_list: %w", vmerr.ErrNotPresent)
	}
	nextOff, err := k.Field("ftrace_ops", "next")
	if err != nil {
		return nil, err
	}
	cur, err := k.ReadU64(headVar)
	if err != nil {
		return nil, fmt.Errorf("cfi: ftrace_ops_list at %#x: %w", uint64(headVar), err)
	}
	var out []FtraceOpsEntry
	seen := map[vmi.VA]bool{}
	for a := vmi.VA(cur); a != end; {
		if !kernelPtr(a) || seen[a] || len(out) >= maxListEntries {
			return out, fmt.Errorf("cfi: ftrace_ops_list: entry %#x after %d (not a kernel pointer, a cycle or too many): %w", uint64(a), len(out), vmi.ErrCorrupt)
		}
		seen[a] = true
		o, err := readFtraceOps(k, a)
		if err != nil {
			return out, err
		}
		out = append(out, o)
		next, err := k.ReadU64(a + vmi.VA(nextOff))
		if err != nil {
			return out, fmt.Errorf("cfi: ftrace_ops %#x next: %w", uint64(a), err)
		}
		a = vmi.VA(next)
	}
	return out, nil
}
