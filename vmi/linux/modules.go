package linux

import (
	"context"
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
	var out []Module
	var probs []Problem
	if p := k.listWalk("module list", head, maxListLen, func(e vmi.VA) bool {
		if ctx.Err() != nil {
			return false
		}
		a := e - vmi.VA(listOff)
		o := k.obj("module", a)
		m := Module{Addr: uint64(a)}
		m.Name = o.str("name", int(min(nameSize, 256)))
		m.Base = o.u64("core_layout.base")
		m.Size = o.uint("core_layout.size") + o.uint("init_layout.size")
		m.Refs = int(int32(o.u32("refcnt"))) - 1 // MODULE_REF_BASE
		st := o.uint("state")
		if o.err != nil {
			probs = append(probs, problem("module "+m.Name, a, o.err))
			return true
		}
		m.State = states[st]
		if m.State == "" {
			m.State = fmt.Sprintf("state %d", st)
		}
		out = append(out, m)
		return true
	}); p != nil {
		probs = append(probs, *p)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return out, probs, nil
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
