package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// TestGuestCLIChild is not a test: it is the CLI, run in a child process
// by TestGuestBreakSIGTERM (the test binary re-executes itself), with
// signal handling as in main.
func TestGuestCLIChild(t *testing.T) {
	args := os.Getenv("VMSCOPE_CLI_CHILD")
	if args == "" {
		t.Skip("run as a child only")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, strings.Split(args, "\x1f"), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// One boot for the guest CLI tests, with two QMP sockets: QEMU serves one
// client per socket, and the test checks the guest through its own.
var (
	cliBootOnce sync.Once
	cliGuest    *cliLive
	cliBootErr  error
)

type cliLive struct {
	spec, gdb string
	// procSpec is the same guest as a qemu: spec: memory from the QEMU
	// process, the stub attached only on demand
	procSpec string
	ref      *qemu.QMP
	cmd      *exec.Cmd

	symOnce sync.Once
	syms    *linux.Symbols
	symErr  error
}

// idleSymbol is the kernel function the fixture's idle vCPU runs each time
// it wakes up (every few milliseconds under TCG): the hlt of the idle loop.
const idleSymbol = "native_safe_halt"

// symbol returns the address of a kernel symbol of the running guest, from
// the kallsyms vmi/linux recovers from its memory (KASLR on), once per boot.
// It never skips.
func (l *cliLive) symbol(t *testing.T, name string) uint64 {
	t.Helper()
	l.symOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		g, err := qemu.Open(ctx, "gdb://"+l.gdb)
		if err != nil {
			l.symErr = err
			return
		}
		defer func() { l.symErr = errors.Join(l.symErr, g.Close(ctx)) }()
		if err := g.Pause(ctx); err != nil {
			l.symErr = err
			return
		}
		cpus, err := g.CPUs(ctx)
		if err != nil {
			l.symErr = err
			return
		}
		k, err := linux.Discover(ctx, g, linux.WithCPUs(cpus))
		if err != nil {
			l.symErr = err
			return
		}
		l.syms = k.Symbols
	})
	if l.symErr != nil {
		t.Fatalf("kernel symbols of the live guest: %v", l.symErr)
	}
	a, ok := l.syms.Addr(name)
	if !ok || a < 0xffff800000000000 {
		t.Fatalf("kernel symbol %s: %v %v", name, a, ok)
	}
	return uint64(a)
}

func liveGuest(t *testing.T) *cliLive {
	t.Helper()
	if testing.Short() {
		fixture.Missing(t, "-short: the live tests boot a guest")
	}
	kernel, initrd := guestFile(t, "vmlinuz"), guestFile(t, "initrd.gz")
	cliBootOnce.Do(func() { cliGuest, cliBootErr = bootCLIGuest(kernel, initrd) })
	if cliBootErr != nil {
		t.Fatal(cliBootErr)
	}
	return cliGuest
}

// guestFile is a file of the real-guest fixture (testdata/guest/build.sh;
// $VMSCOPE_GUEST overrides its folder, as in vmi/internal/guesttest).
func guestFile(t *testing.T, name string) string {
	t.Helper()
	return fixture.GuestPath(t, name)
}

func bootCLIGuest(kernel, initrd string) (*cliLive, error) {
	dir, err := os.MkdirTemp("", "vmscope-guest-cli")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	gdb := l.Addr().String()
	l.Close()
	qmpA, qmpB, console := filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "ref.sock"), filepath.Join(dir, "console.log")
	cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "1",
		"-nographic", "-display", "none", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1", "-serial", "file:"+console, "-monitor", "none",
		"-gdb", "tcp:"+gdb, "-qmp", "unix:"+qmpA+",server=on,wait=off",
		"-qmp", "unix:"+qmpB+",server=on,wait=off", "-net", "none")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if b, _ := os.ReadFile(console); bytes.Contains(b, []byte("=== READY ===")) {
			break
		}
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			cmd.Process.Kill()
			return nil, errors.New("guest did not reach READY")
		}
	}
	ref, err := qemu.DialQMP(context.Background(), qmpB)
	if err != nil {
		cmd.Process.Kill()
		return nil, err
	}
	return &cliLive{spec: "gdb://" + gdb + ",qmp=unix:" + qmpA, gdb: gdb, ref: ref, cmd: cmd,
		procSpec: fmt.Sprintf("qemu:pid=%d,qmp=unix:%s,gdb=%s", cmd.Process.Pid, qmpA, gdb)}, nil
}

