package linux_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/linux"
)

func TestModulesFilesMounts(t *testing.T) {
	ctx := context.Background()
	for _, mode := range guesttest.Modes {
		for _, file := range []string{guesttest.ELFDump, guesttest.KdumpDump} {
			t.Run(mode+"/"+file, func(t *testing.T) {
				truth := guesttest.Load(t, mode)
				_, k := open(t, mode, file)

				mods, probs, err := k.Modules(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range probs {
					t.Errorf("modules: %+v", p)
				}
				if len(mods) != len(truth.Modules) {
					t.Errorf("%d modules, guest %d", len(mods), len(truth.Modules))
				}
				for i := range min(len(mods), len(truth.Modules)) {
					g, w := mods[i], truth.Modules[i]
					if g.Name != w.Name || g.Base != w.Addr || g.Size != w.Size || g.State != w.State || g.Refs != w.Refs {
						t.Errorf("module %d: %+v, guest %+v", i, g, w)
					}
				}

				msyms, probs, err := k.ModuleSymbols(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range probs {
					t.Errorf("module symbols: %+v", p)
				}
				var gotSyms, wantSyms []string
				for _, y := range msyms {
					gotSyms = append(gotSyms, fmt.Sprintf("%016x %c %s\t[%s]", y.Addr, y.Type, y.Name, y.Module))
				}
				for _, y := range truth.Kallsyms {
					if y.Module != "" {
						wantSyms = append(wantSyms, fmt.Sprintf("%016x %c %s\t[%s]", y.Addr, y.Type, y.Name, y.Module))
					}
				}
				if len(wantSyms) == 0 || strings.Join(gotSyms, "\n") != strings.Join(wantSyms, "\n") {
					t.Errorf("module symbols:\n%s\nguest:\n%s", strings.Join(gotSyms, "\n"), strings.Join(wantSyms, "\n"))
				}

				tasks, _, err := k.Tasks(ctx, false)
				if err != nil {
					t.Fatal(err)
				}
				files, probs, err := k.Files(ctx, tasks, 0)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range probs {
					t.Errorf("files: %+v", p)
				}
				byPID := map[int][]string{}
				for _, f := range files {
					byPID[f.PID] = append(byPID[f.PID], fmt.Sprintf("%d -> %s", f.FD, f.Path))
				}
				n := 0
				for pid, fds := range truth.FDs {
					var want []string
					for _, f := range fds {
						want = append(want, fmt.Sprintf("%d -> %s", f.Num, f.Target))
					}
					sort.Strings(want)
					got := append([]string(nil), byPID[pid]...)
					sort.Strings(got)
					if strings.Join(got, "\n") != strings.Join(want, "\n") {
						t.Errorf("pid %d fds:\n%s\nguest:\n%s", pid, strings.Join(got, "\n"), strings.Join(want, "\n"))
					}
					n += len(want)
				}

				exactMounts := 0
				mounts, probs, err := k.Mounts(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range probs {
					t.Errorf("mounts: %+v", p)
				}
				if len(mounts) != len(truth.Mounts) {
					t.Errorf("%d mounts, guest %d", len(mounts), len(truth.Mounts))
				}
				for i := range min(len(mounts), len(truth.Mounts)) {
					g, w := mounts[i], truth.Mounts[i]
					if g.Source != w.Source || g.Target != w.Target || g.FSType != w.FSType || g.Options != w.Options {
						t.Errorf("mount %d: %+v, guest %+v", i, g, w)
					} else {
						exactMounts++
					}
				}
				t.Logf("%d modules, %d of %d module symbols in /proc/kallsyms order, %d fds of %d processes, %d of %d mounts equal to /proc/mounts (whole lines)", len(truth.Modules), len(gotSyms), len(wantSyms), n, len(truth.FDs), exactMounts, len(truth.Mounts))
			})
		}
	}
}

var _ = linux.MaxTasks
