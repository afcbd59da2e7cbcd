// Package linux reconstructs a Linux x86-64 guest kernel from its memory
// alone, with no profile: it finds the kernel page tables (the saved CR3,
// or a scan for a PML4 near the kernel image), the kernel image and its
// KASLR slide, phys_base, the `Linux version` banner, the kallsyms table
// (recovered from its compressed form in memory), the direct-map base and
// the kernel's BTF; then it walks tasks, modules, open files and mounts.
//
// Invariants: every structure offset comes from the guest's BTF (or BTF
// the caller gives), every address from kallsyms (recovered, or a
// /proc/kallsyms or System.map the caller gives); no constant of one kernel
// build is used. Guest memory is hostile: every list walk is capped and
// cycle-checked, every string and array read is bounded, and what a walk
// could not follow is returned as a Problem instead of stopping the walk.
// Discovery itself runs on a Budget of bytes read and candidates tried
// (page-table roots, kallsyms tables), and stops with a *StopError naming
// its phase when the budget is spent or its context done.
// Errors wrap ErrNotLinux, ErrLayout or the vmi sentinels.
package linux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/vmscope/vmscope/vmerr"
	"io"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf/btf"

	"github.com/vmscope/vmscope/vmi"
)

var (
	// ErrNotLinux is memory in which no x86-64 Linux kernel was found.
	ErrNotLinux = errors.New("linux: no Linux kernel found")
	// ErrLayout is a kernel structure found in a layout this package does
	// not read (a kallsyms table of another kernel generation, BTF without
	// a type it needs).
	ErrLayout = vmerr.New("linux: unsupported layout", vmerr.ErrUnsupported)
)

// x86-64 virtual memory layout constants of the architecture (not of a
// build): the kernel image lives in the top 2 GiB, [__START_KERNEL_map,
// __START_KERNEL_map+1 GiB), which is PML4 slot 511, PDPT slot 510.
const (
	startKernelMap = 0xffffffff80000000
	// defaultStartKernel is __START_KERNEL for the default
	// CONFIG_PHYSICAL_START (16 MiB); the KASLR slide is measured from it.
	defaultStartKernel = 0xffffffff81000000
	kernelImageMax     = 1 << 30
	maxScan            = 256 << 20 // kernel image bytes a scan may read
)

// Kernel is a Linux kernel found in guest-physical memory.
type Kernel struct {
	// fields caches BTF member lookups of this kernel (Field). It was a
	// process-wide map keyed by the spec's address; after a spec was freed
	// another could reuse the address and get its offsets.
	fields sync.Map

	Mem      vmi.Memory       // counting wrapper around the memory given
	AS       vmi.AddressSpace // kernel address space (init_top_pgt)
	CR3      vmi.PA           // page tables discovery started from
	CR3From  string           // "cpu N" or "scan"
	Version  string           // the banner, without its newline
	Text     vmi.VA           // _text
	TextPA   vmi.PA           // where _text is in guest-physical memory
	ImageEnd vmi.VA           // end of the mapped kernel image
	Slide    int64            // _text - 0xffffffff81000000
	PhysBase uint64           // phys_base (kernel VA -> PA: va - __START_KERNEL_map + phys_base)
	// PageOffset is page_offset_base, the direct map's base.
	PageOffset vmi.VA
	Symbols    *Symbols
	SymbolsSrc string // "memory (kallsyms)", "kallsyms file", "System.map"
	Types      *btf.Spec
	TypesSrc   string
	// Spent is what discovery spent of its Budget.
	Spent Budget

	counter *countingMem
}

// BytesRead is how many bytes of guest-physical memory discovery and the
// walks since have read.
func (k *Kernel) BytesRead() int64 { return k.counter.n.Load() }

// Option is an optional input to Discover.
type Option func(*options)

type options struct {
	cpus      []vmi.CPU
	kallsyms  io.Reader
	systemMap io.Reader
	btf       io.ReaderAt
	noBTF     bool
	budget    Budget
}

