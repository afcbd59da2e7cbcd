// Package cfi checks the integrity of a Linux x86-64 guest kernel from its
// memory alone, on a snapshot or a live guest alike (anything that is a
// vmi.Memory): static checks of the structures a rootkit rewrites
// (system-call tables, the IDT, the module list and its other views, the
// executable kernel pages, ftrace and kprobe hooks, return addresses on
// kernel stacks), and page-level models of kernel execution learned and
// monitored on a live guest.
//
// Everything is judged against one KernelMap: the core kernel's text
// (_text.._etext, from kallsyms), each listed module's text (its
// struct module, layout from BTF), and the trampolines the kernel makes on
// its own (ftrace ops trampolines, BPF JIT images, kprobe instruction
// slots, the real-mode trampoline), each found in the kernel's own
// bookkeeping. Code anywhere else is not the kernel's.
//
// Invariants: the guest controls every list, table and stack read here, so
// every walk is bounded (a cap and a cycle check), only canonical kernel
// pointers are followed, and what a walk cannot follow is returned as a
// vmerr.Problem instead of stopping the check. No constant of one kernel
// build is used: structure layouts come from the kernel's BTF, addresses
// from its kallsyms. Findings are sorted and their JSON form is stable.
package cfi

import (
	"fmt"
	"sort"

	"github.com/vmscope/vmscope/vmi"
)

// Kind names what a finding is.
type Kind string

// The kinds of findings.
const (
	// KindSyscallHook: a system-call table entry that is not the
	// __x64_sys_*/__ia32_sys_* function of its number.
	KindSyscallHook Kind = "syscall-hook"
	// KindIDTHook: an IDT gate whose handler is outside core kernel text.
	KindIDTHook Kind = "idt-hook"
	// KindHiddenModule: a module present in one view (struct module carved
	// from memory, module_kset, executable module-area mappings) and
	// missing from the modules list, or the other way round.
	KindHiddenModule Kind = "hidden-module"
	// KindExecPage: a supervisor page with NX clear outside every known
	// text region.
	KindExecPage Kind = "exec-page"
	// KindFtraceHook: an ftrace_ops whose handler is outside core kernel
	// text, or that may modify the instruction pointer (IPMODIFY).
	KindFtraceHook Kind = "ftrace-hook"
	// KindKprobe: a registered kprobe whose handler is outside core text.
	KindKprobe Kind = "kprobe-hook"
	// KindStackReturn: a return address on a kernel stack, preceded by a
	// call, that lands outside every known text region.
	KindStackReturn Kind = "stack-return"
	// KindTextModified: core kernel text that differs from the build's
	// image where no patch site of the kernel explains it.
	KindTextModified Kind = "text-modified"
)

// Finding is one integrity violation: what (Kind), where (Address, its
// nearest symbol and owner) and why (Evidence).
type Finding struct {
	Kind    Kind   `json:"kind"`
	Address uint64 `json:"address"`
	// Symbol is the nearest symbol at or below Address ("" when none) and
	// Offset the distance from it.
	Symbol string `json:"symbol"`
	Offset uint64 `json:"offset"`
	// Owner is "kernel", "module NAME" or "none" (Symbolize).
	Owner string `json:"owner"`
	// Where is the structure that holds the bad value ("sys_call_table[78]",
	// "IDT vector 14", "task 1234 stack at 0x…"), "" when the address is
	// the structure itself.
	Where string `json:"where,omitempty"`
	// Evidence says what was expected and what was found.
	Evidence string `json:"evidence"`
}

func (f Finding) String() string {
	sym := "?"
	if f.Symbol != "" {
		sym = fmt.Sprintf("%s+%#x", f.Symbol, f.Offset)
	}
	s := fmt.Sprintf("%s %#x %s (%s)", f.Kind, f.Address, sym, f.Owner)
	if f.Where != "" {
		s += " in " + f.Where
	}
	return s + ": " + f.Evidence
}

// newFinding fills the symbol and owner of a finding at va from m.
func (m *KernelMap) newFinding(kind Kind, va vmi.VA, where, evidence string) Finding {
	sym, off, owner := m.Symbolize(va)
	return Finding{Kind: kind, Address: uint64(va), Symbol: sym, Offset: off, Owner: owner, Where: where, Evidence: evidence}
}

// SortFindings orders findings by kind, address and where, so a report is
// deterministic.
func SortFindings(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Address != b.Address {
			return a.Address < b.Address
		}
		return a.Where < b.Where
	})
}
