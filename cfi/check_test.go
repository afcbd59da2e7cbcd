package cfi_test

import (
	"context"
	"encoding/binary"
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

// patched is memory with one byte changed.
type patched struct {
	vmi.Memory
	pa vmi.PA
	b  byte
}

func (p patched) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.Memory.ReadAt(b, off)
	if i := int64(p.pa) - off; i >= 0 && i < int64(n) {
		b[i] = p.b
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
	mem := patched{s, pa, orig[0] ^ 0xff}
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

// patchedU64 is memory with one quadword changed.
type patchedU64 struct {
	vmi.Memory
	pa vmi.PA
	v  uint64
}

func (p patchedU64) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.Memory.ReadAt(b, off)
	var q [8]byte
	binary.LittleEndian.PutUint64(q[:], p.v)
	for i := range q {
		if j := int64(p.pa) + int64(i) - off; j >= 0 && j < int64(n) {
			b[j] = q[i]
		}
	}
	return n, err
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
	mem := patchedU64{s, pa, uint64(other)}
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
