package linux_test

import (
	"context"
	"testing"

	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// openDump opens a dump of the guest fixture, closed when the test ends.
func openDump(t testing.TB, mode, file string) *snapshot.Snapshot {
	t.Helper()
	s, err := snapshot.Open(guesttest.Path(t, mode, file))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func open(t testing.TB, mode, file string) (*snapshot.Snapshot, *linux.Kernel) {
	t.Helper()
	s := openDump(t, mode, file)
	k, err := linux.Discover(context.Background(), s, linux.WithCPUs(s.CPUs()))
	if err != nil {
		t.Fatal(err)
	}
	return s, k
}

func TestDiscoverKallsyms(t *testing.T) {
	for _, mode := range guesttest.Modes {
		for _, file := range []string{guesttest.ELFDump, guesttest.KdumpDump} {
			t.Run(mode+"/"+file, func(t *testing.T) {
				truth := guesttest.Load(t, mode)
				_, k := open(t, mode, file)
				t.Logf("cr3 %#x from %s, text %#x pa %#x slide %#x phys_base %#x page_offset %#x, %d symbols, read %d bytes",
					uint64(k.CR3), k.CR3From, uint64(k.Text), uint64(k.TextPA), k.Slide, k.PhysBase, uint64(k.PageOffset), len(k.Symbols.List), k.BytesRead())
				if k.Version != truth.Version {
					t.Errorf("version %q, guest %q", k.Version, truth.Version)
				}
				var want []guesttest.Sym
				for _, s := range truth.Kallsyms {
					if s.Module == "" {
						want = append(want, s)
					}
				}
				got := k.Symbols.List
				if len(got) != len(want) {
					t.Errorf("%d symbols, guest %d", len(got), len(want))
				}
				bad := 0
				for i := range min(len(got), len(want)) {
					g, w := got[i], want[i]
					if uint64(g.Addr) != w.Addr || g.Name != w.Name || g.Type != w.Type {
						if bad++; bad < 10 {
							t.Errorf("symbol %d: %#x %c %s, guest %#x %c %s", i, uint64(g.Addr), g.Type, g.Name, w.Addr, w.Type, w.Name)
						}
					}
				}
				if bad > 0 {
					t.Errorf("%d symbols differ", bad)
				}
				if a, _ := truth.Symbol("_text"); uint64(k.Text) != a {
					t.Errorf("_text %#x, guest %#x", uint64(k.Text), a)
				}
			})
		}
	}
}
