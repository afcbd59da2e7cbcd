package cfi_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// TestCheckGuestClean runs every check on the guest fixture's dumps (no
// rootkit; the KASLR, nokaslr and 5-level boots): zero findings, zero
// problems, and every check ran.
func TestCheckGuestClean(t *testing.T) {
	for _, mode := range []string{"kaslr", "nokaslr", "la57"} {
		t.Run(mode, func(t *testing.T) {
			s, k := openKernel(t, fixture.GuestPath(t, mode, "guest.elf"))
			img, err := linux.ReadVmlinux(fixture.GuestPath(t, "vmlinuz"))
			if err != nil {
				t.Fatal(err)
			}
			rep, err := cfi.Check(context.Background(), k, cfi.WithCPUs(s.CPUs()), cfi.WithKernelImage(img))
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range rep.Checks {
				t.Logf("%s: %d checked, %d findings %s", st.Name, st.Checked, st.Findings, st.Skipped)
				if st.Skipped != "" || st.Checked == 0 && st.Name != "kprobes" {
					t.Errorf("check %s did not run: %q", st.Name, st.Skipped)
				}
			}
			for _, f := range rep.Findings {
				t.Errorf("finding: %v", f)
			}
			for _, p := range rep.Problems {
				t.Errorf("problem: %v", p)
			}
		})
	}
}

// patched is memory with the bytes at pa replaced by b.
type patched struct {
	vmi.Memory
	pa vmi.PA
	b  []byte
}

func (p patched) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.Memory.ReadAt(b, off)
	for i, c := range p.b {
		if j := int64(p.pa) + int64(i) - off; j >= 0 && j < int64(n) {
			b[j] = c
		}
	}
	return n, err
}