// WithCPUs gives the saved vCPU state (snapshot.CPUs()); their CR3 are tried
// before the PML4 scan.
func WithCPUs(c []vmi.CPU) Option { return func(o *options) { o.cpus = c } }

// WithKallsyms gives a /proc/kallsyms text of the same boot: it replaces
// the recovery of kallsyms from memory.
func WithKallsyms(r io.Reader) Option { return func(o *options) { o.kallsyms = r } }

// WithSystemMap gives a System.map of the kernel build: its addresses are
// slid by the KASLR slide found in memory.
func WithSystemMap(r io.Reader) Option { return func(o *options) { o.systemMap = r } }

// WithBTF gives raw BTF (or an ELF with a .BTF section) instead of the
// kernel's own from memory.
func WithBTF(r io.ReaderAt) Option { return func(o *options) { o.btf = r } }

// WithoutBTF skips loading types (discovery and symbols only).
func WithoutBTF() Option { return func(o *options) { o.noBTF = true } }

// Discover finds the Linux kernel in mem. Its work is bounded by a Budget
// (WithBudget; DefaultBudget otherwise); a budget spent or ctx done stops
// it with a *StopError naming the phase.
func Discover(ctx context.Context, mem vmi.Memory, opts ...Option) (*Kernel, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	cm := &countingMem{Memory: mem}
	k := &Kernel{Mem: cm, counter: cm}
	m := newMeter(cm, o.budget.orDefault())
	defer m.done()
	if err := k.discover(ctx, m, &o); err != nil {
		return nil, err
	}
	k.Spent = m.spent()
	return k, nil
}

// discover runs the phases of Discover.
func (k *Kernel) discover(ctx context.Context, m *meter, o *options) error {
	if err := k.findPageTables(ctx, m, o.cpus); err != nil {
		return err
	}
	// banner and kallsyms from one pass over the image
	if err := k.scanImage(ctx, m, o.kallsyms == nil && o.systemMap == nil); err != nil {
		return err
	}
	k.Slide = int64(uint64(k.Text) - defaultStartKernel)
	k.PhysBase = uint64(k.TextPA) - (uint64(k.Text) - startKernelMap)
	if err := k.symbolFiles(o); err != nil {
		return err
	}
	m.enter(PhaseKallsyms, func() string { return fmt.Sprintf("checking the %d symbols of %s", len(k.Symbols.List), k.SymbolsSrc) })
	if err := k.checkSymbols(); err != nil {
		return err
	}
	if err := k.kernelTables(); err != nil {
		return err
	}
	if err := m.check(ctx); err != nil {
		return err
	}
	if o.noBTF {
		return nil
	}
	if o.btf != nil {
		spec, err := btf.LoadSpecFromReader(o.btf)
		if err != nil {
			return fmt.Errorf("linux: BTF file: %w", err)
		}
		k.Types, k.TypesSrc = spec, "BTF file"
		return nil
	}
	return k.loadBTF(ctx, m)
}

// findPageTables finds page tables that map a kernel image: a vCPU's
// CR3, else a PML4 found near a banner in guest-physical memory.
func (k *Kernel) findPageTables(ctx context.Context, m *meter, cpus []vmi.CPU) error {
	tried := 0
	m.enter(PhasePageTables, func() string { return fmt.Sprintf("%d of %d vCPUs' CR3 tried", tried, len(cpus)) })
	for _, c := range cpus {
		if !c.HasControl || !c.LongMode() {
			continue
		}
		if err := m.candidate(ctx); err != nil {
			return err
		}
		tried++
		if err := k.findImage(c.PageTableRoot(), c.LA57()); err == nil {
			k.CR3, k.CR3From = c.PageTableRoot(), fmt.Sprintf("cpu %d", c.ID)
			return nil
		}
	}
	root, err := k.scanPML4(ctx, m)
	if err != nil {
		return err
	}
	k.CR3, k.CR3From = root, "scan"
	return nil
}