func TestMain(m *testing.M) {
	// Journals of the guests under test go to a folder of their own.
	jdir, err := os.MkdirTemp("", "vmscope-cli-journal")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Setenv("XDG_RUNTIME_DIR", jdir)
	code := m.Run()
	if cliGuest != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cliGuest.ref.Quit(ctx)
		cancel()
		done := make(chan struct{})
		go func() { cliGuest.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cliGuest.cmd.Process.Kill()
		}
	}
	os.RemoveAll(jdir)
	removeTestBin()
	os.Exit(code)
}

func (l *cliLive) mustRun(t *testing.T) {
	t.Helper()
	st, err := l.ref.Status(context.Background())
	if err != nil || st.Status != "running" {
		t.Errorf("guest state %+v, %v: want running", st, err)
	}
}

// specs are the fixture guest's specs, by name: through the GDB stub, and
// from the QEMU process.
func (l *cliLive) specs() map[string]string {
	return map[string]string{"gdb": l.spec, "process": l.procSpec}
}

func TestGuestInfo(t *testing.T) {
	l := liveGuest(t)
	for name, spec := range l.specs() {
		t.Run(name, func(t *testing.T) {
			out, errOut, code := vmscope(t, "guest", "info", "--guest", spec)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			want := []string{"state: running", "vcpus: 1", "long/", "CR3", "memory: 4 ranges", "kernel: Linux version ", "symbols: ", "read speed: "}
			if name == "process" {
				want = append(want, "memory path: process (pid ", "process_vm_readv", "stub: available, not attached")
			} else {
				want = append(want, "memory path: gdb stub", "stub: "+l.gdb+" (attached)")
			}
			for _, w := range want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			t.Logf("%s", out)
			l.mustRun(t)
		})
	}
	if _, _, code := vmscope(t, "guest", "info"); code != exitError {
		t.Errorf("no --guest: exit %d", code)
	}
}

func TestGuestDump(t *testing.T) {
	l := liveGuest(t)
	for name, spec := range l.specs() {
		t.Run(name, func(t *testing.T) { testGuestDump(t, l, spec) })
	}
}

