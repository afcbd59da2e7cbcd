package cfi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// Sources of page-level kernel execution. A Source observes a live guest
// and emits Events: kernel-mode execution on a code page, and where it
// knows it the page that ran before (plugin, step) or the pages of the
// callers (sample, from the unwound return addresses). Sources read the
// guest and control when it runs (vmi.Tracer); none writes guest memory or
// registers, and each leaves the guest running with no trap of its own
// when Run returns.

// KernelMin is the lowest kernel-half address on x86-64 (4- and 5-level).
const KernelMin vmi.VA = 0xffff800000000000

// PageSize is the granularity of the models.
const PageSize = 4096

// Event is kernel-mode execution a source saw.
type Event struct {
	CPU int
	// Page is the page (address rounded down to PageSize) that executed.
	Page vmi.VA
	// From is the page that executed right before on that vCPU, 0 when
	// the source does not know it (sample) or it is the vCPU's first.
	From vmi.VA
	// Addr is the exact address when the source has it (sample: RIP;
	// step: RIP), else Page.
	Addr vmi.VA
	// Callers are the pages of the unwound return addresses, innermost
	// first (sample); each calls the one before it, the first calls Page.
	Callers []vmi.VA
	// Time is when the source saw it (host clock).
	Time time.Time
	// Replay marks an event the source reports from before the client
	// connected (plugin 'A' mode).
	Replay bool
}

// Source is a mechanism that observes a guest's kernel execution.
type Source interface {
	// Name is "plugin", "sample", "step" or "vmi".
	Name() string
	// Run observes until ctx ends (then it returns nil after leaving the
	// guest as found) or emit returns an error (returned).
	Run(ctx context.Context, emit func(Event) error) error
}

func pageOf(va vmi.VA) vmi.VA { return va &^ (PageSize - 1) }

// moduleText is the text of a loaded module.
type moduleText struct {
	Name string
	Base vmi.VA // core_layout.base
	Size uint64 // core_layout.text_size
}

// Regions are the kernel's code regions on one boot: core text
// (_stext to _etext) and each module's text. They turn an address into a
// slide-independent Page and back, and name the symbol at an address.
type Regions struct {
	Build   Build
	Text    vmi.VA // _stext
	Etext   vmi.VA // _etext
	Slide   int64
	Modules []moduleText // sorted by Base
	// Init is the init text of modules still initialising: known code,
	// but freed once the module's init returns, so never in a model.
	Init []moduleText
	syms []sym // core and module symbols, sorted by address
}

type sym struct {
	addr  vmi.VA
	name  string
	owner string // "" for core
}

// Owners of an address, as the static checks' KernelMap names them.
const (
	ownerKernel = "kernel"
	ownerNone   = "none"
)

// LoadRegions reads the regions of the kernel k (found by vmi/linux in a
// live guest or a dump): _stext and _etext from its symbols, the modules
// and their text sizes from the `modules` list and BTF, and the build
// identity: the banner, the number of text pages and the layout hash.
func LoadRegions(ctx context.Context, k *linux.Kernel) (*Regions, error) {
	stext, ok := k.Symbols.Addr("_stext")
	if !ok {
		return nil, fmt.Errorf("cfi: kernel symbols without _stext: %w", linux.ErrLayout)
	}
	etext, ok := k.Symbols.Addr("_etext")
	if !ok || etext <= stext || uint64(etext-stext) > MaxTextPages*PageSize {
		return nil, fmt.Errorf("cfi: kernel symbols without a valid _etext: %w", linux.ErrLayout)
	}
	r := &Regions{Text: stext, Etext: etext, Slide: k.Slide}
	r.Build = Build{Banner: k.Version, TextPages: uint32((uint64(etext-stext) + PageSize - 1) / PageSize), Layout: LayoutHash(k.Symbols, stext, etext)}
	if len(r.Build.Banner) > MaxBanner {
		r.Build.Banner = r.Build.Banner[:MaxBanner]
	}
	for _, s := range k.Symbols.List {
		if s.Addr >= stext && s.Addr < etext {
			r.syms = append(r.syms, sym{addr: s.Addr, name: s.Name})
		}
	}
	if err := r.loadModules(ctx, k); err != nil {
		return nil, err
	}
	sort.SliceStable(r.syms, func(i, j int) bool { return r.syms[i].addr < r.syms[j].addr })
	return r, nil
}

// ReloadModules returns a copy of r with the module text re-read from
// k's `modules` list (a module loaded or unloaded since), keeping the
// symbols r has: cheap enough to run on every page a monitor cannot
// place (the module symbol tables are not read again).
func (r *Regions) ReloadModules(ctx context.Context, k *linux.Kernel) (*Regions, error) {
	c := &Regions{Build: r.Build, Text: r.Text, Etext: r.Etext, Slide: r.Slide, syms: r.syms}
	if err := c.readModules(ctx, k); err != nil {
		return nil, err
	}
	return c, nil
}

