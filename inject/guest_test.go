package inject

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/fsparse"
	_ "github.com/vmscope/vmscope/fsparse/ext4"
	"github.com/vmscope/vmscope/inject/injecttest"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/qemu/control"
)

// attach opens the fixture guest (its own guest journal in dir), pauses
// it and discovers its kernel.
func attach(t testing.TB, spec, journal string) (*qemu.Guest, *linux.Kernel) {
	t.Helper()
	ctx := context.Background()
	g, err := qemu.Open(ctx, spec, qemu.WithJournal(journal))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Pause(ctx); err != nil {
		g.Close(ctx)
		t.Fatal(err)
	}
	cpus, err := g.CPUs(ctx)
	if err != nil {
		g.Close(ctx)
		t.Fatal(err)
	}
	k, err := linux.Discover(ctx, g, linux.WithCPUs(cpus))
	if err != nil {
		g.Close(ctx)
		t.Fatal(err)
	}
	return g, k
}

// diskView opens the fixture's data disk read-only, as the guest mounts
// it on /mnt/data.
func diskView(t testing.TB, img string) *DiskView {
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, _ := f.Stat()
	d, err := fsparse.Open(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	v, _, err := d.Resolve("/")
	if err != nil {
		t.Fatal(err)
	}
	return &DiskView{FS: v.FS, Mount: "/mnt/data"}
}

// live is the fixture guest attached once for the operations that
// follow each other (the stub takes one client).
type live struct {
	g *qemu.Guest
	k *linux.Kernel
}

// runOn runs one operation on the attached guest and lets it run again.
func (lv *live) runOn(t *testing.T, op Op, o Options) (*Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := lv.g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	o.CPUs, _ = lv.g.CPUs(ctx)
	if o.Journal == "" {
		o.Journal = filepath.Join(t.TempDir(), "inject.json")
	}
	if o.Window == 0 {
		o.Window = 1500 * time.Millisecond // the dummy returns to user mode every second
	}
	res, err := Run(ctx, lv.g, control.New(lv.g), lv.k, op, o)
	if _, serr := os.Stat(o.Journal); serr == nil && res != nil && res.Restored {
		t.Errorf("the journal %s is still there after a restored run", o.Journal)
	}
	if err := lv.g.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	return res, err
}

// snapshot is the dummy's maps, descriptors and signal masks as the guest
// itself shows them (State left out: it sleeps or runs).
func snapshot(t *testing.T, l *injecttest.Guest, pid int) []string {
	t.Helper()
	s, err := l.Snap(pid)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, x := range s {
		if !strings.HasPrefix(x, "State") {
			out = append(out, x)
		}
	}
	if len(out) < 8 {
		t.Fatalf("snap of %d: %q", pid, s)
	}
	return out
}

// untouched checks the dummy after an operation: maps, descriptors and
// signal masks as before, and it goes on printing DUMMY OK.
func untouched(t *testing.T, l *injecttest.Guest, pid int, before []string) {
	t.Helper()
	if err := l.DummyOK(2, 30*time.Second); err != nil {
		t.Error(err)
	}
	if after := snapshot(t, l, pid); !slices.Equal(before, after) {
		t.Errorf("the dummy changed:\nbefore %q\nafter  %q", before, after)
	}
}

// TestLiveGuest runs every operation on one boot of the fixture guest and
// checks each against the guest's own view, and the dummy after each.
func TestLiveGuest(t *testing.T) {
	// two vCPUs: the dummy may be taken, stepped, handed off and
	// brought back on either
	l := injecttest.Boot(t, "", injecttest.WithCPUs(2))
	dummy := l.Role("dummy")
	if dummy == 0 {
		t.Fatal("no dummy in the scenario section")
	}
	disk := diskView(t, l.Image)
	before := snapshot(t, l, dummy)
	gj := filepath.Join(t.TempDir(), "guest.json")
	g, k := attach(t, l.Spec, gj)
	lv := &live{g: g, k: k}
	closed := false
	closeLive := func() {
		if !closed {
			closed = true
			if err := g.Close(context.Background()); err != nil {
				t.Error(err)
			}
		}
	}
	defer closeLive()
	if err := g.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Run("grep -c ^processor /proc/cpuinfo"); err != nil || len(out) != 1 || out[0] != "2" || g.NumCPU() != 2 {
		t.Fatalf("the guest has %q vCPUs (%v), QEMU %d: want 2", out, err, g.NumCPU())
	}
	if !slices.ContainsFunc(before, func(s string) bool { return strings.HasPrefix(s, "SigBlk:") }) {
		t.Fatalf("snap has no SigBlk: %q", before)
	}

	t.Run("run-others", func(t *testing.T) {
		// RunOthers lets vCPU 1 run while vCPU 0 stays frozen: with a
		// breakpoint in the idle loop both vCPUs reach, every stop is
		// vCPU 1's and vCPU 0's registers do not move
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		idle, ok := k.Symbols.Addr("native_safe_halt")
		if !ok {
			t.Fatal("no native_safe_halt")
		}
		if err := g.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		defer g.Resume(ctx)
		bp := vmi.Breakpoint(idle)
		if err := g.Insert(ctx, bp); err != nil {
			t.Fatal(err)
		}
		before, err := g.Regs(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		hits := 0
		for i := 0; i < 5; i++ {
			n, err := g.RunOthers(ctx, 0, 2*time.Second)
			if err != nil || n != 1 {
				t.Fatalf("run others: %d vCPUs, %v", n, err)
			}
			c1, err := g.Regs(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			if vmi.VA(c1.RIP) == idle {
				hits++
				// past the breakpoint's instruction, as a tracer does
				if err := g.Remove(ctx, bp); err != nil {
					t.Fatal(err)
				}
				if _, err := g.Step(ctx, 1); err != nil {
					t.Fatal(err)
				}
				if err := g.Insert(ctx, bp); err != nil {
					t.Fatal(err)
				}
			}
			if c0, err := g.Regs(ctx, 0); err != nil || c0 != before {
				t.Errorf("vCPU 0 moved while the others ran: %+v -> %+v (%v)", before, c0, err)
			}
		}
		if err := g.Remove(ctx, bp); err != nil {
			t.Fatal(err)
		}
		if hits == 0 {
			t.Errorf("vCPU 1 never reached %s in 5 runs of 2 s", "native_safe_halt")
		}
		t.Logf("vCPU 1 stopped in the idle loop %d times of 5; vCPU 0 stayed at %#x", hits, before.RIP)
	})

	t.Run("dummy-selection", func(t *testing.T) {
		if err := g.Pause(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer g.Resume(context.Background())
		kr, err := newKernel(k)
		if err != nil {
			t.Fatal(err)
		}
		s := &Session{t: g, kr: kr, o: &Options{}}
		best, cands, err := s.selectDummy(context.Background(), 0, Op{Kind: "ls"}.caps(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if best.PID != dummy {
			t.Errorf("auto picked pid %d (%s), want the dummy %d; candidates %+v", best.PID, best.Comm, dummy, cands)
		}
		why := map[int]string{}
		threads := 0
		for _, c := range cands {
			why[c.PID] = c.Rejected
			if c.PID == l.Role("threader") {
				threads = c.Threads
			}
		}
		for pid, want := range map[int]string{
			1:                  "pid 1",
			2:                  "kernel thread",
			l.Role("strict"):   "seccomp mode 1",
			l.Role("sleep"):    "does not return to user mode",
			l.Role("threader"): "",
		} {
			if !strings.HasPrefix(why[pid], want) {
				t.Errorf("pid %d: rejected %q, want %q", pid, why[pid], want)
			}
		}
		// the Go threader's threads are counted; qualified or not (its
		// leader may sleep through the window), it ranks below the dummy
		if threads < 5 {
			t.Errorf("threader: %d threads counted, want 5 (main and 4 workers)", threads)
		}
		t.Logf("threader: %q", why[l.Role("threader")])
		// --dummy is vetted too
		if _, _, err := s.selectDummy(context.Background(), l.Role("strict"), 0, 2*time.Second); !errors.Is(err, ErrNoDummy) {
			t.Errorf("--dummy of the seccomp-strict process: %v", err)
		}
	})

	t.Run("ls", func(t *testing.T) {
		res, err := lv.runOn(t, Op{Kind: "ls", Path: "/mnt/data/known", Long: true}, Options{Disk: disk})
		if err != nil {
			t.Fatal(err)
		}
		want := parseLsLan(t, l.Section("ls"))
		got := map[string]lsRow{}
		for _, e := range res.Entries {
			if e.Stat == nil {
				continue // . and ..
			}
			got[e.Name] = lsRow{e.Stat.ModeString(), int(e.Stat.Nlink), e.Stat.UID, e.Stat.GID, e.Stat.Size}
		}
		delete(want, ".")
		delete(want, "..")
		if len(got) != len(want) || len(want) < 5 {
			t.Errorf("ls: %d entries, the guest's ls -lan %d: %v vs %v", len(got), len(want), got, want)
		}
		for n, w := range want {
			if got[n] != w {
				t.Errorf("ls %s: %+v, the guest says %+v", n, got[n], w)
			}
		}
		if v := verdict(res, "after"); v.Status != "pass" {
			t.Errorf("after-check: %+v", v)
		}
		if res.Dummy.PID != dummy || !res.Restored {
			t.Errorf("dummy %+v restored %v", res.Dummy, res.Restored)
		}
		untouched(t, l, dummy, before)
	})

	t.Run("stat", func(t *testing.T) {
		n := 0
		for _, line := range l.Section("stat") {
			f := strings.Split(line, "|")
			if len(f) != 10 {
				t.Fatalf("stat line %q", line)
			}
			// a directory, a file of another owner, a symlink and a big
			// file keep the test short (each run vets a dummy anew)
			if !strings.HasSuffix(f[0], "/known") && !strings.HasSuffix(f[0], "owned.txt") && !strings.HasSuffix(f[0], "/link") && !strings.HasSuffix(f[0], "big.bin") {
				continue
			}
			n++
			res, err := lv.runOn(t, Op{Kind: "stat", Path: f[0]}, Options{Disk: disk})
			if err != nil {
				t.Fatal(err)
			}
			st := res.Stat
			got := fmt.Sprintf("%s|%d|%x|%d|%d|%d|%d|%d|%d|%d", f[0], st.Ino, st.Mode, st.Nlink, st.UID, st.GID, st.Size, st.Atime.Unix(), st.Mtime.Unix(), st.Ctime.Unix())
			if got != line {
				t.Errorf("stat:\n got %s\nwant %s", got, line)
			}
			if v := verdict(res, "after"); v.Status != "pass" {
				t.Errorf("after-check of %s: %+v", f[0], v)
			}
		}
		if n != 4 {
			t.Errorf("compared %d stat lines, want 4", n)
		}
		untouched(t, l, dummy, before)
	})

	t.Run("cat", func(t *testing.T) {
		for _, line := range l.Section("sha256") {
			sum, p, ok := strings.Cut(line, "  ")
			if !ok {
				t.Fatalf("sha256 line %q", line)
			}
			res, err := lv.runOn(t, Op{Kind: "cat", Path: p}, Options{Disk: disk})
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.Sum256(res.Data)
			if hex.EncodeToString(h[:]) != sum || res.SHA256 != sum {
				t.Errorf("cat %s: %d bytes, sha256 %x, the guest says %s", p, len(res.Data), h, sum)
			}
			if v := verdict(res, "after"); v.Status != "pass" {
				t.Errorf("after-check of %s: %+v", p, v)
			}
		}
		// a cap below the size is an error, not a truncated answer
		if _, err := lv.runOn(t, Op{Kind: "cat", Path: "/mnt/data/big.bin", MaxBytes: 1 << 20}, Options{}); !errors.Is(err, ErrResult) {
			t.Errorf("cat over --max-bytes: %v", err)
		}
		untouched(t, l, dummy, before)
	})

	t.Run("ps", func(t *testing.T) {
		res, err := lv.runOn(t, Op{Kind: "ps"}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		got := map[int]Proc{}
		for _, p := range res.Procs {
			got[p.PID] = p
		}
		n := 0
		for _, line := range l.Section("ps")[1:] {
			f := strings.Fields(line)
			pid, _ := strconv.Atoi(f[0])
			ppid, _ := strconv.Atoi(f[1])
			if f[3] == "ps" || strings.HasPrefix(f[3], "kworker") {
				continue // ps itself ended; workers come and go
			}
			p, ok := got[pid]
			args := strings.Join(f[4:], " ")
			if strings.HasPrefix(args, "{") { // busybox shows a script as {comm} argv
				args = strings.Join(f[5:], " ")
			}
			argsOK := p.Args == args
			if strings.HasPrefix(args, "[") { // a kernel thread: ps shows its name cut to 15 bytes
				argsOK = strings.HasPrefix(p.Args, strings.TrimSuffix(args, "]"))
			}
			if !ok || p.PPID != ppid || !strings.HasPrefix(p.Comm, f[3]) || !argsOK {
				t.Errorf("ps: pid %d %s (ppid %d, %q): got %+v", pid, f[3], ppid, args, p)
			}
			n++
		}
		if n < 40 {
			t.Errorf("compared %d processes", n)
		}
		if v := verdict(res, "after"); v.Status != "pass" {
			t.Errorf("after-check: %+v", v)
		}
		untouched(t, l, dummy, before)
	})

	t.Run("netstat", func(t *testing.T) {
		res, err := lv.runOn(t, Op{Kind: "netstat"}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		var want, got []string
		for _, line := range l.Section("netstat") {
			f := strings.Fields(line)
			if len(f) >= 6 && (f[0] == "tcp" || f[0] == "udp") {
				want = append(want, f[0]+" "+f[3]+" "+f[4]+" "+f[5])
			}
		}
		for _, s := range res.Sockets {
			if s.Proto != "unix" {
				got = append(got, NetstatLine(s))
			}
		}
		if len(want) == 0 || !slices.Equal(want, got) {
			t.Errorf("netstat: %q, the guest says %q", got, want)
		}
		untouched(t, l, dummy, before)
	})

	t.Run("after-netstat", func(t *testing.T) { afterNetstat(t, l, lv) })
	t.Run("after-dcache", func(t *testing.T) { afterDcache(t, l, lv, disk) })

	// the model of the stepped stat: learned (package cfi) from the
	// protect-full run below, used by the model subtest
	statOp := Op{Kind: "stat", Path: "/mnt/data/known/hello.txt"}
	learn := newStepSource(t, k)
	var learned *cfi.Model
	t.Run("protect-before-and-full", func(t *testing.T) {
		var res *Result
		var err error
		// learned as a model is learned from a workload. A call that
		// was switched out (it blocked, or yielded at a cond_resched())
		// goes back to user mode through pages a call that ran through
		// never steps (the reload of its FPU state): one read of a FIFO
		// whose writer comes a second later is always switched out.
		// Then the stat, over runs until one steps no page and no
		// transition the earlier ones did not (at most 6).
		runs := 0
		learned = learn.learn(t, func(onStep func(vmi.VA, string, bool)) error {
			if _, err = l.Run("rm -f /tmp/learnfifo; mkfifo /tmp/learnfifo && (sleep 1; echo learn >/tmp/learnfifo) >/dev/null 2>&1 &"); err != nil {
				return err
			}
			fr, ferr := lv.runOn(t, Op{Kind: "cat", Path: "/tmp/learnfifo", MaxBytes: 64}, Options{Protect: ProtectFull, noBefore: true, onStep: onStep})
			if ferr != nil {
				err = fmt.Errorf("learning from a blocking read: %w", ferr)
				return err
			}
			if fr.Handoffs < 1 || string(fr.Data) != "learn\n" {
				err = fmt.Errorf("learning from a blocking read: %d hand-offs, read %q", fr.Handoffs, fr.Data)
				return err
			}
			for runs < 6 {
				pages, edges := len(learn.calls), len(learn.edges)
				runs++
				res, err = lv.runOn(t, statOp, Options{Protect: ProtectFull, Disk: disk, onStep: onStep})
				if err != nil || (runs > 1 && len(learn.calls) == pages && len(learn.edges) == edges) {
					break
				}
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("model learned over a blocking read and %d stepped stats", runs)
		for _, ph := range []string{"before", "during", "after"} {
			if v := verdict(res, ph); v.Status != "pass" {
				t.Errorf("%s: %+v", ph, v)
			}
		}
		stepped := 0
		for _, c := range res.Calls {
			if c.Name == "newfstatat" && c.Steps < 100 {
				t.Errorf("newfstatat stepped %d instructions", c.Steps)
			}
			stepped += c.Steps
		}
		if stepped != res.Steps || res.Steps < 1000 {
			t.Errorf("steps %d (calls %d)", res.Steps, stepped)
		}
		// stepped, stat borrows 1 KiB of stack instead of a mapping, and
		// the restoring rt_sigprocmask is stepped too
		var names []string
		for _, c := range res.Calls {
			names = append(names, c.Name)
		}
		if !slices.Equal(names, []string{"rt_sigprocmask", "newfstatat", "rt_sigprocmask"}) || res.BufferBytes != stackBuf || res.Calls[2].Steps < 100 {
			t.Errorf("calls %q, buffer %d bytes: %+v", names, res.BufferBytes, res.Calls)
		}
		t.Logf("protect full: %d steps: %+v", res.Steps, res.Calls)
		untouched(t, l, dummy, before)
	})

	t.Run("model", func(t *testing.T) {
		if learned == nil || len(learned.Pages) == 0 {
			t.Fatal("the protect-full subtest learned no model")
		}
		res, err := lv.runOn(t, statOp, Options{Protect: ProtectFull, noBefore: true, Model: learned})
		if err != nil {
			t.Fatalf("stat under the model learned from the same call: %v (%+v; calls %+v)", err, verdict(res, "during"), res.Calls)
		}
		if v := verdict(res, "during"); v.Status != "pass" {
			t.Errorf("during: %+v", v)
		}
		// a model that lacks one page only newfstatat ran: the call
		// aborts there, the dummy is restored
		drop, ok := learn.onlyIn("newfstatat")
		if !ok {
			t.Fatalf("no page ran by newfstatat alone: %v", learn.calls)
		}
		lack := *learned
		lack.Pages = slices.DeleteFunc(slices.Clone(learned.Pages), func(p cfi.Page) bool { return p == drop })
		res, err = lv.runOn(t, statOp, Options{Protect: ProtectFull, noBefore: true, Model: &lack})
		v := verdict(res, "during")
		if !errors.Is(err, ErrAborted) || !res.Restored || v.Status != "fail" || !strings.Contains(strings.Join(v.Reasons, "; "), "newfstatat: page "+drop.String()) {
			t.Errorf("stat under a model without %v: %v (restored %v), during %+v", drop, err, res.Restored, v)
		}
		// the reason names the instruction's function, from kallsyms
		named := regexp.MustCompile(`newfstatat: page ` + regexp.QuoteMeta(drop.String()) + ` \(0x[0-9a-f]+ [A-Za-z_][A-Za-z0-9_.]*\+0x[0-9a-f]+\) is not in the model`)
		if !named.MatchString(strings.Join(v.Reasons, "; ")) {
			t.Errorf("the reason does not name the function: %q", v.Reasons)
		}
		untouched(t, l, dummy, before)
	})

	t.Run("schedule-handoff", func(t *testing.T) {
		// a FIFO whose writer opens it a second later and writes 5 s
		// after that: the stepped read (and maybe the openat) blocks,
		// reaches schedule(), runs by a breakpoint until schedule()
		// returns, and is stepped on
		if _, err := l.Run("mkfifo /tmp/handoff && (sleep 1; exec 3>/tmp/handoff; sleep 5; echo handoff-payload >&3) >/dev/null 2>&1 &"); err != nil {
			t.Fatal(err)
		}
		res, err := lv.runOn(t, Op{Kind: "cat", Path: "/tmp/handoff", MaxBytes: 64}, Options{Protect: ProtectFull, noBefore: true})
		if err != nil {
			if res != nil {
				t.Fatalf("%v; restored %v, calls %+v", err, res.Restored, res.Calls)
			}
			t.Fatal(err)
		}
		if string(res.Data) != "handoff-payload\n" {
			t.Errorf("cat of the FIFO: %q", res.Data)
		}
		// the read that waited for the writer was stepped again once it
		// woke: it copied the payload under the check
		handoffs, resumed := 0, false
		for _, c := range res.Calls {
			handoffs += c.Handoffs
			if c.Name == "read" && c.Ret > 0 && c.Blocked && c.ResumedSteps > 0 {
				resumed = true
			}
			if c.Blocked && c.Steps == 0 {
				t.Errorf("%s blocked before a single step", c.Name)
			}
		}
		if res.Handoffs < 1 || res.Handoffs != handoffs || !resumed {
			t.Errorf("hand-offs %d (calls %d), a blocked read stepped on after it: %v; %+v", res.Handoffs, handoffs, resumed, res.Calls)
		}
		if v := verdict(res, "during"); v.Status != "pass" {
			t.Errorf("during: %+v", v)
		}
		untouched(t, l, dummy, before)
	})

	t.Run("dummy-gone", func(t *testing.T) {
		// midway exits, or execs /bin/sleep, once inject has blocked its
		// signals; the borrowed thread is then blocked opening a FIFO
		// that has no writer
		for _, mode := range []string{"exit", "exec"} {
			// its pid once it runs midway with both threads (the
			// forked shell has not exec'd it yet when $! is known)
			out, err := l.Run(fmt.Sprintf("mkfifo /tmp/never-%s; /bin/midway %s >/dev/null 2>&1 & p=$!; "+
				"for i in $(seq 100); do [ \"$(cat /proc/$p/comm)\" = midway ] && [ $(ls /proc/$p/task | wc -l) = 2 ] && break; sleep 0.1; done; echo $p", mode, mode))
			if err != nil || len(out) != 1 {
				t.Fatalf("midway %s: %q %v", mode, out, err)
			}
			pid, _ := strconv.Atoi(out[0])
			j := filepath.Join(t.TempDir(), "inject.json")
			start := time.Now()
			res, err := lv.runOn(t, Op{Kind: "cat", Path: "/tmp/never-" + mode}, Options{Dummy: pid, Journal: j})
			if !errors.Is(err, ErrDummyGone) || res.Restored || res.Dummy == nil || res.Dummy.PID != pid {
				t.Errorf("midway %s: %v (restored %v)", mode, err, res.Restored)
			}
			t.Logf("midway %s: %v after %v", mode, err, time.Since(start))
			if _, err := os.Stat(j); err == nil {
				t.Errorf("midway %s: the journal of a gone dummy stayed", mode)
			}
			// the guest runs on; the pid is gone, or runs sleep
			want := map[string]string{"exit": "gone", "exec": "sleep"}[mode]
			got, err := l.Run(fmt.Sprintf("cat /proc/%d/comm 2>/dev/null || echo gone", pid))
			if err != nil || len(got) != 1 || got[0] != want {
				t.Errorf("midway %s: pid %d is %q (%v), want %q", mode, pid, got, err, want)
			}
		}
		untouched(t, l, dummy, before)
	})

	t.Run("cancel-rolls-back", func(t *testing.T) {
		// a cancelled context (SIGINT, SIGTERM, --timeout) in the middle
		// of the operation: the dummy is restored all the same
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if err := g.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		cpus, _ := g.CPUs(ctx)
		j := filepath.Join(t.TempDir(), "inject.json")
		res, err := Run(ctx, g, control.New(g), k, Op{Kind: "ls", Path: "/mnt/data/known"}, Options{CPUs: cpus, Journal: j,
			Failpoint: func(s string) {
				if s == "call getdents64" {
					cancel()
				}
			}})
		if rerr := g.Resume(context.Background()); rerr != nil {
			t.Fatal(rerr)
		}
		if !errors.Is(err, context.Canceled) || !res.Restored {
			t.Fatalf("cancelled ls: %v, restored %v", err, res.Restored)
		}
		if _, err := os.Stat(j); err == nil {
			t.Error("the journal stayed after a restored, cancelled run")
		}
		untouched(t, l, dummy, before)
	})

	t.Run("kill-needs-allow-write", func(t *testing.T) {
		if _, err := lv.runOn(t, Op{Kind: "kill", PID: l.Role("sleep"), Signal: 9}, Options{}); err == nil {
			t.Fatal("kill without --allow-write ran")
		}
		res, err := lv.runOn(t, Op{Kind: "kill", PID: l.Role("sleep"), Signal: 9}, Options{AllowWrite: true})
		if err != nil {
			t.Fatal(err)
		}
		out, err := l.Run(fmt.Sprintf("[ -d /proc/%d ] && echo alive || echo gone", l.Role("sleep")))
		if err != nil || len(out) != 1 || out[0] != "gone" {
			t.Errorf("after kill: %q %v (%+v)", out, err, res.Killed)
		}
		untouched(t, l, dummy, before)
	})

	closeLive() // the CLI and the kill test's processes attach themselves
	t.Run("cli", func(t *testing.T) { cliLive(t, l) })
	t.Run("kill-and-recover", func(t *testing.T) {
		for _, step := range []string{"safepoint", "scratch", "call mmap", "call getdents64", "restore"} {
			t.Run(strings.ReplaceAll(step, " ", "-"), func(t *testing.T) {
				killAndRecover(t, l, step)
				untouched(t, l, dummy, before)
			})
		}
	})

}

func verdict(r *Result, phase string) Verdict {
	for _, v := range r.Verdicts {
		if v.Phase == phase {
			return v
		}
	}
	return Verdict{Phase: phase, Status: "missing"}
}

type lsRow struct {
	Mode     string
	Links    int
	UID, GID uint32
	Size     int64
}

// parseLsLan parses busybox ls -lan lines: mode links uid gid size
// month day time name [-> target].
func parseLsLan(t *testing.T, lines []string) map[string]lsRow {
	m := map[string]lsRow{}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 9 || strings.HasPrefix(l, "total") {
			continue
		}
		links, _ := strconv.Atoi(f[1])
		uid, _ := strconv.ParseUint(f[2], 10, 32)
		gid, _ := strconv.ParseUint(f[3], 10, 32)
		size, _ := strconv.ParseInt(f[4], 10, 64)
		m[f[8]] = lsRow{f[0], links, uint32(uid), uint32(gid), size}
	}
	return m
}

// The helper process of the kill test: it runs ls with a failpoint that
// kills it (SIGKILL) at the named protocol step.
func TestHelperKilled(t *testing.T) {
	spec := os.Getenv("VMSCOPE_INJECT_HELPER_SPEC")
	if spec == "" {
		t.Skip("helper process of the kill test")
	}
	step := os.Getenv("VMSCOPE_INJECT_HELPER_STEP")
	g, k := attach(t, spec, os.Getenv("VMSCOPE_INJECT_HELPER_GUEST_JOURNAL"))
	cpus, _ := g.CPUs(context.Background())
	_, err := Run(context.Background(), g, control.New(g), k, Op{Kind: "ls", Path: "/mnt/data/known"}, Options{
		Journal: os.Getenv("VMSCOPE_INJECT_HELPER_JOURNAL"), CPUs: cpus,
		Failpoint: func(s string) {
			if s == step {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				time.Sleep(time.Minute)
			}
		}})
	t.Fatalf("the failpoint %q was never reached (%v)", step, err)
}

// killAndRecover runs the helper to its death at step, then recovers the
// guest (the dummy through the inject journal, the stub through the
// guest journal) and checks the guest runs.
func killAndRecover(t *testing.T, l *injecttest.Guest, step string) {
	dir := t.TempDir()
	ij, gj := filepath.Join(dir, "inject.json"), filepath.Join(dir, "guest.json")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperKilled$", "-test.count=1")
	cmd.Env = append(os.Environ(), "VMSCOPE_INJECT_HELPER_SPEC="+l.Spec, "VMSCOPE_INJECT_HELPER_STEP="+step,
		"VMSCOPE_INJECT_HELPER_JOURNAL="+ij, "VMSCOPE_INJECT_HELPER_GUEST_JOURNAL="+gj)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	ctx := context.Background()
	rec, err := RecoverGuest(ctx, l.Spec, ij, gj)
	if err != nil {
		t.Fatalf("recover: %v (%+v)", err, rec)
	}
	wantLeft := step != "safepoint"
	if rec.Inject.Left != wantLeft || (wantLeft && !rec.Inject.Restored) || rec.Inject.Stale {
		t.Errorf("recover after %q: %+v", step, rec.Inject)
	}
	for _, p := range []string{ij, gj} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is still there after recover", p)
		}
	}
	q, err := qemu.DialQMP(ctx, "unix:"+l.QMP)
	if err != nil {
		q, err = qemu.DialQMP(ctx, l.QMP)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if st, err := q.Status(ctx); err != nil || !st.Running {
		t.Errorf("guest after recover: %+v %v", st, err)
	}
}

// stepSource is a cfi.Source over the kernel instructions protect-full
// runs step: one event per instruction (its page, and the page before it
// within the call), so cfi.Learn builds the model of exactly the paths
// the injected calls take. It also keeps which calls ran each page.
type stepSource struct {
	regions *cfi.Regions
	runs    func(onStep func(vmi.VA, string, bool)) error
	calls   map[cfi.Page]map[string]bool
	edges   map[cfi.Edge]bool // the transitions between pages stepped
}

func newStepSource(t *testing.T, k *linux.Kernel) *stepSource {
	r, err := cfi.LoadRegions(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	return &stepSource{regions: r, calls: map[cfi.Page]map[string]bool{}, edges: map[cfi.Edge]bool{}}
}

func (s *stepSource) Name() string { return "step" }

func (s *stepSource) Run(ctx context.Context, emit func(cfi.Event) error) error {
	var prev vmi.VA
	var prevPage cfi.Page
	havePage := false
	var errs []error
	err := s.runs(func(rip vmi.VA, call string, first bool) {
		pg := rip &^ (cfi.PageSize - 1)
		ev := cfi.Event{Page: pg, Addr: rip}
		if !first {
			ev.From = prev
		}
		prev = pg
		if err := emit(ev); err != nil {
			errs = append(errs, err)
		}
		p, ok := s.regions.PageOf(rip)
		if ok && !first && havePage && p != prevPage {
			s.edges[cfi.Edge{From: prevPage, To: p}] = true
		}
		prevPage, havePage = p, ok
		if ok {
			if s.calls[p] == nil {
				s.calls[p] = map[string]bool{}
			}
			s.calls[p][call] = true
		}
	})
	return errors.Join(append(errs, err)...)
}

// learn learns the model of what run steps (run's own error is the
// caller's to check).
func (s *stepSource) learn(t *testing.T, run func(onStep func(vmi.VA, string, bool)) error) *cfi.Model {
	s.runs = func(onStep func(vmi.VA, string, bool)) error {
		run(onStep)
		return nil
	}
	m, st, err := cfi.Learn(context.Background(), s, s.regions, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("model learned from the stepped calls: %d pages, %d edges, %d events", st.Pages, st.Edges, st.Events)
	return m
}

// onlyIn is a core page that call ran and no other call did.
func (s *stepSource) onlyIn(call string) (cfi.Page, bool) {
	var out []cfi.Page
	for p, calls := range s.calls {
		if len(calls) == 1 && calls[call] && p.Module == "" {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, cfi.Page.Compare)
	if len(out) == 0 {
		return cfi.Page{}, false
	}
	return out[len(out)/2], true
}

// cliLive runs the built vmscope binary's inject ls (table) and stat
// (json) against the guest and compares them with the guest's own ls
// -lan and stat.
func cliLive(t *testing.T, l *injecttest.Guest) {
	bin := filepath.Join(t.TempDir(), "vmscope")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/vmscope").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	run := func(args ...string) []byte {
		t.Helper()
		args = append([]string{"inject", args[0], "--guest", l.Spec, "--journal", filepath.Join(dir, "inject.json"), "--protect", "off",
			"--disk", l.Image, "--disk-mount", "/mnt/data"}, args[1:]...)
		cmd := exec.Command(bin, args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("vmscope %q: %v\n%s", args, err, stderr.String())
		}
		return out
	}
	// table: mode links uid gid size date time name, as the guest's ls -lan
	want := parseLsLan(t, l.Section("ls"))
	delete(want, ".")
	delete(want, "..")
	got := map[string]lsRow{}
	for _, line := range strings.Split(strings.TrimSpace(string(run("ls", "-l", "/mnt/data/known"))), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			t.Fatalf("ls table line %q", line)
		}
		links, _ := strconv.Atoi(f[1])
		uid, _ := strconv.ParseUint(f[2], 10, 32)
		gid, _ := strconv.ParseUint(f[3], 10, 32)
		size, _ := strconv.ParseInt(f[4], 10, 64)
		got[f[7]] = lsRow{f[0], links, uint32(uid), uint32(gid), size}
	}
	if len(want) < 5 || !maps.Equal(got, want) {
		t.Errorf("vmscope inject ls -l:\n got %v\nwant %v", got, want)
	}
	// json: the stat line of hello.txt as the guest printed it
	var res Result
	if err := json.Unmarshal(run("stat", "--format", "json", "/mnt/data/known/hello.txt"), &res); err != nil {
		t.Fatal(err)
	}
	var line string
	for _, x := range l.Section("stat") {
		if strings.HasPrefix(x, "/mnt/data/known/hello.txt|") {
			line = x
		}
	}
	st := res.Stat
	if st == nil || !res.Restored || verdict(&res, "after").Status != "pass" {
		t.Fatalf("vmscope inject stat --format json: %+v", res)
	}
	if g := fmt.Sprintf("%s|%d|%x|%d|%d|%d|%d|%d|%d|%d", res.Target, st.Ino, st.Mode, st.Nlink, st.UID, st.GID, st.Size, st.Atime.Unix(), st.Mtime.Unix(), st.Ctime.Unix()); g != line {
		t.Errorf("vmscope inject stat --format json:\n got %s\nwant %s", g, line)
	}
}