func testGuestDump(t *testing.T, l *cliLive, spec string) {
	out := filepath.Join(t.TempDir(), "g.elf")
	stdout, errOut, code := vmscope(t, "guest", "dump", "--guest", spec, out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	s, err := snapshot.Open(out)
	if err != nil {
		t.Fatalf("%s: %v", stdout, err)
	}
	defer s.Close()
	if len(s.Ranges()) == 0 || len(s.CPUs()) != 1 {
		t.Errorf("dump: ranges %v, %d cpus", s.Ranges(), len(s.CPUs()))
	}
	l.mustRun(t)
}

// TestGuestBreakSIGTERM runs `vmscope guest break` in a child process,
// kills it with SIGTERM while its breakpoint is armed, and checks that the
// guest runs, that a new client finds no breakpoint left, and that guest
// memory at the breakpoint is unchanged.
func TestGuestBreakSIGTERM(t *testing.T) {
	l := liveGuest(t)
	for name, spec := range l.specs() {
		t.Run(name, func(t *testing.T) { testGuestBreakSIGTERM(t, l, spec) })
	}
}

func testGuestBreakSIGTERM(t *testing.T, l *cliLive, spec string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// a kernel address the idle vCPU runs every few milliseconds, from the
	// guest's own kallsyms
	addr := l.symbol(t, idleSymbol)
	journal := filepath.Join(t.TempDir(), "guest.journal")
	xp := func() string {
		out, err := l.ref.HMP(ctx, fmt.Sprintf("gva2gpa %#x", addr))
		if err != nil {
			t.Fatal(err)
		}
		var pa uint64
		if _, err := fmt.Sscanf(out, "gpa: %x", &pa); err != nil {
			t.Fatalf("gva2gpa %q", out)
		}
		out, err = l.ref.HMP(ctx, fmt.Sprintf("xp /16xb %#x", pa))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := xp()

	child := exec.Command(os.Args[0], "-test.run=^TestGuestCLIChild$")
	child.Env = append(os.Environ(), "VMSCOPE_CLI_CHILD="+strings.Join([]string{"guest", "break", "--guest", spec, "--journal", journal, fmt.Sprintf("%#x", addr)}, "\x1f"))
	stdout, _ := child.StdoutPipe()
	var stderr bytes.Buffer
	child.Stderr = &stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	lines := make(chan string, 100)
	go func() {
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	hits := 0
	timeout := time.After(90 * time.Second)
wait:
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("child ended early: %s", stderr.String())
			}
			if strings.HasPrefix(line, "hit ") {
				if hits++; hits == 2 {
					break wait
				}
			}
		case <-timeout:
			t.Fatal("fewer than 2 hits in 90 s")
		}
	}
	child.Process.Signal(syscall.SIGTERM)
	err := child.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitCanceled {
		t.Errorf("child exit: %v (want status %d after SIGTERM): %s", err, exitCanceled, stderr.String())
	}
	t.Logf("child stopped after %d hits: %s", hits, strings.TrimSpace(stderr.String()))
	l.mustRun(t)
	if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal left after a clean exit: %v", err)
	}
	if after := xp(); after != before {
		t.Errorf("memory at the breakpoint changed:\n%s\n%s", before, after)
	}
	// a new client finds no breakpoint to remove; then the guest runs on
	d, err := qemu.DialGDB(ctx, l.gdb)
	if err != nil {
		t.Fatal(err)
	}
	var se *qemu.StubError
	if err := d.Remove(ctx, qemu.SoftwareBreak, addr, 1); !errors.As(err, &se) {
		t.Errorf("stale breakpoint at %#x: remove answered %v", addr, err)
	}
	if on, err := d.PhysicalMode(ctx); err != nil || on {
		t.Errorf("physical-memory mode left on: %v %v", on, err)
	}
	if err := d.Detach(ctx); err != nil {
		t.Error(err)
	}
	d.Close()
	l.mustRun(t)
}

// TestGuestKillChild is not a test: run in a child process by
// TestGuestReleaseAfterSIGKILL, it attaches to the guest through the
// library as the commands do, goes to a kill point, prints "ready" and
// waits to be killed with SIGKILL.
func TestGuestKillChild(t *testing.T) {
	env := os.Getenv("VMSCOPE_KILL_CHILD")
	if env == "" {
		t.Skip("run as a child only")
	}
	f := strings.Split(env, "\x1f") // point, spec, journal, address
	ctx := context.Background()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	g, err := qemu.Open(ctx, f[1], qemu.WithJournal(f[2]))
	if err != nil {
		fail(err)
	}
	var addr uint64
	fmt.Sscanf(f[3], "%x", &addr)
	switch f[0] {
	case "attached":
	case "paused":
		err = g.Pause(ctx)
	case "armed":
		// a breakpoint and a watchpoint, the guest running into the first
		err = g.Insert(ctx, vmi.Breakpoint(vmi.VA(addr)))
		if err == nil {
			err = g.Insert(ctx, vmi.Watchpoint(vmi.VA(addr+0x1000)&^7, 8, vmi.Write))
		}
		if err == nil {
			err = g.Resume(ctx)
		}
	}
	if err != nil {
		fail(err)
	}
	fmt.Println("ready")
	select {}
}

