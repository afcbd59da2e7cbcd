package cfi_test

import (
	"context"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// openKernel opens a dump and discovers its kernel; closed when the test ends.
func openKernel(t testing.TB, path string) (*snapshot.Snapshot, *linux.Kernel) {
	t.Helper()
	s, err := snapshot.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	k, err := linux.Discover(context.Background(), s, linux.WithCPUs(s.CPUs()))
	if err != nil {
		t.Fatal(err)
	}
	return s, k
}

// TestKernelMapGuest checks the map of the fixture guest against its own
// /proc/kallsyms and /proc/modules: every module's text starts at the base
// /proc/modules shows, every text symbol of the kernel and of each module
// symbolizes to itself (or an alias at the same address) with the right
// owner, and data symbols are in no code region.
func TestKernelMapGuest(t *testing.T) {
	truth := loadConsole(t, fixture.GuestPath(t, "kaslr", "console.log"))
	_, k := openKernel(t, fixture.GuestPath(t, "kaslr", "guest.elf"))
	m, err := cfi.NewKernelMap(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range m.Problems {
		t.Errorf("problem: %v", p)
	}
	if len(m.Modules) != len(truth.modules) {
		t.Errorf("%d modules, /proc/modules has %d", len(m.Modules), len(truth.modules))
	}
	for _, tm := range truth.modules {
		found := false
		for _, mt := range m.Modules {
			if mt.Name == tm.name {
				found = true
				if uint64(mt.Text.Start) != tm.addr {
					t.Errorf("module %s text at %#x, /proc/modules %#x", tm.name, uint64(mt.Text.Start), tm.addr)
				}
			}
		}
		if !found {
			t.Errorf("module %s missing", tm.name)
		}
	}
	byAddr := map[uint64][]string{}
	for _, s := range truth.kallsyms {
		byAddr[s.addr] = append(byAddr[s.addr], s.name)
	}
	var kernelText, modText, data int
	for _, s := range truth.kallsyms {
		va := vmi.VA(s.addr)
		sym, off, owner := m.Symbolize(va)
		switch {
		case s.module != "" && (s.typ == 't' || s.typ == 'T'):
			modText++
			if owner != "module "+s.module || off != 0 || !contains(byAddr[s.addr], sym) {
				t.Errorf("module symbol %s [%s] at %#x: Symbolize = %s+%#x %q", s.name, s.module, s.addr, sym, off, owner)
			}
		case s.module == "" && (s.typ == 't' || s.typ == 'T') && va >= m.Core.Start && va < m.Core.End:
			kernelText++
			if owner != cfi.OwnerKernel || off != 0 || !contains(byAddr[s.addr], sym) {
				t.Errorf("kernel symbol %s at %#x: Symbolize = %s+%#x %q", s.name, s.addr, sym, off, owner)
			}
		case s.module == "" && (s.typ == 'd' || s.typ == 'D' || s.typ == 'b' || s.typ == 'B'):
			data++
			if owner != cfi.OwnerNone {
				t.Errorf("data symbol %s at %#x: owner %q", s.name, s.addr, owner)
			}
		}
	}
	t.Logf("%d regions, %d kernel text, %d module text, %d data symbols checked", len(m.Regions), kernelText, modText, data)
	if kernelText < 10000 || modText == 0 || data < 1000 {
		t.Errorf("too few symbols checked")
	}
	for _, r := range m.Regions {
		t.Logf("region %#x-%#x %s %s %s", uint64(r.Start), uint64(r.End), r.Kind, r.Owner, r.Name)
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s || strings.TrimSuffix(x, ".cold") == s {
			return true
		}
	}
	return false
}