// TestCheckTextModified changes one byte of core text (inside
// do_sys_openat2, on no patch site) in the guest fixture's dump: the text
// check against the distribution's vmlinuz reports exactly that byte,
// and nothing else changes.
func TestCheckTextModified(t *testing.T) {
	img, err := linux.ReadVmlinux(fixture.GuestPath(t, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	s, k := openKernel(t, fixture.GuestPath(t, "kaslr", "guest.elf"))
	fn, ok := k.Symbols.Addr("do_sys_openat2")
	if !ok {
		t.Fatal("no do_sys_openat2")
	}
	va := fn + 0x30
	pa, _, err := k.AS.Translate(va)
	if err != nil {
		t.Fatal(err)
	}
	var orig [1]byte
	if _, err := s.ReadAt(orig[:], int64(pa)); err != nil {
		t.Fatal(err)
	}
	mem := patched{s, pa, []byte{orig[0] ^ 0xff}}
	k2, err := linux.Discover(context.Background(), mem, linux.WithCPUs(s.CPUs()))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := cfi.Check(context.Background(), k2, cfi.WithCPUs(s.CPUs()), cfi.WithKernelImage(img))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 1 {
		t.Fatalf("%d findings, want 1: %v", len(rep.Findings), rep.Findings)
	}
	f := rep.Findings[0]
	t.Logf("%v", f)
	if f.Kind != cfi.KindTextModified || f.Address != uint64(va) || f.Symbol != "do_sys_openat2" || f.Offset != 0x30 || f.Owner != cfi.OwnerKernel {
		t.Errorf("finding %+v, want text-modified at do_sys_openat2+0x30", f)
	}
}

// TestCheckSyscallSwapped points sys_call_table[__NR_getdents64] (217) at
// another system call of core text, __x64_sys_getdents, in the guest
// fixture's dump: the entry is reported, by the kernel's syscall metadata
// and by the distribution image's table, and nothing else.
func TestCheckSyscallSwapped(t *testing.T) {
	img, err := linux.ReadVmlinux(fixture.GuestPath(t, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	s, k := openKernel(t, fixture.GuestPath(t, "kaslr", "guest.elf"))
	table, _ := k.Symbols.Addr("sys_call_table")
	other, ok := k.Symbols.Addr("__x64_sys_getdents")
	if table == 0 || !ok {
		t.Fatal("no sys_call_table or __x64_sys_getdents")
	}
	pa, _, err := k.AS.Translate(table + 217*8)
	if err != nil {
		t.Fatal(err)
	}
	mem := patched{s, pa, binary.LittleEndian.AppendUint64(nil, uint64(other))}
	k2, err := linux.Discover(context.Background(), mem, linux.WithCPUs(s.CPUs()))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := cfi.Check(context.Background(), k2, cfi.WithCPUs(s.CPUs()), cfi.WithKernelImage(img))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 1 {
		t.Fatalf("%d findings, want 1: %v", len(rep.Findings), rep.Findings)
	}
	f := rep.Findings[0]
	t.Logf("%v", f)
	if f.Kind != cfi.KindSyscallHook || f.Address != uint64(other) || f.Where != "sys_call_table[217]" ||
		!strings.Contains(f.Evidence, "syscall metadata names number 217 sys_getdents64") ||
		!strings.Contains(f.Evidence, "the kernel image has __x64_sys_getdents64") {
		t.Errorf("finding %+v", f)
	}
}

// TestCheckKallsymsModified changes one bit of one kallsyms_offsets entry
// (a text symbol in the middle of the table, moved by one byte, its
// neighbours further apart) in the guest fixture's dump, as a rootkit
// moving a symbol would: the kallsyms check reports exactly that byte, in
// kallsyms_offsets, and nothing else is found. The entry is located
// independently of the check: the only place in .rodata whose eight
// consecutive s32 differences are the recovered symbols' address gaps.
func TestCheckKallsymsModified(t *testing.T) {
	img, err := linux.ReadVmlinux(fixture.GuestPath(t, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	s, k := openKernel(t, fixture.GuestPath(t, "kaslr", "guest.elf"))
	syms := k.Symbols.List
	i := len(syms) / 2
	for ; i+9 < len(syms); i++ {
		y := syms[i]
		if y.Type == 't' && !strings.HasPrefix(y.Name, "__") && syms[i-1].Addr+1 < y.Addr && y.Addr+1 < syms[i+1].Addr {
			break
		}
	}
	lo, ok1 := k.Symbols.Addr("__start_rodata")
	hi, ok2 := k.Symbols.Addr("__end_rodata")
	if !ok1 || !ok2 || hi <= lo || hi-lo > 64<<20 {
		t.Fatalf("rodata [%#x,%#x)", uint64(lo), uint64(hi))
	}
	ro := make([]byte, hi-lo)
	if _, err := k.AS.ReadVirt(ro, lo); err != nil {
		t.Fatal(err)
	}
	var at []vmi.VA
	for j := 0; j+4*9 <= len(ro); j += 4 {
		ok := true
		for m := 0; m < 8 && ok; m++ {
			d := int64(int32(binary.LittleEndian.Uint32(ro[j+4*m:]))) - int64(int32(binary.LittleEndian.Uint32(ro[j+4*m+4:])))
			gap := int64(syms[i+m+1].Addr - syms[i+m].Addr)
			ok = d == gap || d == -gap
		}
		if ok {
			at = append(at, lo+vmi.VA(j))
		}
	}
	if len(at) != 1 {
		t.Fatalf("kallsyms_offsets[%d] (%s) found at %#x", i, syms[i].Name, at)
	}
	va := at[0]
	pa, _, err := k.AS.Translate(va)
	if err != nil {
		t.Fatal(err)
	}
	var orig [1]byte
	if _, err := s.ReadAt(orig[:], int64(pa)); err != nil {
		t.Fatal(err)
	}
	k2, err := linux.Discover(context.Background(), patched{s, pa, []byte{orig[0] ^ 1}}, linux.WithCPUs(s.CPUs()))
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := k2.Symbols.Addr(syms[i].Name); a == syms[i].Addr {
		t.Fatalf("%s still at %#x: the flipped byte is not its kallsyms_offsets entry", syms[i].Name, uint64(a))
	}
	rep, err := cfi.Check(context.Background(), k2, cfi.WithCPUs(s.CPUs()), cfi.WithKernelImage(img))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 1 {
		t.Fatalf("%d findings, want 1: %v", len(rep.Findings), rep.Findings)
	}
	f := rep.Findings[0]
	t.Logf("%s moved by the flip; %v", syms[i].Name, f)
	if want := fmt.Sprintf("kallsyms_offsets+%#x", 4*i); f.Kind != cfi.KindKallsymsModified || f.Address != uint64(va) || f.Where != want {
		t.Errorf("finding %+v, want %s at %#x in %s", f, cfi.KindKallsymsModified, uint64(va), want)
	}
}