// TestGuestReleaseAfterSIGKILL kills vmscope with SIGKILL at several points
// of its work on the fixture guest (attached; paused; a breakpoint and a
// watchpoint armed; inside the step-and-re-arm loop of `guest break`; with
// the guest paused by its owner before vmscope came), checks that QEMU kept
// what was left (a stopped guest, a journal, a new attach refused), runs
// `guest release`, and checks that the guest ends in the state it was found
// in with no trap left: it runs on for 3 s through the breakpointed idle
// function, which it enters every few milliseconds (a breakpoint left armed
// would stop it: QEMU then reports the run state "debug"), and a new stub
// client finds nothing to remove.
func TestGuestReleaseAfterSIGKILL(t *testing.T) {
	l := liveGuest(t)
	addr := l.symbol(t, idleSymbol)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, tc := range []struct {
		point       string
		foundPaused bool // the guest's owner paused it before vmscope attached
		wantStopped bool // QEMU keeps the guest stopped after the kill
		process     bool // the qemu: spec (a pause is a QMP stop; a trap attaches the stub)
	}{
		{point: "paused", wantStopped: true, process: true},
		{point: "armed", wantStopped: true, process: true},
		{point: "attached"},
		{point: "paused", wantStopped: true},
		{point: "armed", wantStopped: true},
		{point: "stepping", wantStopped: true},
		{point: "armed", foundPaused: true, wantStopped: true},
		{point: "dumping", wantStopped: true},
	} {
		name := tc.point
		if tc.foundPaused {
			name += "-found-paused"
		}
		spec := l.spec
		if tc.process {
			name, spec = "process-"+name, l.procSpec
		}
		t.Run(name, func(t *testing.T) {
			journal := filepath.Join(t.TempDir(), "guest.journal")
			before := l.xp(t, ctx, addr)
			if tc.foundPaused {
				if err := l.ref.Stop(ctx); err != nil {
					t.Fatal(err)
				}
			}
			var child *exec.Cmd
			switch tc.point {
			case "dumping":
				child = exec.Command(os.Args[0], "-test.run=^TestGuestCLIChild$")
				child.Env = append(os.Environ(), "VMSCOPE_CLI_CHILD="+strings.Join([]string{"guest", "dump", "--guest", spec, "--journal", journal, filepath.Join(t.TempDir(), "g.elf")}, "\x1f"))
			case "stepping":
				child = exec.Command(os.Args[0], "-test.run=^TestGuestCLIChild$")
				child.Env = append(os.Environ(), "VMSCOPE_CLI_CHILD="+strings.Join([]string{"guest", "break", "--guest", spec, "--journal", journal, fmt.Sprintf("%#x", addr)}, "\x1f"))
			default:
				child = exec.Command(os.Args[0], "-test.run=^TestGuestKillChild$")
				child.Env = append(os.Environ(), "VMSCOPE_KILL_CHILD="+strings.Join([]string{tc.point, spec, journal, fmt.Sprintf("%x", addr)}, "\x1f"))
			}
			stdout, err := child.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			child.Stderr = &stderr
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			// ready: the kill point is reached (the loop: 3 hits reported)
			lines := make(chan string, 100)
			go func() {
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
			}()
			want, got := 1, 0
			switch tc.point {
			case "stepping":
				want = 3
			case "dumping":
				// the journal is written just before the QMP stop; QEMU
				// writes the dump (512 MiB) for a few seconds after it
				want = 0
				for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
					if _, err := os.Stat(journal); err == nil {
						break
					}
					if time.Since(start) > 90*time.Second {
						t.Fatal("no journal in 90 s")
					}
				}
				time.Sleep(300 * time.Millisecond)
			}
			timeout := time.After(90 * time.Second)
			for got < want {
				select {
				case line, ok := <-lines:
					if !ok {
						child.Wait()
						t.Fatalf("child ended before its kill point: %s", stderr.String())
					}
					if line == "ready" || strings.HasPrefix(line, "hit ") {
						got++
					}
				case <-timeout:
					child.Process.Kill()
					child.Wait()
					t.Fatalf("kill point not reached in 90 s: %s", stderr.String())
				}
			}
			if err := child.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			child.Wait()

			// What a SIGKILL leaves: the journal, and a stopped guest.
			if _, err := os.Stat(journal); err != nil {
				t.Fatalf("no journal after the kill: %v", err)
			}
			if tc.wantStopped {
				waitState(t, ctx, l, func(s string) bool { return s != "running" }, "stopped after the kill")
			}
			if after := l.xp(t, ctx, addr); after != before {
				t.Errorf("memory at the breakpoint changed:\n%s\n%s", before, after)
			}
			// A new vmscope on the guest is refused until the release.
			if _, errOut, code := vmscope(t, "guest", "info", "--guest", spec, "--journal", journal); code != exitError || !strings.Contains(errOut, "guest release") {
				t.Errorf("guest info on a guest left by a killed vmscope: exit %d: %s", code, errOut)
			}

			out, errOut, code := vmscope(t, "guest", "release", "--guest", spec, "--journal", journal)
			if code != 0 {
				t.Fatalf("guest release: exit %d: %s%s", code, out, errOut)
			}
			t.Logf("release: %s", strings.TrimSpace(out))
			if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("journal left after release: %v", err)
			}
			if tc.foundPaused {
				if !strings.Contains(out, "guest: left paused") {
					t.Errorf("release of a guest found paused: %s", out)
				}
				st, err := l.ref.Status(ctx)
				if err != nil || st.Running {
					t.Errorf("guest found paused runs after release: %+v %v", st, err)
				}
				// its owner resumes it: no trap of vmscope's stops it
				if err := l.ref.Cont(ctx); err != nil {
					t.Fatal(err)
				}
			} else if !strings.Contains(out, "guest: resumed") {
				t.Errorf("release: %s", out)
			}
			// Runs on through the idle function for 3 s: no breakpoint left.
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) {
				st, err := l.ref.Status(ctx)
				if err != nil || st.Status != "running" {
					t.Fatalf("guest not running after release: %+v %v", st, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			checkNoTraps(t, ctx, l, []qemu.Breakpoint{
				{Kind: qemu.SoftwareBreak, Addr: vmi.VA(addr), Size: 1},
				{Kind: qemu.WriteWatch, Addr: vmi.VA(addr+0x1000) &^ 7, Size: 8},
			})
			// And a second release has nothing to do.
			if out, _, code := vmscope(t, "guest", "release", "--guest", spec, "--journal", journal); code != 0 || !strings.Contains(out, "nothing to release") {
				t.Errorf("second release: exit %d: %s", code, out)
			}
		})
	}
}

