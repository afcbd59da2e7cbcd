package linux

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/vmscope/vmscope/vmi"
)

// Module is a loaded kernel module, from the `modules` list.
type Module struct {
	Addr  uint64 `json:"addr"` // struct module
	Name  string `json:"name"`
	Base  uint64 `json:"base"` // core_layout.base, as /proc/modules shows it
	Size  uint64 `json:"size"` // core + init layout sizes, as /proc/modules
	Refs  int    `json:"refs"`
	State string `json:"state"` // Live, Loading, Unloading, Unformed
}

// Modules walks the `modules` list, in list order (newest first, as
// /proc/modules).
func (k *Kernel) Modules(ctx context.Context) ([]Module, []Problem, error) {
	head, ok := k.Symbols.Addr("modules")
	if !ok {
		return nil, nil, fmt.Errorf("linux: no modules symbol: %w", ErrLayout)
	}
	listOff, err := k.Field("module", "list")
	if err != nil {
		return nil, nil, err
	}
	states := map[uint64]string{}
	for name, show := range map[string]string{"MODULE_STATE_LIVE": "Live", "MODULE_STATE_COMING": "Loading", "MODULE_STATE_GOING": "Unloading", "MODULE_STATE_UNFORMED": "Unformed"} {
		v, err := k.EnumValue("module_state", name)
		if err != nil {
			return nil, nil, err
		}
		states[v] = show
	}
	if _, err := k.Field("module", "core_layout.base"); err != nil {
		return nil, nil, fmt.Errorf("linux: struct module without core_layout (kernel 6.4 or later?): %w", err)
	}
	nameSize, err := k.fieldSize("module", "name")
	if err != nil {
		return nil, nil, err
	}
	return collectList(ctx, k, "module list", head, listOff, func(a vmi.VA) (Module, bool, *Problem) {
		o := k.obj("module", a)
		m := Module{Addr: uint64(a)}
		m.Name = o.str("name", int(min(nameSize, 256)))
		m.Base = o.u64("core_layout.base")
		m.Size = o.uint("core_layout.size") + o.uint("init_layout.size")
		m.Refs = int(int32(o.u32("refcnt"))) - 1 // MODULE_REF_BASE
		st := o.uint("state")
		if o.err != nil {
			p := problem("module "+m.Name, a, o.err)
			return m, false, &p
		}
		m.State = states[st]
		if m.State == "" {
			m.State = fmt.Sprintf("state %d", st)
		}
		return m, true, nil
	})
}

func (k *Kernel) fieldSize(typ, path string) (uint64, error) {
	f, err := k.field(typ, path)
	if err != nil {
		return 0, err
	}
	n, err := sizeof(f)
	return uint64(n), err
}

// SortModules sorts modules by name.
func SortModules(m []Module) {
	sort.SliceStable(m, func(i, j int) bool { return m[i].Name < m[j].Name })
}

// ModuleSymbol is a symbol of a loaded module, as the module part of
// /proc/kallsyms shows it.
type ModuleSymbol struct {
	Addr   uint64 `json:"addr"`
	Type   byte   `json:"type"` // upper case when the module exports it
	Name   string `json:"name"`
	Module string `json:"module"`
}

// Caps on module symbol tables.
const (
	maxModSyms    = 1 << 20
	maxModSymName = 512 // KSYM_NAME_LEN
)

