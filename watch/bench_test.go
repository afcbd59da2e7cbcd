package watch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/watch/watchtest"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchDir is where the guest's loop works (testdata/watch/init.sh).
const benchDir = "/mnt/data/bench"

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// printWhy prints the stops of a run by where they came from, most first
// (the first 12).
func printWhy(why map[string]int) {
	keys := make([]string, 0, len(why))
	for k := range why {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return why[keys[i]] > why[keys[j]] || why[keys[i]] == why[keys[j]] && keys[i] < keys[j]
	})
	for i, k := range keys {
		if i == 12 {
			fmt.Printf("\t... %d more kinds\n", len(keys)-i)
			break
		}
		fmt.Printf("\t%6d %s\n", why[k], k)
	}
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkWatchOverhead (bench/watch.sh) times the guest's file loop
// (create N files of 4 KiB, read, rename, delete them; N =
// $VMSCOPE_WATCH_FILES, 5000) on the host's clock, from the command to
// the guest's DONE line, and by the CPU time QEMU spent meanwhile, with
// the methods of $VMSCOPE_WATCH_METHODS interleaved, $VMSCOPE_WATCH_RUNS
// runs each (5), and prints the medians, the slowdowns and where each
// stop came from. Methods: none; target (10 watched files the loop never
// touches); check (one write watch on the loop directory's i_uid, never
// written on a page touched on every operation: QEMU's TLB check alone);
// cold (90 write watches on empty_zero_page: the number of watchpoints
// alone); inode, dentry, writes (target's watches of the inodes only, of
// the dentries only, all for writes only, with no Watcher); operation
// (breakpoints on the VFS functions, filtered on the file). Then the loop
// while a watched file is read at $VMSCOPE_WATCH_HZ (1, 10, 100) times a
// second, without and with target-based watching.
func BenchmarkWatchOverhead(b *testing.B) {
	n, runs := envInt("VMSCOPE_WATCH_FILES", 5000), envInt("VMSCOPE_WATCH_RUNS", 5)
	l := watchtest.Boot(b, "")
	g, w := openKernel(b, l)
	ctx := context.Background()
	var untouched []string
	for i := 100; i < 110; i++ {
		untouched = append(untouched, fmt.Sprintf("/mnt/data/bulk/f%03d", i))
	}
	const touched = "/mnt/data/watched/notes.txt"
	r, err := NewResolver(ctx, w)
	if err != nil {
		b.Fatal(err)
	}
	var targets []*Target
	for _, p := range untouched {
		res, err := r.Resolve(ctx, p)
		if err != nil || res.Target == nil {
			b.Fatalf("%s: %+v %v (the fixture warms it)", p, res, err)
		}
		targets = append(targets, res.Target)
	}
	if err := g.Resume(ctx); err != nil {
		b.Fatal(err)
	}
	seq := 0
	// loop runs the guest's loop once: its wall time on the host's clock
	// and the CPU time QEMU spent meanwhile (robust to the load of other
	// processes on a shared host)
	loop := func(hz int) (time.Duration, time.Duration) {
		seq++
		c0, err := l.CPUTime()
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := l.Send(fmt.Sprintf("bench %d %d %d", n, hz, seq)); err != nil {
			b.Fatal(err)
		}
		if err := l.WaitFor(fmt.Sprintf("=== BENCH DONE %d ===", seq), 30*time.Minute); err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		c1, err := l.CPUTime()
		if err != nil {
			b.Fatal(err)
		}
		return d, c1 - c0
	}
	type result struct {
		d     time.Duration
		cpu   time.Duration // QEMU's CPU time
		stops int
		held  time.Duration  // the guest held stopped by the watcher (host clock)
		why   map[string]int // stops by outcome, function, watch and task
	}
	measure := func(mode string, hz int) result {
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		armed := make(chan struct{})
		done := make(chan int, 1)
		var held time.Duration
		var mu sync.Mutex
		why := map[string]int{}
		switch mode {
		case "none":
			d, c := loop(hz)
			return result{d: d, cpu: c}
		case "target":
			paths := untouched
			if hz > 0 {
				paths = append(append([]string(nil), untouched...), touched)
			}
			x, err := New(rctx, g, w, paths, Options{Queue: 1 << 16, Armed: func(int) { close(armed) },
				OnStop: func(si StopInfo) {
					mu.Lock()
					why[fmt.Sprintf("%s at %s on %v by %s[%d]", si.Outcome, si.Function, si.Owners, si.Task.Comm, si.Task.PID)]++
					if os.Getenv("VMSCOPE_WATCH_STOPS") != "" {
						fmt.Printf("STOP %s addr=%#x traps=%v rip=%s rdi=%#x rcx=%#x rsi=%#x rax=%#x\n", si.Outcome, uint64(si.Addr), si.Traps, si.Function, si.Regs.RDI, si.Regs.RCX, si.Regs.RSI, si.Regs.RAX)
					}
					mu.Unlock()
				}})
			if err != nil {
				b.Fatal(err)
			}
			go func() {
				go func() {
					for range x.Events() {
					}
				}()
				if err := x.Run(rctx); err != nil {
					b.Error(err)
				}
				held = x.Stats().Held
				done <- x.Stats().Stops
			}()
		case "inode", "dentry", "writes":
			// target-based watching's traps of the 10 files, the inode's
			// or the dentry's only, with no Watcher (a stop just resumes):
			// which objects' pages cost QEMU the TLB check
			xw, err := New(rctx, g, w, untouched, Options{})
			if err != nil {
				b.Fatal(err)
			}
			var trs []vmi.Trap
			for _, t := range xw.Targets() {
				for tr, f := range xw.trapsOf(t) {
					switch {
					case mode == "writes":
						// all the traps, for writes only
						tr.Access = vmi.Write
						trs = append(trs, tr)
					case strings.HasPrefix(f, "d_") == (mode == "dentry"):
						trs = append(trs, tr)
					}
				}
			}
			go holdTraps(rctx, b, g, trs, armed, done, func(st vmi.Stop) {
				mu.Lock()
				why[fmt.Sprintf("stop on %#x", uint64(st.Addr))]++
				mu.Unlock()
			})
		case "cold":
			// as many write watches as target-based arms for 10 files
			// (9 each), on the kernel's empty_zero_page through its
			// kernel address, which nothing writes and hardly anything
			// reads there: what the number of watchpoints costs QEMU
			// whatever the pages
			zp, ok := w.K.Symbols.Addr("empty_zero_page")
			if !ok {
				b.Fatal("no empty_zero_page symbol")
			}
			var trs []vmi.Trap
			for i := range envInt("VMSCOPE_WATCH_COLD", 90) {
				trs = append(trs, vmi.Watchpoint(zp+vmi.VA(16*(i%256)), 8, vmi.Write))
			}
			go holdTraps(rctx, b, g, trs, armed, done, func(st vmi.Stop) {
				b.Errorf("a stop on empty_zero_page, which nothing writes: %+v", st)
			})
		case "check":
			// the cost of QEMU's TLB watchpoint check alone: one write
			// watch on the i_uid of the loop's own directory, which the
			// loop never writes but whose page (the directory's inode) it
			// touches on every operation (lookup, i_rwsem, i_size, times)
			dir, err := r.Resolve(ctx, benchDir)
			if err != nil || dir.Target == nil {
				b.Fatalf("%s: %+v %v (the first loop makes it)", benchDir, dir, err)
			}
			sym := NewSymbolizer(w.K.Symbols)
			go holdTraps(rctx, b, g, []vmi.Trap{vmi.Watchpoint(dir.Target.Inode+vmi.VA(w.iUID), 4, vmi.Write)}, armed, done, func(st vmi.Stop) {
				if regs, err := g.Regs(rctx, max(st.CPU, 0)); err == nil {
					mu.Lock()
					why[fmt.Sprintf("stop at %s", sym.Name(vmi.VA(regs.RIP)))]++
					mu.Unlock()
				}
			})
		case "operation":
			go func() {
				st, err := RunOperation(rctx, g, w, targets, func() { close(armed) })
				if err != nil {
					b.Error(err)
				}
				done <- st.Stops
			}()
		}
		<-armed
		d, c := loop(hz)
		cancel()
		n := <-done
		mu.Lock()
		defer mu.Unlock()
		return result{d: d, cpu: c, stops: n, why: why, held: held}
	}
	b.ResetTimer()
	times := map[string][]time.Duration{}
	cpus := map[string][]time.Duration{}
	stops := map[string]int{}
	methods := strings.Split(envString("VMSCOPE_WATCH_METHODS", "none,target,check,cold,operation"), ",")
	for i := 0; i < runs; i++ {
		for _, m := range methods {
			res := measure(m, 0)
			times[m] = append(times[m], res.d)
			cpus[m] = append(cpus[m], res.cpu)
			stops[m] += res.stops
			fmt.Printf("run %d %-9s %v wall, %v QEMU CPU (%d stops, guest held %v)\n", i+1, m, res.d.Round(time.Millisecond),
				res.cpu.Round(10*time.Millisecond), res.stops, res.held.Round(time.Millisecond))
			printWhy(res.why)
		}
	}
	fmt.Printf("files=%d runs=%d medians:\n", n, runs)
	none, noneCPU := median(times["none"]), median(cpus["none"])
	for _, m := range methods {
		d, c := median(times[m]), median(cpus[m])
		slow := float64(d-none) / float64(none) * 100
		slowCPU := float64(c-noneCPU) / float64(noneCPU) * 100
		fmt.Printf("  %-9s %v wall (%+.2f%%), %v QEMU CPU (%+.2f%%), %d stops per run\n", m, d.Round(time.Millisecond), slow,
			c.Round(10*time.Millisecond), slowCPU, stops[m]/runs)
		if m != "none" {
			b.ReportMetric(slow, m+"_slowdown_%")
			b.ReportMetric(slowCPU, m+"_cpu_slowdown_%")
		}
	}
	for _, f := range strings.Split(envString("VMSCOPE_WATCH_HZ", "1,10,100"), ",") {
		hz, err := strconv.Atoi(f)
		if err != nil || hz <= 0 {
			continue
		}
		a, t := measure("none", hz), measure("target", hz)
		fmt.Printf("touch %3d Hz: none %v wall %v CPU, target-based %v wall (%+.2f%%) %v CPU (%+.2f%%), %d stops, %.1f stops/s, guest held %v\n", hz,
			a.d.Round(time.Millisecond), a.cpu.Round(10*time.Millisecond), t.d.Round(time.Millisecond), float64(t.d-a.d)/float64(a.d)*100,
			t.cpu.Round(10*time.Millisecond), float64(t.cpu-a.cpu)/float64(a.cpu)*100,
			t.stops, float64(t.stops)/t.d.Seconds(), t.held.Round(time.Millisecond))
		printWhy(t.why)
	}
}

