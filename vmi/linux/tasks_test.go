package linux_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi/internal/guesttest"
)

func TestTasks(t *testing.T) {
	for _, mode := range guesttest.Modes {
		for _, file := range []string{guesttest.ELFDump, guesttest.KdumpDump} {
			t.Run(mode+"/"+file, func(t *testing.T) {
				truth := guesttest.Load(t, mode)
				_, k := open(t, mode, file)
				tasks, probs, err := k.Tasks(context.Background(), true)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range probs {
					t.Errorf("problem: %+v", p)
				}
				got := map[int]int{}
				for i, tk := range tasks {
					got[tk.PID] = i
				}
				if len(tasks) != len(truth.PS) {
					t.Errorf("%d processes, guest ps %d", len(tasks), len(truth.PS))
				}
				for _, w := range truth.PS {
					i, ok := got[w.PID]
					if !ok {
						t.Errorf("pid %d (%s) missing", w.PID, w.Comm)
						continue
					}
					g := tasks[i]
					args := strings.Join(g.Args, " ")
					if g.Kernel {
						args = "[" + g.Comm + "]"
					}
					// ps shows a kworker's workqueue after its comm
					comm, wargs := w.Comm, w.Args
					if g.Kernel && strings.HasPrefix(w.Comm, "kworker/") {
						comm, wargs = g.Comm, "["+g.Comm+"]"
						if !strings.HasPrefix(w.Comm, g.Comm) {
							t.Errorf("pid %d comm %q, guest %q", w.PID, g.Comm, w.Comm)
						}
					}
					if g.PPID != w.PPID || g.Comm != comm || args != wargs {
						t.Errorf("pid %d: ppid %d comm %q args %q; guest ppid %d comm %q args %q", w.PID, g.PPID, g.Comm, args, w.PPID, w.Comm, w.Args)
					}
					if st, ok := truth.Status[w.PID]; ok {
						if !strings.HasPrefix(st["State"], g.State+" ") {
							t.Errorf("pid %d state %s, guest %q", w.PID, g.State, st["State"])
						}
						if f := strings.Fields(st["Uid"]); len(f) > 0 && f[0] != itoa(int(g.UID)) {
							t.Errorf("pid %d uid %d, guest %v", w.PID, g.UID, f)
						}
						if tgid := st["Tgid"]; tgid != itoa(g.TGID) {
							t.Errorf("pid %d tgid %d, guest %s", w.PID, g.TGID, tgid)
						}
					}
					if wt, ok := truth.Tasks[w.PID]; ok {
						if len(wt) != len(g.Threads) {
							t.Errorf("pid %d: %d threads, guest %d", w.PID, len(g.Threads), len(wt))
							continue
						}
						have := map[int]string{}
						for _, th := range g.Threads {
							have[th.PID] = th.Comm
						}
						for _, th := range wt {
							if have[th.TID] != th.Comm {
								t.Errorf("pid %d thread %d comm %q, guest %q", w.PID, th.TID, have[th.TID], th.Comm)
							}
						}
					}
				}
				t.Logf("%d processes checked against ps, %d thread groups against /proc/PID/task", len(truth.PS), len(truth.Tasks))
			})
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