// ModuleSymbols recovers the module part of /proc/kallsyms in its order:
// modules in list order (Unformed ones skipped), each module's
// mod->kallsyms symbols in table order (after init, core_kallsyms: the
// core symbols kept), nameless ones skipped, the type upper case when the
// module's own export table (mod->syms) has the name at that value, as
// module_get_kallsym and s_show do.
func (k *Kernel) ModuleSymbols(ctx context.Context) ([]ModuleSymbol, []Problem, error) {
	mods, probs, err := k.Modules(ctx)
	if err != nil {
		return nil, nil, err
	}
	symSize, err := k.Sizeof("elf64_sym")
	if err != nil {
		return nil, nil, err
	}
	stName, err1 := k.Field("elf64_sym", "st_name")
	stValue, err2 := k.Field("elf64_sym", "st_value")
	if err := firstErr(err1, err2); err != nil {
		return nil, nil, err
	}
	var out []ModuleSymbol
	for _, m := range mods {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		if m.State == "Unformed" {
			continue
		}
		what := "symbols of module " + m.Name
		o := k.obj("module", vmi.VA(m.Addr))
		ks := o.ptr("kallsyms")
		if o.err != nil {
			probs = append(probs, problem(what, vmi.VA(m.Addr), o.err))
			continue
		}
		ko := k.obj("mod_kallsyms", ks)
		symtab := ko.ptr("symtab")
		num := ko.uint("num_symtab")
		strtab := ko.ptr("strtab")
		typetab := ko.ptr("typetab")
		if ko.err != nil {
			probs = append(probs, problem(what, ks, ko.err))
			continue
		}
		if num > maxModSyms {
			probs = append(probs, problem(what, ks, fmt.Errorf("%d symbols: %w", num, vmi.ErrCorrupt)))
			continue
		}
		syms := make([]byte, num*symSize)
		types := make([]byte, num)
		if _, err := k.AS.ReadVirt(syms, symtab); err != nil {
			probs = append(probs, problem(what+": symtab", symtab, err))
			continue
		}
		if _, err := k.AS.ReadVirt(types, typetab); err != nil {
			probs = append(probs, problem(what+": typetab", typetab, err))
			continue
		}
		exported, err := k.moduleExports(vmi.VA(m.Addr))
		if err != nil {
			probs = append(probs, problem(what+": exports", vmi.VA(m.Addr), err))
		}
		for i := uint64(0); i < num; i++ {
			e := syms[i*symSize:]
			off := binary.LittleEndian.Uint32(e[stName:])
			val := binary.LittleEndian.Uint64(e[stValue:])
			name, err := k.ReadString(strtab+vmi.VA(off), maxModSymName)
			if err != nil {
				probs = append(probs, problem(fmt.Sprintf("%s: name of symbol %d", what, i), strtab+vmi.VA(off), err))
				continue
			}
			if name == "" {
				continue
			}
			t := types[i]
			if v, ok := exported[name]; ok && v == val {
				t = upper(t)
			} else {
				t = lower(t)
			}
			out = append(out, ModuleSymbol{Addr: val, Type: t, Name: name, Module: m.Name})
		}
	}
	return out, probs, nil
}

// moduleExports reads a module's export table (mod->syms, num_syms):
// struct kernel_symbol with place-relative offsets
// (CONFIG_HAVE_ARCH_PREL32_RELOCATIONS, as x86-64 builds) or absolute
// pointers, as BTF says.
func (k *Kernel) moduleExports(mod vmi.VA) (map[string]uint64, error) {
	o := k.obj("module", mod)
	syms := o.ptr("syms")
	num := o.uint("num_syms")
	if o.err != nil {
		return nil, o.err
	}
	if num > maxModSyms {
		return nil, fmt.Errorf("%d exports: %w", num, vmi.ErrCorrupt)
	}
	size, err := k.Sizeof("kernel_symbol")
	if err != nil {
		return nil, err
	}
	_, relErr := k.Field("kernel_symbol", "value_offset")
	out := map[string]uint64{}
	for i := uint64(0); i < num; i++ {
		a := syms + vmi.VA(i*size)
		so := k.obj("kernel_symbol", a)
		var val, name vmi.VA
		if relErr == nil {
			vOff, _ := k.Field("kernel_symbol", "value_offset")
			nOff, _ := k.Field("kernel_symbol", "name_offset")
			val = a + vmi.VA(vOff) + vmi.VA(int64(int32(so.u32("value_offset"))))
			name = a + vmi.VA(nOff) + vmi.VA(int64(int32(so.u32("name_offset"))))
		} else {
			val, name = so.ptr("value"), so.ptr("name")
		}
		if so.err != nil {
			return out, so.err
		}
		n, err := k.ReadString(name, maxModSymName)
		if err != nil {
			return out, err
		}
		out[n] = uint64(val)
	}
	return out, nil
}

func upper(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c - 'A' + 'a'
	}
	return c
}