// holdTraps arms trs on the paused guest, closes armed, resumes it, and
// resumes it after each trap stop (a watchpoint stops after its access)
// until ctx ends; then it removes them, leaves the guest running and
// sends the number of stops on done.
func holdTraps(ctx context.Context, b *testing.B, g interface {
	vmi.Tracer
}, trs []vmi.Trap, armed chan struct{}, done chan int, seen func(vmi.Stop)) {
	n := 0
	defer func() { done <- n }()
	if err := g.Pause(ctx); err != nil {
		b.Error(err)
		return
	}
	for _, tr := range trs {
		if err := g.Insert(ctx, tr); err != nil {
			b.Error(err)
			return
		}
	}
	close(armed)
	if err := g.Resume(ctx); err != nil {
		b.Error(err)
		return
	}
	for {
		select {
		case <-ctx.Done():
			c := context.WithoutCancel(ctx)
			err := g.Pause(c)
			for _, tr := range trs {
				err = errors.Join(err, g.Remove(c, tr))
			}
			if err := errors.Join(err, g.Resume(c)); err != nil {
				b.Error(err)
			}
			return
		case st := <-g.Events():
			if st.Reason != vmi.StopTrap {
				continue
			}
			n++
			seen(st)
			if err := g.Resume(ctx); err != nil && ctx.Err() == nil {
				b.Error(err)
			}
		}
	}
}