// symbolFiles takes the symbols from a kallsyms or System.map file the
// caller gave.
func (k *Kernel) symbolFiles(o *options) error {
	switch {
	case o.kallsyms != nil:
		s, err := ParseKallsyms(o.kallsyms)
		if err != nil {
			return err
		}
		k.Symbols, k.SymbolsSrc = s, "kallsyms file"
	case o.systemMap != nil:
		s, err := ParseKallsyms(o.systemMap)
		if err != nil {
			return err
		}
		if t, ok := s.Addr("_text"); ok {
			s.slide(int64(uint64(k.Text) - uint64(t)))
		}
		k.Symbols, k.SymbolsSrc = s, "System.map"
	}
	return nil
}

// kernelTables switches to the kernel's own page tables (init_top_pgt)
// when they map _text where the tables found did, and reads the direct
// map's base; it checks phys_base against the page tables.
func (k *Kernel) kernelTables() error {
	if a, ok := k.Symbols.Addr("init_top_pgt"); ok {
		if pa, ok := k.kernelPA(a); ok {
			as := vmi.AddressSpace{Mem: k.Mem, Root: pa, LA57: k.AS.LA57}
			if p, _, err := as.Translate(k.Text); err == nil && p == k.TextPA {
				k.AS = as
			}
		}
	}
	if a, ok := k.Symbols.Addr("page_offset_base"); ok {
		v, err := k.ReadU64(a)
		if err != nil {
			return fmt.Errorf("linux: page_offset_base at %#x: %w", uint64(a), err)
		}
		k.PageOffset = vmi.VA(v)
	}
	if a, ok := k.Symbols.Addr("phys_base"); ok {
		if v, err := k.ReadU64(a); err == nil && v != k.PhysBase {
			return fmt.Errorf("linux: phys_base in memory %#x, from the page tables %#x: %w", v, k.PhysBase, ErrNotLinux)
		}
	}
	return nil
}

// kernelPA is __pa_symbol: the physical address of a kernel-image address.
func (k *Kernel) kernelPA(va vmi.VA) (vmi.PA, bool) {
	if uint64(va) < startKernelMap || uint64(va)-startKernelMap >= kernelImageMax {
		return 0, false
	}
	return vmi.PA(uint64(va) - startKernelMap + k.PhysBase), true
}

// findImage finds the kernel image mapping under root: the first mapped
// 2 MiB slot of [__START_KERNEL_map, +1 GiB) is _text (the kernel clears
// the slots below _text and above _end), the run of mapped slots after it
// the image. Its 512 walks read their tables through a page cache.
func (k *Kernel) findImage(root vmi.PA, la57 bool) error {
	walk := vmi.AddressSpace{Mem: &pageCache{r: k.Mem}, Root: root, LA57: la57}
	var start vmi.VA
	var startPA vmi.PA
	end := vmi.VA(0)
	// Slots may be unmapped inside the image too (the freed __init
	// region), so the image is first mapped slot .. last mapped slot.
	for i := uint64(0); i < kernelImageMax>>21; i++ {
		va := vmi.VA(startKernelMap + i<<21)
		pa, _, err := walk.Translate(va)
		if err != nil {
			continue
		}
		if start == 0 {
			start, startPA = va, pa
		}
		end = va + 1<<21
	}
	if start == 0 {
		return fmt.Errorf("linux: no kernel image mapped under CR3 %#x: %w", uint64(root), ErrNotLinux)
	}
	k.AS = vmi.AddressSpace{Mem: k.Mem, Root: root, LA57: la57}
	k.Text, k.TextPA, k.ImageEnd = start, startPA, end
	return nil
}

var bannerRE = regexp.MustCompile(`Linux version [0-9][ -~]{8,1000}`)

// tokenSig is what the kallsyms token table holds at indexes '0'..'9':
// single digits stay tokens of their own.
var tokenSig = []byte("0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00")