func (r *Regions) loadModules(ctx context.Context, k *linux.Kernel) error {
	if err := r.readModules(ctx, k); err != nil {
		return err
	}
	if ms, _, err := k.ModuleSymbols(ctx); err == nil {
		for _, s := range ms {
			if s.Type == 't' || s.Type == 'T' {
				r.syms = append(r.syms, sym{addr: vmi.VA(s.Addr), name: s.Name, owner: s.Module})
			}
		}
	}
	return nil
}

// readModules reads the text and init text of every listed module.
func (r *Regions) readModules(ctx context.Context, k *linux.Kernel) error {
	mods, _, err := k.Modules(ctx)
	if err != nil {
		return err
	}
	off, err := k.Field("module", "core_layout.text_size")
	if err != nil {
		return err
	}
	initBase, err := k.Field("module", "init_layout.base")
	if err != nil {
		return err
	}
	initSize, err := k.Field("module", "init_layout.text_size")
	if err != nil {
		return err
	}
	for _, m := range mods {
		if !validModuleName(m.Name) || m.State == "Unformed" {
			continue
		}
		v, err := k.ReadU64(vmi.VA(m.Addr + off))
		if err != nil {
			continue // a module being torn down: its text is not a region
		}
		size := v & 0xffffffff
		if size == 0 || size > MaxModulePage*PageSize || vmi.VA(m.Base) < KernelMin {
			continue
		}
		r.Modules = append(r.Modules, moduleText{Name: m.Name, Base: vmi.VA(m.Base), Size: size})
		ib, err1 := k.ReadU64(vmi.VA(m.Addr + initBase))
		is, err2 := k.ReadU64(vmi.VA(m.Addr + initSize))
		if err1 == nil && err2 == nil && vmi.VA(ib) >= KernelMin && is&0xffffffff != 0 && is&0xffffffff <= MaxModulePage*PageSize {
			r.Init = append(r.Init, moduleText{Name: m.Name, Base: vmi.VA(ib), Size: is & 0xffffffff})
		}
	}
	sort.Slice(r.Modules, func(i, j int) bool { return r.Modules[i].Base < r.Modules[j].Base })
	return nil
}

// LayoutHash is the SHA-256 of the core text symbols as "OFFSET TYPE
// NAME\n" lines (offset from _stext, in kallsyms order): the same for
// every boot of a build whatever its KASLR slide, different for another
// build.
func LayoutHash(s *linux.Symbols, stext, etext vmi.VA) string {
	h := sha256.New()
	for _, y := range s.List {
		if y.Addr >= stext && y.Addr <= etext {
			fmt.Fprintf(h, "%x %c %s\n", uint64(y.Addr-stext), y.Type, y.Name)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// PageOf names the page of va: core text or a module's text. ok is false
// outside every known code region.
func (r *Regions) PageOf(va vmi.VA) (Page, bool) {
	if va >= r.Text && va < r.Etext {
		return Core(uint32((va - r.Text) / PageSize)), true
	}
	i := sort.Search(len(r.Modules), func(i int) bool { return r.Modules[i].Base > va }) - 1
	if i >= 0 {
		m := r.Modules[i]
		if uint64(va-m.Base) < m.Size {
			return Page{Module: m.Name, Index: uint32((va - m.Base) / PageSize)}, true
		}
	}
	return Page{}, false
}

// VA is the address of page p on this boot.
func (r *Regions) VA(p Page) (vmi.VA, bool) {
	if p.Module == "" {
		if p.Index >= r.Build.TextPages {
			return 0, false
		}
		return r.Text + vmi.VA(p.Index)*PageSize, true
	}
	for _, m := range r.Modules {
		if m.Name == p.Module && uint64(p.Index)*PageSize < m.Size {
			return m.Base + vmi.VA(p.Index)*PageSize, true
		}
	}
	return 0, false
}

// Known reports whether va lies in core or module text.
func (r *Regions) Known(va vmi.VA) bool {
	_, ok := r.PageOf(va)
	return ok
}

// InitText returns the module whose init text holds va ("" when none).
func (r *Regions) InitText(va vmi.VA) string {
	for _, m := range r.Init {
		if va >= m.Base && uint64(va-m.Base) < m.Size {
			return m.Name
		}
	}
	return ""
}

// Symbolize names the nearest symbol at or below va in va's region, the
// offset from it, and va's owner ("kernel", "module NAME" or "none").
func (r *Regions) Symbolize(va vmi.VA) (name string, off uint64, owner string) {
	p, ok := r.PageOf(va)
	if !ok {
		return "", 0, ownerNone
	}
	owner = ownerKernel
	if p.Module != "" {
		owner = "module " + p.Module
	}
	i := sort.Search(len(r.syms), func(i int) bool { return r.syms[i].addr > va }) - 1
	if i >= 0 && r.syms[i].owner == p.Module {
		return r.syms[i].name, uint64(va - r.syms[i].addr), owner
	}
	return "", 0, owner
}
