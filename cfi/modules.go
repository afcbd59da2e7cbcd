package cfi

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// The x86-64 module mapping space (Documentation/x86/x86_64/mm.rst): it
// starts after the kernel image space (512 MiB, or 1 GiB with KASLR, above
// __START_KERNEL_map) and ends below the fixmap. Carving looks at the
// union of both layouts, less the kernel image itself.
const (
	moduleAreaLo = 0xffffffffa0000000
	moduleAreaHi = 0xffffffffff000000
	// maxCarveBytes caps the mapped module-area bytes carving reads.
	maxCarveBytes = 1 << 30
)

// CarvedModule is a struct module found in the module area by its
// self-reference (mkobj.mod points back to the structure).
type CarvedModule struct {
	Addr  vmi.VA
	Name  string
	State uint64
	Base  vmi.VA // core_layout.base
	Size  uint64
	Text  uint64 // core_layout.text_size
}

// CarveModules scans the mapped pages of the module area for struct
// module: a quadword at A holding A - offsetof(module, mkobj.mod) whose
// structure has a printable name, a module_state value and a core layout
// inside the module area. Layout from BTF.
func CarveModules(ctx context.Context, k *linux.Kernel) ([]CarvedModule, []vmerr.Problem, error) {
	modOff, err := k.Field("module", "mkobj.mod")
	if err != nil {
		return nil, nil, err
	}
	nameSize, err := k.FieldSize("module", "name")
	if err != nil {
		return nil, nil, err
	}
	maxState := uint64(0)
	for _, s := range []string{"MODULE_STATE_LIVE", "MODULE_STATE_COMING", "MODULE_STATE_GOING", "MODULE_STATE_UNFORMED"} {
		v, err := k.EnumValue("module_state", s)
		if err != nil {
			return nil, nil, err
		}
		maxState = max(maxState, v)
	}
	ranges, probs, err := MappedRanges(ctx, k.Mem, k.AS.Root, k.AS.LA57, moduleAreaLo, moduleAreaHi)
	if err != nil {
		return nil, probs, err
	}
	var out []CarvedModule
	seen := map[vmi.VA]bool{}
	total := uint64(0)
	page := make([]byte, vmi.PageBytes)
	for _, r := range ranges {
		for va := r.Start; va < r.End; va += vmi.PageBytes {
			if va >= k.Text && va < k.ImageEnd {
				continue
			}
			if total += vmi.PageBytes; total > maxCarveBytes {
				probs = append(probs, vmerr.Problem{Where: "module area", Offset: -1, Addr: uint64(va), Err: fmt.Errorf("more than %d bytes mapped: %w", maxCarveBytes, vmi.ErrCorrupt)})
				return out, probs, nil
			}
			if total&(64<<20-1) == 0 {
				if err := ctx.Err(); err != nil {
					return nil, nil, err
				}
			}
			if _, err := k.Mem.ReadAt(page, int64(r.PA)+int64(va-r.Start)); err != nil {
				continue
			}
			for i := 0; i+8 <= len(page); i += 8 {
				v := binary.LittleEndian.Uint64(page[i:])
				a := va + vmi.VA(i)
				if v+modOff != uint64(a) || seen[vmi.VA(v)] {
					continue
				}
				seen[vmi.VA(v)] = true
				cm, ok := readCarved(k, vmi.VA(v), nameSize, maxState)
				if ok {
					out = append(out, cm)
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out, probs, nil
}

// readCarved reads and validates a struct module candidate.
func readCarved(k *linux.Kernel, a vmi.VA, nameSize, maxState uint64) (CarvedModule, bool) {
	r := newReader(k)
	cm := CarvedModule{Addr: a}
	cm.State = r.uint("module", a, "state")
	cm.Base = vmi.VA(r.uint("module", a, "core_layout.base"))
	cm.Size = r.uint("module", a, "core_layout.size")
	cm.Text = r.uint("module", a, "core_layout.text_size")
	cm.Name = r.str("module", a, "name", int(min(nameSize, 256)))
	if r.err != nil || cm.State > maxState || cm.Name == "" || cm.Text > cm.Size || cm.Size > maxRegionSize {
		return cm, false
	}
	for _, ch := range cm.Name {
		if ch <= ' ' || ch > '~' {
			return cm, false
		}
	}
	if cm.Base < moduleAreaLo || cm.Base >= moduleAreaHi {
		return cm, false
	}
	return cm, true
}

// ksetModule is a module's kobject on module_kset.
type ksetModule struct {
	name string
	mod  vmi.VA
}

// ksetModules walks module_kset's kobjects (struct module_kobject through
// kobj.entry) and returns those of loaded modules (mod set; built-in
// modules with parameters have a kobject too, without one).
func (c *checker) ksetModules() ([]ksetModule, error) {
	k := c.k
	v, ok := k.Symbols.Addr("module_kset")
	if !ok {
		return nil, fmt.Errorf("no module_kset: %w", vmerr.ErrNotPresent)
	}
	kset, err := k.ReadU64(v)
	if err != nil {
		return nil, err
	}
	listOff, err1 := k.Field("kset", "list")
	entryOff, err2 := k.Field("module_kobject", "kobj.entry")
	if err := firstErr(err1, err2); err != nil {
		return nil, err
	}
	var out []ksetModule
	if p := walkList(k, vmi.VA(kset)+vmi.VA(listOff), maxListEntries, func(e vmi.VA) bool {
		a := e - vmi.VA(entryOff)
		r := newReader(k)
		mod := vmi.VA(r.uint("module_kobject", a, "mod"))
		name := r.str("module_kobject", a, "kobj.name", 256)
		if r.err != nil {
			c.problem("module_kset entry", a, r.err)
			return true
		}
		if mod != 0 {
			out = append(out, ksetModule{name, mod})
		}
		return true
	}); p != nil {
		p.Where = "module_kset"
		c.rep.Problems = append(c.rep.Problems, *p)
	}
	return out, nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// modules compares the views of loaded modules: the modules list, the
// module_kset kobjects and struct module carved from the module area. A
// module missing from a view it should be in is hidden.
func (c *checker) modules(ctx context.Context) (int, []Finding, error) {
	listed := map[vmi.VA]string{}
	for _, m := range c.m.Modules {
		listed[m.Struct] = m.Name
	}
	kset, err := c.ksetModules()
	if err != nil {
		c.problem("module_kset", 0, err)
	}
	inKset := map[vmi.VA]string{}
	for _, km := range kset {
		inKset[km.mod] = km.name
	}
	carved, probs, err := CarveModules(ctx, c.k)
	c.rep.Problems = append(c.rep.Problems, probs...)
	if err != nil {
		return 0, nil, err
	}
	c.carved = carved
	live, _ := c.k.EnumValue("module_state", "MODULE_STATE_LIVE")
	coming, _ := c.k.EnumValue("module_state", "MODULE_STATE_COMING")
	isCarved := map[vmi.VA]bool{}
	var out []Finding
	views := func(a vmi.VA) string {
		var v []string
		if _, ok := listed[a]; ok {
			v = append(v, "modules list")
		}
		if _, ok := inKset[a]; ok {
			v = append(v, "module_kset")
		}
		if isCarved[a] {
			v = append(v, "carved")
		}
		return strings.Join(v, ", ")
	}
	for _, cm := range carved {
		isCarved[cm.Addr] = true
	}
	for _, cm := range carved {
		if cm.State != live && cm.State != coming {
			continue // being freed: memory not yet unmapped
		}
		var missing []string
		if _, ok := listed[cm.Addr]; !ok {
			missing = append(missing, "the modules list")
		}
		if _, ok := inKset[cm.Addr]; !ok && kset != nil {
			missing = append(missing, "module_kset (sysfs)")
		}
		if len(missing) > 0 {
			f := c.m.newFinding(KindHiddenModule, cm.Addr, "struct module "+cm.Name,
				fmt.Sprintf("module %q (struct module at %#x, core text [%#x, %#x)) is in memory (%s) but missing from %s",
					cm.Name, uint64(cm.Addr), uint64(cm.Base), uint64(cm.Base)+cm.Text, views(cm.Addr), strings.Join(missing, " and ")))
			out = append(out, f)
		}
	}
	for a, name := range listed {
		var missing []string
		if _, ok := inKset[a]; !ok && kset != nil {
			missing = append(missing, "module_kset (sysfs)")
		}
		if !isCarved[a] {
			missing = append(missing, "the module area (no struct module there)")
		}
		if len(missing) > 0 {
			out = append(out, c.m.newFinding(KindHiddenModule, a, "struct module "+name,
				fmt.Sprintf("module %q on the modules list (%s) is missing from %s", name, views(a), strings.Join(missing, " and "))))
		}
	}
	for a, name := range inKset {
		if _, ok := listed[a]; !ok && !isCarved[a] {
			out = append(out, c.m.newFinding(KindHiddenModule, a, "module_kset "+name,
				fmt.Sprintf("module %q has a sysfs kobject (%s) but is not on the modules list", name, views(a))))
		}
	}
	return len(carved) + len(listed) + len(kset), out, nil
}
