package cfi

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// maxTableEntries caps a system-call table's length.
const maxTableEntries = 4096

// symbolSpan is how many bytes a kernel symbol spans: to the next symbol
// at a higher address (kallsyms holds no sizes), at most max.
func (m *KernelMap) symbolSpan(name string, max uint64) (vmi.VA, uint64, bool) {
	a, ok := m.Kernel.Symbols.Addr(name)
	if !ok {
		return 0, 0, false
	}
	i := sort.Search(len(m.syms), func(i int) bool { return m.syms[i].addr > a })
	if i == len(m.syms) {
		return a, max, true
	}
	return a, min(uint64(m.syms[i].addr-a), max), true
}

// syscallNames is the system-call number -> name map the kernel built at
// boot for syscall tracing (CONFIG_FTRACE_SYSCALLS): syscalls_metadata, an
// array of struct syscall_metadata pointers indexed by number, filled by
// init_ftrace_syscalls from the table as it was then. Absent entries are "".
func (c *checker) syscallNames(n int) ([]string, error) {
	v, ok := c.k.Symbols.Addr("syscalls_metadata")
	if !ok {
		return nil, fmt.Errorf("no syscalls_metadata: %w", vmerr.ErrNotPresent)
	}
	arr, err := c.k.ReadU64(v)
	if err != nil || arr == 0 {
		return nil, fmt.Errorf("syscalls_metadata at %#x: %v: %w", uint64(v), err, vmerr.ErrNotPresent)
	}
	b := make([]byte, n*8)
	if _, err := c.k.AS.ReadVirt(b, vmi.VA(arr)); err != nil {
		return nil, fmt.Errorf("syscalls_metadata array at %#x: %w", arr, err)
	}
	names := make([]string, n)
	for i := range names {
		p := vmi.VA(binary.LittleEndian.Uint64(b[i*8:]))
		if p == 0 {
			continue
		}
		if !kernelPtr(p) {
			c.problem(fmt.Sprintf("syscalls_metadata[%d]", i), p, fmt.Errorf("not a kernel pointer: %w", vmi.ErrCorrupt))
			continue
		}
		r := newReader(c.k)
		name := r.str("syscall_metadata", p, "name", 128)
		nr := r.uint("syscall_metadata", p, "syscall_nr")
		if r.err != nil {
			c.problem(fmt.Sprintf("syscalls_metadata[%d]", i), p, r.err)
			continue
		}
		if int(int32(nr)) != i {
			c.problem(fmt.Sprintf("syscalls_metadata[%d]", i), p, fmt.Errorf("%s has number %d: %w", name, int32(nr), vmi.ErrCorrupt))
			continue
		}
		names[i] = name
	}
	return names, nil
}

// syscalls checks sys_call_table and ia32_sys_call_table. Each entry must
// be the start of a core-text function named PREFIX_sys_* (PREFIX __x64 or
// __ia32; __ia32_compat_sys_* too); where no reference below names the
// number, one used by no other number unless it is sys_ni_syscall; for the x64 table, where the kernel's syscall metadata
// names number N sys_NAME, the entry must be __x64_sys_NAME exactly; with
// the kernel image (WithKernelImage), the entry must be the one the build
// wrote there, relocated by the slide.
func (c *checker) syscalls(ctx context.Context) (int, []Finding, error) {
	var out []Finding
	checked := 0
	dispatch := ""
	if _, ok := c.k.Symbols.Addr("x64_sys_call"); ok {
		dispatch = " (the kernel dispatches through x64_sys_call, a switch: the table is not on the system-call path, but nothing legitimate writes it)"
	}
	ran := false
	for _, t := range []struct {
		table    string
		prefixes []string
	}{
		{"sys_call_table", []string{"__x64_sys_"}},
		{"ia32_sys_call_table", []string{"__ia32_sys_", "__ia32_compat_sys_"}},
	} {
		base, span, ok := c.m.symbolSpan(t.table, maxTableEntries*8)
		if !ok {
			continue
		}
		ran = true
		n := int(span / 8)
		b := make([]byte, n*8)
		if _, err := c.k.AS.ReadVirt(b, base); err != nil {
			c.problem(t.table, base, err)
			continue
		}
		// the span runs to the next symbol: zero quadwords after the
		// last entry are alignment padding
		for n > 0 && binary.LittleEndian.Uint64(b[(n-1)*8:]) == 0 {
			n--
		}
		var names []string
		if t.table == "sys_call_table" {
			var err error
			if names, err = c.syscallNames(n); err != nil {
				c.problem(t.table+": number to name", 0, err)
			}
		}
		// with the kernel image, the table as the build wrote it
		var orig []byte
		if ti, err := c.image(); err == nil {
			if orig, err = ti.at(base, uint64(n)*8); err != nil {
				c.problem(t.table+" in the kernel image", base, err)
			}
		}
		used := map[vmi.VA]int{}
		for i := 0; i < n; i++ {
			used[vmi.VA(binary.LittleEndian.Uint64(b[i*8:]))]++
		}
		for i := 0; i < n; i++ {
			checked++
			e := vmi.VA(binary.LittleEndian.Uint64(b[i*8:]))
			where := fmt.Sprintf("%s[%d]", t.table, i)
			sym, off, _ := c.m.Symbolize(e)
			var bad []string
			switch {
			case !c.m.InCore(e):
				bad = append(bad, "outside core kernel text")
			case off != 0:
				bad = append(bad, "not at the start of a function")
			case !hasPrefix(sym, t.prefixes) && !c.aliasWithPrefix(e, t.prefixes):
				bad = append(bad, fmt.Sprintf("%s is not a %s* function", sym, strings.Join(t.prefixes, "*/")))
			}
			// with no reference for this number, a function used for two
			// numbers betrays one of them
			haveRef := orig != nil || i < len(names) && names[i] != ""
			if !haveRef && used[e] > 1 && !strings.HasSuffix(sym, "_sys_ni_syscall") {
				bad = append(bad, fmt.Sprintf("%s is also the entry of %d other numbers", sym, used[e]-1))
			}
			if i < len(names) && names[i] != "" {
				want := "__x64_" + names[i]
				if a, ok := c.k.Symbols.Addr(want); ok && a != e {
					bad = append(bad, fmt.Sprintf("the kernel's syscall metadata names number %d %s, at %#x", i, names[i], uint64(a)))
				}
			}
			if orig != nil {
				if o := vmi.VA(binary.LittleEndian.Uint64(orig[i*8:])); o != e {
					osym, _, _ := c.m.Symbolize(o)
					bad = append(bad, fmt.Sprintf("the kernel image has %s (%#x) for number %d", osym, uint64(o), i))
				}
			}
			if len(bad) > 0 {
				out = append(out, c.m.newFinding(KindSyscallHook, e, where, "entry "+strings.Join(bad, "; ")+dispatch))
			}
		}
	}
	if !ran {
		return 0, nil, fmt.Errorf("no sys_call_table symbol: %w", vmerr.ErrNotPresent)
	}
	return checked, out, nil
}

func hasPrefix(s string, ps []string) bool {
	for _, p := range ps {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// aliasWithPrefix reports whether some symbol at exactly va has one of
// the prefixes (Symbolize picks one name of several at an address).
func (c *checker) aliasWithPrefix(va vmi.VA, ps []string) bool {
	i := sort.Search(len(c.m.syms), func(i int) bool { return c.m.syms[i].addr >= va })
	for ; i < len(c.m.syms) && c.m.syms[i].addr == va; i++ {
		if hasPrefix(c.m.syms[i].name, ps) {
			return true
		}
	}
	return false
}