// scanImage reads the kernel image from _text in chunks until it has the
// banner and (when wantSyms) a kallsyms table that validates. Each token
// table found is a candidate of the budget.
func (k *Kernel) scanImage(ctx context.Context, m *meter, wantSyms bool) error {
	const chunk = 1 << 20
	const overlap = 512
	size := uint64(k.ImageEnd - k.Text)
	if size > maxScan {
		size = maxScan
	}
	buf := make([]byte, chunk+overlap)
	// the scan and the recovery walk the image's tables through a cache
	as := vmi.AddressSpace{Mem: &pageCache{r: k.Mem}, Root: k.AS.Root, LA57: k.AS.LA57}
	kr := &kallsymsRecovery{r: as}
	var symErr error
	var off uint64
	tables := 0
	progress := func() string {
		return fmt.Sprintf("%d of %d MiB of the kernel image at %#x scanned, %d token tables tried", off>>20, size>>20, uint64(k.Text), tables)
	}
	for ; off < size; off += chunk {
		phase := PhaseBanner
		if k.Version != "" {
			phase = PhaseKallsyms
		}
		m.enter(phase, progress)
		if err := m.check(ctx); err != nil {
			return err
		}
		n, _ := as.ReadVirt(buf[:min(uint64(len(buf)), size-off)], k.Text+vmi.VA(off))
		b := buf[:n]
		if k.Version == "" {
			if loc := bannerRE.FindIndex(b); loc != nil {
				k.Version = string(b[loc[0]:loc[1]])
			}
		}
		if wantSyms && k.Symbols == nil {
			m.enter(PhaseKallsyms, progress)
			for i := 0; ; {
				j := bytes.Index(b[i:], tokenSig)
				if j < 0 {
					break
				}
				if err := m.candidate(ctx); err != nil {
					return err
				}
				tables++
				at := k.Text + vmi.VA(off) + vmi.VA(i+j)
				s, err := kr.recover(at, k.Text)
				if err == nil {
					k.Symbols, k.SymbolsSrc = s, "memory (kallsyms)"
					break
				}
				if err := m.check(ctx); err != nil {
					return err
				}
				symErr = err
				i += j + 1
			}
		}
		if k.Version != "" && (!wantSyms || k.Symbols != nil) {
			break
		}
	}
	if err := m.check(ctx); err != nil {
		return err
	}
	if k.Version == "" {
		return fmt.Errorf("linux: no Linux version banner in the kernel image at %#x: %w", uint64(k.Text), ErrNotLinux)
	}
	if wantSyms && k.Symbols == nil {
		if symErr == nil {
			symErr = fmt.Errorf("linux: no kallsyms token table in the kernel image: %w", ErrLayout)
		}
		return symErr
	}
	return nil
}

// checkSymbols checks the table against what the page tables say.
func (k *Kernel) checkSymbols() error {
	t, ok := k.Symbols.Addr("_text")
	if !ok {
		return fmt.Errorf("linux: %s has no _text: %w", k.SymbolsSrc, ErrLayout)
	}
	if t != k.Text {
		return fmt.Errorf("linux: %s puts _text at %#x, the page tables at %#x: %w", k.SymbolsSrc, uint64(t), uint64(k.Text), ErrLayout)
	}
	if a, ok := k.Symbols.Addr("linux_banner"); ok {
		s, err := k.ReadString(a, 1024)
		if loc := bannerRE.FindStringIndex(s); err != nil || loc == nil || loc[0] != 0 {
			return fmt.Errorf("linux: linux_banner at %#x is not a banner: %w", uint64(a), ErrLayout)
		}
		k.Version = strings.TrimRight(s, "\n")
	}
	return nil
}

// maxBanners is how many banners in guest-physical memory scanPML4 looks
// for page tables around.
const maxBanners = 16

