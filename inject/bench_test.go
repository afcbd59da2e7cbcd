package inject

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/inject/injecttest"
	"github.com/vmscope/vmscope/vmi"
)

// BenchmarkInjectOps is bench/inject.sh: on the fixture guest with
// VMSCOPE_INJECT_SPAWN more processes (200 when unset), the time of
// stat, cat of 256 KiB and of 10 MiB, ls of a 1,000-entry directory and
// ps at each protection level, with the guest's pause time, the calls,
// and the step counts of the stepped calls (protect full); against the
// guest running the command itself with its output on the serial
// console (as an in-guest agent would), and against vmscope ls / cat of
// the disk image and mem ps of the live guest (VMSCOPE_BIN, the vmscope
// binary). VMSCOPE_INJECT_OPS limits the operations (stat,cat256k,
// cat10m,ls,ps); ps under full stops at VMSCOPE_INJECT_PS_FULL_BUDGET
// (10 minutes; every process costs tens of thousands of steps, hours
// with 200 more processes) and reports its rate, or is left out with
// VMSCOPE_INJECT_FULL_PS=0. Each row is printed as soon as it is
// measured, then the table; run it with -benchtime 1x.
func BenchmarkInjectOps(b *testing.B) {
	bin := os.Getenv("VMSCOPE_BIN")
	if bin == "" {
		b.Skip("VMSCOPE_BIN not set (bench/inject.sh sets it)")
	}
	l := injecttest.Boot(b, "")
	spawn := 200
	if v, err := strconv.Atoi(os.Getenv("VMSCOPE_INJECT_SPAWN")); err == nil {
		spawn = v
	}
	if spawn > 0 {
		if err := l.Send(fmt.Sprintf("spawn %d", spawn)); err != nil {
			b.Fatal(err)
		}
		if err := l.WaitFor(fmt.Sprintf("=== SPAWNED %d ===", spawn), time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	disk := diskView(b, l.Image)
	g, k := attach(b, l.Spec, filepath.Join(b.TempDir(), "guest.json"))
	ctx := context.Background()
	g.Resume(ctx)
	type row struct {
		name, protect string
		wall, paused  time.Duration
		calls, steps  int
		agent, image  time.Duration
		imgWhat, note string
	}
	var rows []row
	timeIt := func(f func() error) (time.Duration, error) {
		t0 := time.Now()
		err := f()
		return time.Since(t0), err
	}
	ops := []struct {
		key, name string
		op        Op
		agent     string
		image     []string
	}{
		{"stat", "stat 1 file", Op{Kind: "stat", Path: "/mnt/data/known/hello.txt"}, "stat /mnt/data/known/hello.txt", []string{"ls", "-l", l.Image, "/known"}},
		{"cat256k", "cat 256 KiB", Op{Kind: "cat", Path: "/mnt/data/mid.bin"}, "cat /mnt/data/mid.bin", []string{"cat", l.Image, "/mid.bin"}},
		{"cat10m", "cat 10 MiB", Op{Kind: "cat", Path: "/mnt/data/big.bin"}, "cat /mnt/data/big.bin", []string{"cat", l.Image, "/big.bin"}},
		{"ls", "ls 1000 entries", Op{Kind: "ls", Path: "/mnt/data/many"}, "ls -la /mnt/data/many", []string{"ls", l.Image, "/many"}},
		{"ps", "ps", Op{Kind: "ps"}, "ps -o pid,ppid,user,comm,args", []string{"mem", "ps", "--guest", l.Spec}},
	}
	only := os.Getenv("VMSCOPE_INJECT_OPS")
	for _, o := range ops {
		if only != "" && !strings.Contains(","+only+",", ","+o.key+",") {
			continue
		}
		agent, err := timeIt(func() error { _, err := l.Run(o.agent); return err })
		if err != nil {
			b.Fatal(err)
		}
		if o.image[0] == "mem" {
			g.Close(ctx) // mem ps attaches itself
		}
		image, err := timeIt(func() error {
			out, err := exec.Command(bin, o.image...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %v\n%s", o.image, err, out)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if o.image[0] == "mem" {
			g, k = attach(b, l.Spec, filepath.Join(b.TempDir(), "guest.json"))
			g.Resume(ctx)
		}
		for _, p := range []Protect{ProtectOff, ProtectBefore, ProtectFull} {
			if p == ProtectFull && o.key == "ps" && os.Getenv("VMSCOPE_INJECT_FULL_PS") == "0" {
				continue
			}
			if err := g.Pause(ctx); err != nil {
				b.Fatal(err)
			}
			cpus, _ := g.CPUs(ctx)
			var res *Result
			octx, cancel := ctx, context.CancelFunc(func() {})
			if p == ProtectFull && o.key == "ps" {
				octx, cancel = context.WithTimeout(ctx, psFullBudget())
			}
			wall, err := timeIt(func() error {
				var err error
				res, err = Run(octx, g, Controller(g), k, o.op, Options{Protect: p, CPUs: cpus, Disk: disk, MaxSteps: 20_000_000,
					Journal: filepath.Join(b.TempDir(), "j.json")})
				return err
			})
			cancel()
			g.Resume(ctx)
			note := ""
			switch {
			case err != nil && p == ProtectFull && o.key == "cat10m" && errors.Is(err, ErrResult):
				note = "refused: over the cap under full"
			case err != nil && p == ProtectFull && o.key == "ps" && errors.Is(err, context.DeadlineExceeded) && res.Restored:
				// cut at the budget: the processes read so far (two
				// openat each) give the rate
				opens := 0
				for _, c := range res.Calls {
					if c.Name == "openat" {
						opens++
					}
				}
				note = fmt.Sprintf("cut at the %v budget (restored): %d processes read, %.0f steps and %.1f s each",
					psFullBudget(), opens/2, float64(res.Steps)/float64(max(opens/2, 1)), wall.Seconds()/float64(max(opens/2, 1)))
			case err != nil:
				b.Fatalf("%s at %v: %v", o.name, p, err)
			}
			r := row{o.name, p.String(), wall, time.Duration(res.PausedMS) * time.Millisecond, len(res.Calls), res.Steps,
				agent, image, o.image[0], note}
			if p == ProtectFull {
				r.note = strings.TrimSpace(r.note + " " + stepSummary(res))
			}
			rows = append(rows, r)
			fmt.Printf("row: %-16s %-7s inject %8.2fs paused %8.2fs calls %5d steps %9d in-guest %7.2fs (%5.1fx) vmscope %s %6.2fs (%5.1fx) %s\n",
				r.name, r.protect, r.wall.Seconds(), r.paused.Seconds(), r.calls, r.steps, r.agent.Seconds(), r.wall.Seconds()/r.agent.Seconds(),
				r.imgWhat, r.image.Seconds(), r.wall.Seconds()/r.image.Seconds(), r.note)
		}
	}
	g.Close(ctx)
	fmt.Printf("\n%-16s %-7s %9s %9s %6s %9s %9s %8s %8s %7s %8s\n", "operation", "protect", "inject", "paused", "calls", "steps", "in-guest", "ratio", "vmscope", "(what)", "ratio")
	for _, r := range rows {
		fmt.Printf("%-16s %-7s %8.2fs %8.2fs %6d %9d %8.2fs %7.1fx %7.2fs %7s %7.1fx\n", r.name, r.protect, r.wall.Seconds(), r.paused.Seconds(), r.calls, r.steps,
			r.agent.Seconds(), r.wall.Seconds()/r.agent.Seconds(), r.image.Seconds(), r.imgWhat, r.wall.Seconds()/r.image.Seconds())
	}
	for _, r := range rows {
		if r.note != "" {
			fmt.Printf("%s, %s: %s\n", r.name, r.protect, r.note)
		}
	}
	fmt.Println("inject: wall time of the whole operation (integrity checks, dummy vetting, calls, restore, cross-view); paused: guest stopped while the dummy is held;")
	fmt.Println("in-guest: the guest runs the command itself, its output over the serial console; vmscope: ls/cat of the disk image, mem ps of the live guest;")
	fmt.Println("ratio: inject time / that time; full: per call name, the calls, their steps (total and largest), rep instructions run to their end, hand-offs.")
}

// psFullBudget bounds ps under full (VMSCOPE_INJECT_PS_FULL_BUDGET, 10
// minutes by default): stepping every /proc read of every process takes
// hours with hundreds of processes, so the row reports the rate.
func psFullBudget() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("VMSCOPE_INJECT_PS_FULL_BUDGET")); err == nil && d > 0 {
		return d
	}
	return 10 * time.Minute
}

// stepSummary is, per call name, the number of calls, their steps (total
// and the largest), rep runs and hand-offs, and the buffer size.
func stepSummary(r *Result) string {
	type agg struct{ n, steps, maxSteps, reps, blocked int }
	by := map[string]*agg{}
	for _, c := range r.Calls {
		a := by[c.Name]
		if a == nil {
			a = &agg{}
			by[c.Name] = a
		}
		a.n++
		a.steps += c.Steps
		a.maxSteps = max(a.maxSteps, c.Steps)
		a.reps += c.RepRuns
		if c.Blocked {
			a.blocked++
		}
	}
	var names []string
	for n := range by {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		a := by[n]
		parts = append(parts, fmt.Sprintf("%s %dx %d steps (max %d, %d rep runs, %d hand-offs)", n, a.n, a.steps, a.maxSteps, a.reps, a.blocked))
	}
	return fmt.Sprintf("[buffer %d B] %s", r.BufferBytes, strings.Join(parts, "; "))
}

// timedTracer times the Step and Regs calls a Tracer serves.
type timedTracer struct {
	vmi.Tracer
	steps, regs     int
	stepT, regsT    time.Duration
	sameRIP, lastIP uint64
}

func (t *timedTracer) Step(ctx context.Context, cpu int) (vmi.CPU, error) {
	t0 := time.Now()
	r, err := t.Tracer.Step(ctx, cpu)
	t.stepT += time.Since(t0)
	t.steps++
	if r.RIP == t.lastIP {
		t.sameRIP++
	}
	t.lastIP = r.RIP
	return r, err
}

func (t *timedTracer) Regs(ctx context.Context, cpu int) (vmi.CPU, error) {
	t0 := time.Now()
	r, err := t.Tracer.Regs(ctx, cpu)
	t.regsT += time.Since(t0)
	t.regs++
	return r, err
}

// BenchmarkStepCost is where a stepped call's time goes (bench/inject.sh
// with VMSCOPE_INJECT_STEPCOST=1): a protect-full stat with every Step
// timed, against the register read alone (one 'g' exchange with the
// stub, which each Step also makes after its vCont;s) on the paused
// guest; it reports ms per step, ms per register read, the steps that
// left RIP unchanged (iterations of a rep string instruction, which TCG
// stops after one by one), and the rep instructions run to their end.
func BenchmarkStepCost(b *testing.B) {
	if os.Getenv("VMSCOPE_INJECT_STEPCOST") == "" {
		b.Skip("VMSCOPE_INJECT_STEPCOST not set (bench/inject.sh sets it)")
	}
	l := injecttest.Boot(b, "")
	g, k := attach(b, l.Spec, filepath.Join(b.TempDir(), "guest.json"))
	defer g.Close(context.Background())
	ctx := context.Background()
	// the register read alone, on the paused guest
	regsMS := func() float64 {
		t0 := time.Now()
		for range 500 {
			if _, err := g.Regs(ctx, 0); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0).Seconds() * 1e3 / 500
	}
	tt := &timedTracer{Tracer: g}
	cpus, _ := g.CPUs(ctx)
	b.ResetTimer()
	for range b.N {
		res, err := Run(ctx, tt, Controller(g), k, Op{Kind: "stat", Path: "/mnt/data/known/hello.txt"},
			Options{Protect: ProtectFull, noBefore: true, CPUs: cpus, Journal: filepath.Join(b.TempDir(), "j.json")})
		if err != nil {
			b.Fatal(err)
		}
		reps := 0
		for _, c := range res.Calls {
			reps += c.RepRuns
		}
		regs := regsMS()
		fmt.Printf("stepped stat: %d steps, %.3f ms per Step (vCont;s, its stop, then 'g'), %.3f ms per 'g' alone (500 reads after the run); %d steps left RIP unchanged; %d rep runs; %s\n",
			tt.steps, tt.stepT.Seconds()*1e3/float64(tt.steps), regs, tt.sameRIP, reps, stepSummary(res))
		b.ReportMetric(tt.stepT.Seconds()*1e3/float64(tt.steps), "ms/step")
		b.ReportMetric(regs, "ms/regs")
	}
}
