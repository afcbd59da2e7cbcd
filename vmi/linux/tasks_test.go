package linux_test

import (
	"context"
	"fmt"
	"reflect"
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
				exact, raced := 0, 0
				names, probs, err := k.Workqueues(context.Background())
				if err != nil || len(probs) > 0 || len(names) < 5 {
					t.Fatalf("workqueues %v: %v %v", names, probs, err)
				}
				wq := workqueues(names)
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
					// busybox ps prints /proc/PID/stat's name cut to
					// its COMM_LEN (16 with the NUL), and "[name]" for
					// a process without argv.
					comm := psComm(g.Name)
					args := strings.Join(g.Args, " ")
					if g.Kernel {
						args = "[" + comm + "]"
					}
					if g.PPID == w.PPID && comm != w.Comm && args != w.Args && wq.sameWorker(g.Name, w.Comm) {
						// a kworker ran another workqueue's item between
						// the guest's ps and the dump
						raced++
						t.Logf("pid %d: %q in the dump, %q in ps: both workqueues exist", w.PID, g.Name, w.Comm)
						continue
					}
					if g.PPID != w.PPID || comm != w.Comm || args != w.Args {
						t.Errorf("pid %d: ppid %d name %q args %q; guest ppid %d comm %q args %q", w.PID, g.PPID, g.Name, args, w.PPID, w.Comm, w.Args)
					} else {
						exact++
					}
					if !g.Kernel && g.Name != g.Comm {
						t.Errorf("pid %d: name %q, comm %q", w.PID, g.Name, g.Comm)
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
				t.Logf("%d of %d processes equal to ps (pid, ppid, comm, args), %d kworkers ran another workqueue since, %d thread groups against /proc/PID/task", exact, len(truth.PS), raced, len(truth.Tasks))
			})
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func psComm(name string) string {
	if len(name) > 15 {
		return name[:15]
	}
	return name
}

type workqueues []string

// sameWorker says whether a kworker's name in the dump and in ps differ
// only in the workqueue that the worker last ran: same "kworker/..." comm,
// and each description (cut as ps cuts it) the name of a workqueue.
func (wq workqueues) sameWorker(dump, ps string) bool {
	if !strings.HasPrefix(dump, "kworker/") {
		return false
	}
	i, j := strings.IndexAny(dump, "+-"), strings.IndexAny(ps, "+-")
	if i < 0 || j < 0 || dump[:i] != ps[:j] {
		return false
	}
	isWQ := func(desc string, whole bool) bool {
		for _, n := range wq {
			if n == desc || (!whole && strings.HasPrefix(n, desc)) {
				return true
			}
		}
		return false
	}
	return isWQ(dump[i+1:], true) && isWQ(ps[j+1:], len(ps) < 15)
}

// TestConcurrentWalks runs walks from several goroutines on one kdump
// (whose decoded-page cache they share) and checks each equals a walk
// alone; run with -race.
func TestConcurrentWalks(t *testing.T) {
	_, k := open(t, guesttest.Modes[0], guesttest.KdumpDump)
	ctx := context.Background()
	want, _, err := k.Tasks(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			got, _, err := k.Tasks(ctx, true)
			if err == nil && !reflect.DeepEqual(got, want) {
				err = fmt.Errorf("concurrent walk differs: %d tasks, alone %d", len(got), len(want))
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