// scanPML4 finds kernel page tables with no CPU state (raw and LiME
// dumps): it finds the banner in guest-physical memory, then looks at the
// pages around it (the kernel's own init_top_pgt is in the image, within
// kernelImageMax of its rodata) for one whose slot 511 leads to a mapping
// of the banner's page in the kernel image range.
func (k *Kernel) scanPML4(ctx context.Context, m *meter) (vmi.PA, error) {
	var found vmi.PA
	var hits int
	var stop error
	err := k.findPhys(ctx, m, []byte("Linux version "), func(bannerPA vmi.PA) bool {
		hits++
		pa, ok, err := k.pml4Near(ctx, m, bannerPA, hits)
		found, stop = pa, err
		return ok || err != nil || hits >= maxBanners
	})
	if err == nil {
		err = stop
	}
	if err != nil {
		return 0, err
	}
	if found == 0 {
		return 0, fmt.Errorf("linux: no page tables map any of %d banners in guest-physical memory: %w", hits, ErrNotLinux)
	}
	return found, nil
}

// pml4Near looks at the pages from 16 MiB below to 64 MiB above a banner
// for a PML4 whose kernel-image mapping holds the banner. Entry 511 is
// read through the counter (8 bytes a page), not through the page walker;
// each page whose entry 511 could be a kernel PML4's is a candidate of the
// budget.
func (k *Kernel) pml4Near(ctx context.Context, m *meter, bannerPA vmi.PA, hit int) (vmi.PA, bool, error) {
	lo := uint64(0)
	if uint64(bannerPA) > 16<<20 {
		lo = (uint64(bannerPA) - 16<<20) &^ 0xfff
	}
	hi := uint64(bannerPA) + 64<<20
	pa, tried := lo, 0
	prevPhase, prevProgress := m.phase, m.progress
	defer m.enter(prevPhase, prevProgress)
	m.enter(PhasePageTables, func() string {
		return fmt.Sprintf("%d of %d pages around banner %d at %#x looked at, %d PML4 candidates among them",
			(pa-lo)>>12, (hi-lo)>>12, hit, uint64(bannerPA), tried)
	})
	var e [8]byte
	var e2 [16]byte
	ranges := k.Mem.Ranges()
	for ; pa < hi; pa += 0x1000 {
		if pa&0xfffff == 0 {
			if err := m.check(ctx); err != nil {
				return 0, false, err
			}
		}
		if _, err := k.counter.ReadAt(e[:], int64(pa+511*8)); err != nil {
			continue
		}
		v := binary.LittleEndian.Uint64(e[:])
		if v&1 == 0 || v&(1<<7) != 0 || v&0xfff0000000000000&^(1<<63) != 0 {
			continue
		}
		// the next level's entry for the kernel image range is present:
		// PDPT[510] (4-level) or PML4[511] (5-level)
		next := int64(v&pteAddr) + 510*8
		if !inRanges(ranges, next, 16) {
			continue
		}
		if _, err := k.counter.ReadAt(e2[:], next); err != nil || e2[0]&1 == 0 && e2[8]&1 == 0 {
			continue
		}
		if err := m.candidate(ctx); err != nil {
			return 0, false, err
		}
		tried++
		for _, la57 := range []bool{false, true} {
			if err := k.findImage(vmi.PA(pa), la57); err != nil {
				continue
			}
			if bannerPA >= k.TextPA && uint64(bannerPA-k.TextPA) < uint64(k.ImageEnd-k.Text) {
				return vmi.PA(pa), true, nil
			}
		}
	}
	return 0, false, m.check(ctx)
}

// pteAddr is the address bits of a page-table entry (51:12).
const pteAddr = 0x000ffffffffff000

// inRanges reports whether [off, off+n) is inside one of ranges (sorted).
func inRanges(ranges []vmi.Range, off int64, n uint64) bool {
	if off < 0 {
		return false
	}
	i := sort.Search(len(ranges), func(i int) bool { return ranges[i].End() > vmi.PA(off) })
	return i < len(ranges) && ranges[i].Contains(vmi.PA(off)) && uint64(ranges[i].End())-uint64(off) >= n
}