// waitState waits up to 30 s for QMP's run state to satisfy ok.
func waitState(t *testing.T, ctx context.Context, l *cliLive, ok func(string) bool, what string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		st, err := l.ref.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if last = st.Status; ok(last) {
			return
		}
	}
	t.Fatalf("guest not %s: run state %q", what, last)
}

// checkNoTraps attaches a fresh stub client: removing each trap must fail
// (the stub holds none of them), and physical-memory mode is off. Its
// detach resumes the guest.
func checkNoTraps(t *testing.T, ctx context.Context, l *cliLive, bps []qemu.Breakpoint) {
	t.Helper()
	d, err := qemu.DialGDB(ctx, l.gdb)
	if err != nil {
		t.Fatal(err)
	}
	for _, bp := range bps {
		var se *qemu.StubError
		if err := d.Remove(ctx, bp.Kind, uint64(bp.Addr), bp.Size); !errors.As(err, &se) {
			t.Errorf("%s at %v left: remove answered %v", bp.Kind, bp.Addr, err)
		}
	}
	if on, err := d.PhysicalMode(ctx); err != nil || on {
		t.Errorf("physical-memory mode left on: %v %v", on, err)
	}
	if err := d.Detach(ctx); err != nil {
		t.Error(err)
	}
	d.Close()
	l.mustRun(t)
}

// xp returns QEMU's own view of the 16 bytes at kernel address va
// (gva2gpa, then xp).
func (l *cliLive) xp(t *testing.T, ctx context.Context, va uint64) string {
	t.Helper()
	out, err := l.ref.HMP(ctx, fmt.Sprintf("gva2gpa %#x", va))
	if err != nil {
		t.Fatal(err)
	}
	var pa uint64
	if _, err := fmt.Sscanf(out, "gpa: %x", &pa); err != nil {
		t.Fatalf("gva2gpa %q", out)
	}
	if out, err = l.ref.HMP(ctx, fmt.Sprintf("xp /16xb %#x", pa)); err != nil {
		t.Fatal(err)
	}
	return out
}
