package watch

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/vmscope/vmscope/watch/watchtest"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkWatchOverhead (bench/watch.sh) times the guest's file loop
// (create N files of 4 KiB, read, rename, delete them; N =
// $VMSCOPE_WATCH_FILES, 5000) on the host's clock, from the command to
// the guest's DONE line, with no monitor, with 10 watched files the loop
// never touches (target-based), and with operation-based monitoring
// (breakpoints on the VFS functions, filtered on the file), interleaved,
// $VMSCOPE_WATCH_RUNS runs each (5), and prints the medians and the
// ratios; then the loop while a watched file is read at 1, 10 and 100 Hz,
// without and with target-based watching.
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
	loop := func(hz int) time.Duration {
		seq++
		start := time.Now()
		if err := l.Send(fmt.Sprintf("bench %d %d %d", n, hz, seq)); err != nil {
			b.Fatal(err)
		}
		if err := l.WaitFor(fmt.Sprintf("=== BENCH DONE %d ===", seq), 30*time.Minute); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	type result struct {
		d     time.Duration
		stops int
	}
	measure := func(mode string, hz int) result {
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		armed := make(chan struct{})
		done := make(chan int, 1)
		switch mode {
		case "none":
			return result{d: loop(hz)}
		case "target":
			paths := untouched
			if hz > 0 {
				paths = append(append([]string(nil), untouched...), touched)
			}
			x, err := New(rctx, g, w, paths, Options{Queue: 1 << 16, Armed: func(int) { close(armed) }})
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
				done <- x.Stats().Stops
			}()
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
		d := loop(hz)
		cancel()
		return result{d: d, stops: <-done}
	}
	b.ResetTimer()
	times := map[string][]time.Duration{}
	stops := map[string]int{}
	for i := 0; i < runs; i++ {
		for _, m := range []string{"none", "target", "operation"} {
			res := measure(m, 0)
			times[m] = append(times[m], res.d)
			stops[m] += res.stops
			fmt.Printf("run %d %-9s %v (%d stops)\n", i+1, m, res.d.Round(time.Millisecond), res.stops)
		}
	}
	none, tgt, op := median(times["none"]), median(times["target"]), median(times["operation"])
	fmt.Printf("files=%d runs=%d median: none %v, target-based %v, operation-based %v\n", n, runs,
		none.Round(time.Millisecond), tgt.Round(time.Millisecond), op.Round(time.Millisecond))
	slowT := float64(tgt-none) / float64(none) * 100
	slowO := float64(op-none) / float64(none) * 100
	fmt.Printf("slowdown: target-based %.2f%%, operation-based %.2f%%; stops per run: target %d, operation %d\n",
		slowT, slowO, stops["target"]/runs, stops["operation"]/runs)
	b.ReportMetric(slowT, "target_slowdown_%")
	b.ReportMetric(slowO, "operation_slowdown_%")
	for _, hz := range []int{1, 10, 100} {
		a, t := measure("none", hz), measure("target", hz)
		fmt.Printf("touch %3d Hz: none %v, target-based %v (%.2f%%), %d stops, %.1f stops/s\n", hz,
			a.d.Round(time.Millisecond), t.d.Round(time.Millisecond), float64(t.d-a.d)/float64(a.d)*100,
			t.stops, float64(t.stops)/t.d.Seconds())
	}
}