// findPhys calls fn with each occurrence of a banner in guest-physical
// memory until fn returns true. This is discovery's one pass over memory:
// its reads are counted, not budgeted.
func (k *Kernel) findPhys(ctx context.Context, m *meter, pat []byte, fn func(vmi.PA) bool) error {
	const chunk = 4 << 20
	buf := make([]byte, chunk+len(pat))
	var total, searched uint64
	ranges := k.Mem.Ranges()
	for _, r := range ranges {
		total += r.Size
	}
	progress := func() string {
		return fmt.Sprintf("%d of %d MiB of guest-physical memory searched", searched>>20, total>>20)
	}
	for _, r := range ranges {
		for off := uint64(0); off < r.Size; off += chunk {
			m.enter(PhaseBanner, progress)
			if err := m.check(ctx); err != nil {
				return err
			}
			n, _ := k.counter.passRead(buf[:min(uint64(len(buf)), r.Size-off)], int64(uint64(r.Start)+off))
			searched += uint64(min(n, chunk))
			b := buf[:n]
			for i := 0; ; {
				j := bytes.Index(b[i:], pat)
				if j < 0 {
					break
				}
				if bannerRE.Match(b[i+j : min(len(b), i+j+64)]) {
					if fn(r.Start + vmi.PA(off) + vmi.PA(i+j)) {
						return nil
					}
				}
				i += j + 1
			}
		}
	}
	return nil
}

// ReadU64 reads a little-endian 64-bit value at a kernel virtual address.
func (k *Kernel) ReadU64(va vmi.VA) (uint64, error) {
	var b [8]byte
	if _, err := k.AS.ReadVirt(b[:], va); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// ReadString reads a NUL-terminated string of at most max bytes at va.
func (k *Kernel) ReadString(va vmi.VA, max int) (string, error) {
	b := make([]byte, max)
	n, err := k.AS.ReadVirt(b, va)
	b = b[:n]
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i]), nil
	}
	if err != nil {
		return string(b), err
	}
	return string(b), nil
}

// loadBTF reads the kernel's .BTF section between __start_BTF and
// __stop_BTF and parses it.
func (k *Kernel) loadBTF(ctx context.Context, m *meter) error {
	const maxBTF = 64 << 20
	start, ok1 := k.Symbols.Addr("__start_BTF")
	stop, ok2 := k.Symbols.Addr("__stop_BTF")
	if !ok1 || !ok2 {
		return fmt.Errorf("linux: no __start_BTF/__stop_BTF symbols (kernel without CONFIG_DEBUG_INFO_BTF?): %w", ErrLayout)
	}
	if stop <= start || stop-start > maxBTF {
		return fmt.Errorf("linux: BTF section [%#x, %#x) of implausible size: %w", uint64(start), uint64(stop), vmi.ErrCorrupt)
	}
	m.enter(PhaseBTF, func() string { return fmt.Sprintf("%d bytes of .BTF at %#x", uint64(stop-start), uint64(start)) })
	if err := m.check(ctx); err != nil {
		return err
	}
	b := make([]byte, stop-start)
	if _, err := k.AS.ReadVirt(b, start); err != nil {
		if err := m.check(ctx); err != nil {
			return err
		}
		return fmt.Errorf("linux: reading BTF at %#x: %w", uint64(start), err)
	}
	spec, err := LoadBTF(b)
	if err != nil {
		return fmt.Errorf("linux: BTF at %#x: %w", uint64(start), err)
	}
	k.Types, k.TypesSrc = spec, fmt.Sprintf("memory (.BTF, %d bytes)", len(b))
	return nil
}

// LoadBTF parses raw kernel BTF bytes (the .BTF section's content).
func LoadBTF(b []byte) (*btf.Spec, error) {
	if len(b) < 24 || binary.LittleEndian.Uint16(b) != 0xeb9f {
		return nil, fmt.Errorf("no BTF magic: %w", vmi.ErrCorrupt)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, vmi.ErrCorrupt)
	}
	return spec, nil
}
