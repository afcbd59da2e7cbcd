package linux_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// TestNoCPUState discovers the kernel as from a raw or LiME dump: no CPU
// state, so the page tables come from the PML4 scan; and from a LiME file
// the snapshot package writes.
func TestNoCPUState(t *testing.T) {
	ctx := context.Background()
	mode := guesttest.KASLR
	truth := guesttest.Load(t, mode)
	s := openDump(t, mode, guesttest.ELFDump)
	lime := filepath.Join(t.TempDir(), "guest.lime")
	f, err := os.Create(lime)
	if err != nil {
		t.Fatal(err)
	}
	if err := snapshot.WriteLiME(f, s); err != nil {
		t.Fatal(err)
	}
	f.Close()
	l, err := snapshot.Open(lime)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for name, m := range map[string]*snapshot.Snapshot{"elf without cpus": s, "lime": l} {
		k, err := linux.Discover(ctx, m)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if k.CR3From != "scan" || k.Version != truth.Version || len(k.Symbols.List) < 1000 {
			t.Errorf("%s: from %s, version %q, %d symbols", name, k.CR3From, k.Version, len(k.Symbols.List))
		}
		tasks, probs, err := k.Tasks(ctx, false)
		if err != nil || len(tasks) != len(truth.PS) {
			t.Errorf("%s: %d tasks (%v), guest %d; problems: %v", name, len(tasks), err, len(truth.PS), probs)
		}
		t.Logf("%s: page tables %#x from %s, discovery read %d bytes", name, uint64(k.AS.Root), k.CR3From, k.BytesRead())
	}
}

// TestSymbolFiles gives the guest's /proc/kallsyms and a System.map made
// from it with the slide taken off.
func TestSymbolFiles(t *testing.T) {
	ctx := context.Background()
	mode := guesttest.KASLR
	truth := guesttest.Load(t, mode)
	s := openDump(t, mode, guesttest.ELFDump)
	text, _ := truth.Symbol("_text")
	slide := text - 0xffffffff81000000
	var ks, sm strings.Builder
	for _, y := range truth.Kallsyms {
		if y.Module != "" {
			continue
		}
		fmt.Fprintf(&ks, "%016x %c %s\n", y.Addr, y.Type, y.Name)
		a := y.Addr
		if y.Type != 'A' && y.Type != 'a' {
			a -= slide
		}
		fmt.Fprintf(&sm, "%016x %c %s\n", a, y.Type, y.Name)
	}
	for name, opt := range map[string]linux.Option{
		"kallsyms file": linux.WithKallsyms(strings.NewReader(ks.String())),
		"System.map":    linux.WithSystemMap(strings.NewReader(sm.String())),
	} {
		k, err := linux.Discover(ctx, s, linux.WithCPUs(s.CPUs()), opt)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if k.SymbolsSrc != name {
			t.Errorf("symbols from %q, want %q", k.SymbolsSrc, name)
		}
		if a, _ := k.Symbols.Addr("init_task"); uint64(a) != mustSym(t, truth, "init_task") {
			t.Errorf("%s: init_task %#x", name, uint64(a))
		}
		mods, _, err := k.Modules(ctx)
		if err != nil || len(mods) != len(truth.Modules) {
			t.Errorf("%s: %d modules (%v)", name, len(mods), err)
		}
	}
}

func mustSym(t *testing.T, tr *guesttest.Truth, name string) uint64 {
	a, ok := tr.Symbol(name)
	if !ok {
		t.Fatalf("guest has no %s", name)
	}
	return a
}
