package inject

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/inject/injecttest"
)

// BenchmarkInjectOps is bench/inject.sh: on the fixture guest with 200
// more processes, the time of ls of a 1,000-entry directory, cat of a
// 10 MiB file and ps at each protection level (full only where stepping
// finishes in minutes: set VMSCOPE_INJECT_FULL=all for every operation),
// with the guest's pause time and step counts; against the guest running
// the command itself with its output on the serial console (as an
// in-guest agent would), and against vmscope ls / cat of the disk image
// and mem ps of the live guest (VMSCOPE_BIN, the vmscope binary). It
// prints a table and the ratios; run it with -benchtime 1x.
func BenchmarkInjectOps(b *testing.B) {
	bin := os.Getenv("VMSCOPE_BIN")
	if bin == "" {
		b.Skip("VMSCOPE_BIN not set (bench/inject.sh sets it)")
	}
	l := injecttest.Boot(b, "")
	if err := l.Send("spawn 200"); err != nil {
		b.Fatal(err)
	}
	if err := l.WaitFor("=== SPAWNED 200 ===", time.Minute); err != nil {
		b.Fatal(err)
	}
	disk := diskView(b, l.Image)
	g, k := attach(b, l.Spec, filepath.Join(b.TempDir(), "guest.json"))
	ctx := context.Background()
	g.Resume(ctx)
	type row struct {
		name, protect    string
		wall, paused     time.Duration
		calls, steps     int
		agent, image     time.Duration
		agentWhat, imgWh string
	}
	var rows []row
	timeIt := func(f func() error) (time.Duration, error) {
		t0 := time.Now()
		err := f()
		return time.Since(t0), err
	}
	ops := []struct {
		name  string
		op    Op
		agent string
		image []string
	}{
		{"ls 1000 entries", Op{Kind: "ls", Path: "/mnt/data/many"}, "ls -la /mnt/data/many", []string{"ls", l.Image, "/many"}},
		{"cat 10 MiB", Op{Kind: "cat", Path: "/mnt/data/big.bin"}, "cat /mnt/data/big.bin", []string{"cat", l.Image, "/big.bin"}},
		{"ps (~260 processes)", Op{Kind: "ps"}, "ps -o pid,ppid,user,comm,args", []string{"mem", "ps", "--guest", l.Spec}},
		{"stat 1 file", Op{Kind: "stat", Path: "/mnt/data/known/hello.txt"}, "stat /mnt/data/known/hello.txt", []string{"ls", "-l", l.Image, "/known"}},
	}
	full := os.Getenv("VMSCOPE_INJECT_FULL") == "all"
	for _, o := range ops {
		agent, err := timeIt(func() error { _, err := l.Run(o.agent); return err })
		if err != nil {
			b.Fatal(err)
		}
		var image time.Duration
		if o.image[0] == "mem" {
			g.Close(ctx) // mem ps attaches itself
		}
		image, err = timeIt(func() error {
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
			if p == ProtectFull && !full && o.op.Kind != "stat" {
				continue
			}
			if err := g.Pause(ctx); err != nil {
				b.Fatal(err)
			}
			cpus, _ := g.CPUs(ctx)
			var res *Result
			wall, err := timeIt(func() error {
				var err error
				res, err = Run(ctx, g, Controller(g), k, o.op, Options{Protect: p, CPUs: cpus, Disk: disk, Journal: filepath.Join(b.TempDir(), "j.json")})
				return err
			})
			g.Resume(ctx)
			if err != nil {
				b.Fatalf("%s at %v: %v", o.name, p, err)
			}
			rows = append(rows, row{o.name, p.String(), wall, time.Duration(res.PausedMS) * time.Millisecond, len(res.Calls), res.Steps,
				agent, image, o.agent, strings.Join(o.image[:1], " ")})
		}
	}
	g.Close(ctx)
	fmt.Printf("\n%-22s %-7s %9s %9s %6s %8s %10s %9s %8s %10s %9s\n", "operation", "protect", "inject", "paused", "calls", "steps", "in-guest", "ratio", "vmscope", "(what)", "ratio")
	for _, r := range rows {
		fmt.Printf("%-22s %-7s %9.2fs %8.2fs %6d %8d %9.2fs %8.1fx %7.2fs %10s %8.1fx\n", r.name, r.protect, r.wall.Seconds(), r.paused.Seconds(), r.calls, r.steps,
			r.agent.Seconds(), r.wall.Seconds()/r.agent.Seconds(), r.image.Seconds(), r.imgWh, r.wall.Seconds()/r.image.Seconds())
	}
	fmt.Println("inject: wall time of the whole operation (integrity checks, dummy vetting, calls, restore, cross-view); paused: guest stopped while the dummy is held;")
	fmt.Println("in-guest: the guest runs the command itself, its output over the serial console; vmscope: ls/cat of the disk image, mem ps of the live guest;")
	fmt.Println("ratio: inject time / that time.")
}
