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
	ref       *qemu.QMP
	cmd       *exec.Cmd
}

func liveGuest(t *testing.T) *cliLive {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a guest")
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
	return &cliLive{spec: "gdb://" + gdb + ",qmp=unix:" + qmpA, gdb: gdb, ref: ref, cmd: cmd}, nil
}

func TestMain(m *testing.M) {
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
	os.Exit(code)
}

func (l *cliLive) mustRun(t *testing.T) {
	t.Helper()
	st, err := l.ref.Status(context.Background())
	if err != nil || st.Status != "running" {
		t.Errorf("guest state %+v, %v: want running", st, err)
	}
}

func TestGuestInfo(t *testing.T) {
	l := liveGuest(t)
	out, errOut, code := vmscope(t, "guest", "info", "--guest", l.spec)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"state: running", "vcpus: 1", "long/", "CR3", "memory: 4 ranges", "kernel: Linux version ", "symbols: "} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	l.mustRun(t)
	if _, _, code := vmscope(t, "guest", "info"); code != exitError {
		t.Errorf("no --guest: exit %d", code)
	}
}

func TestGuestDump(t *testing.T) {
	l := liveGuest(t)
	out := filepath.Join(t.TempDir(), "g.elf")
	stdout, errOut, code := vmscope(t, "guest", "dump", "--guest", l.spec, out)
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
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// a kernel address the idle vCPU will run: its RIP, stopped in hlt
	g, err := qemu.Open(ctx, "gdb://"+l.gdb)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := g.Regs(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if c.RIP < 0xffff800000000000 {
		t.Skipf("vCPU stopped in user space at %#x", c.RIP)
	}
	addr := c.RIP
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
	child.Env = append(os.Environ(), "VMSCOPE_CLI_CHILD="+strings.Join([]string{"guest", "break", "--guest", l.spec, fmt.Sprintf("%#x", addr)}, "\x1f"))
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
			t.Log("fewer than 2 hits in 90 s; killing anyway")
			break wait
		}
	}
	child.Process.Signal(syscall.SIGTERM)
	err = child.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitError {
		t.Errorf("child exit: %v (want status %d after SIGTERM): %s", err, exitError, stderr.String())
	}
	t.Logf("child stopped after %d hits: %s", hits, strings.TrimSpace(stderr.String()))
	l.mustRun(t)
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
	_ = vmi.VA(addr)
}
