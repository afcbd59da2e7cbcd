// Package injecttest boots the injection fixture (testdata/inject/build.sh)
// for the tests of package inject and of `vmscope inject`: the Debian
// kernel of testdata/guest under QEMU (TCG) with the read-only ext4 data
// disk, a GDB stub and QMP on the host, a command port (the guest's
// /dev/ttyS1) and the dummy's output port (/dev/ttyS2, a file). The
// console holds the guest's own view of the known targets.
package injecttest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// Dir is the fixture folder, testdata/out-inject.
func Dir() string { return filepath.Join(fixture.Root(), "testdata", "out-inject") }

// Guest is the fixture guest, running.
type Guest struct {
	Spec    string // qemu:pid=PID,qmp=unix:PATH,gdb=HOST:PORT
	QMP     string
	Console string
	Dummy   string // the dummy's output (DUMMY OK n lines)
	Ctl     string
	Dir     string
	Image   string // the data disk (read-only)
	PID     int    // QEMU's pid
	cmd     *exec.Cmd
	exited  chan struct{}
	mu      sync.Mutex
	seq     int
}

// Option is an optional setting of Boot.
type Option func(*config)

type config struct{ cpus int }

// WithCPUs boots n vCPUs (1 by default).
func WithCPUs(n int) Option { return func(c *config) { c.cpus = n } }

// Boot boots the fixture guest with extra kernel arguments, waits for its
// READY marker and stops it when the test ends. The kernel skips its
// timer-IRQ check (no_timer_check): on a loaded host under TCG the check
// can miss ticks and panic ("IO-APIC + timer doesn't work"). It skips (fails under CI)
// when the fixture or QEMU is missing.
func Boot(t testing.TB, appendArgs string, opts ...Option) *Guest {
	t.Helper()
	cfg := config{cpus: 1}
	for _, o := range opts {
		o(&cfg)
	}
	if testing.Short() {
		fixture.Missing(t, "-short: boots a guest")
	}
	fixture.Tool(t, "qemu-system-x86_64")
	src := Dir()
	for _, f := range []string{"vmlinuz", "initrd.gz", "data.img"} {
		if _, err := os.Stat(filepath.Join(src, f)); err != nil {
			fixture.Missing(t, "%s (bash testdata/inject/build.sh)", filepath.Join(src, f))
		}
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gdb := l.Addr().String()
	l.Close()
	sock, err := os.MkdirTemp("", "vmscope-inject")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	g := &Guest{QMP: filepath.Join(sock, "qmp"), Ctl: filepath.Join(sock, "ctl"), Image: filepath.Join(src, "data.img"),
		Console: filepath.Join(dir, "console.log"), Dummy: filepath.Join(dir, "dummy.log"), Dir: dir, exited: make(chan struct{})}
	g.Spec = "gdb://" + gdb + ",qmp=unix:" + g.QMP
	var stderr bytes.Buffer
	g.cmd = exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", strconv.Itoa(cfg.cpus),
		"-nographic", "-display", "none", "-no-reboot",
		"-kernel", filepath.Join(src, "vmlinuz"), "-initrd", filepath.Join(src, "initrd.gz"),
		"-append", strings.TrimSpace("console=ttyS0 quiet panic=-1 no_timer_check "+appendArgs),
		"-serial", "file:"+g.Console, "-serial", "unix:"+g.Ctl+",server=on,wait=off", "-serial", "file:"+g.Dummy,
		"-monitor", "none", "-gdb", "tcp:"+gdb, "-qmp", "unix:"+g.QMP+",server=on,wait=off",
		"-net", "none", "-drive", "file="+g.Image+",format=raw,if=virtio,readonly=on")
	g.cmd.Stderr = &stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g.PID = g.cmd.Process.Pid
	// memory from the QEMU process, the stub for registers and traps
	g.Spec = fmt.Sprintf("qemu:pid=%d,qmp=unix:%s,gdb=%s", g.PID, g.QMP, gdb)
	go func() { g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() {
		if !g.Running() {
			t.Logf("QEMU exited before the test ended: %v\n%s\n%s", g.cmd.ProcessState, stderr.String(), tail(must(os.ReadFile(g.Console))))
		}
		g.cmd.Process.Kill()
		<-g.exited
	})
	if err := g.WaitFor("=== READY ===", 4*time.Minute); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	return g
}

// Running reports whether QEMU still runs.
func (g *Guest) Running() bool {
	select {
	case <-g.exited:
		return false
	default:
		return true
	}
}

// WaitFor waits until the console holds marker, or QEMU exits, or d passes.
func (g *Guest) WaitFor(marker string, d time.Duration) error {
	end := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(g.Console)
		if bytes.Contains(b, []byte(marker)) {
			return nil
		}
		if bytes.Contains(b, []byte("=== FAIL")) {
			return fmt.Errorf("injecttest: the guest failed:\n%s", b)
		}
		if !g.Running() || time.Now().After(end) {
			return fmt.Errorf("injecttest: no %q on the console (qemu running: %v):\n%s", marker, g.Running(), tail(b))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(b []byte) []byte {
	if len(b) > 4000 {
		return b[len(b)-4000:]
	}
	return b
}

// Section returns the lines of console section name.
func (g *Guest) Section(name string) []string {
	b, _ := os.ReadFile(g.Console)
	var out []string
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.HasSuffix(l, "=== BEGIN "+name+" ==="):
			in, out = true, nil
		case in && l == "=== END "+name+" ===":
			return out
		case in:
			out = append(out, l)
		}
	}
	return nil
}

// Role is the pid of a scenario role (dummy, sleep, strict, threader, nc).
func (g *Guest) Role(name string) int {
	for _, l := range g.Section("scenario") {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == name {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// Send sends one command line to the guest's command loop.
func (g *Guest) Send(line string) error {
	c, err := net.Dial("unix", g.Ctl)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = io.WriteString(c, line+"\n")
	time.Sleep(300 * time.Millisecond)
	return err
}

// Snap asks the guest for a process's maps, descriptors and signal masks
// (the snap command of testdata/inject/init.sh) and returns the lines.
func (g *Guest) Snap(pid int) ([]string, error) {
	g.mu.Lock()
	g.seq++
	id := fmt.Sprintf("s%d", g.seq)
	g.mu.Unlock()
	for try := 0; try < 3; try++ {
		if err := g.Send(fmt.Sprintf("snap %d %s", pid, id)); err != nil {
			return nil, err
		}
		if err := g.WaitFor("=== END snap "+id+" ===", 30*time.Second); err == nil {
			return g.Section("snap " + id), nil
		}
	}
	return nil, fmt.Errorf("injecttest: no snap %s", id)
}

// Run runs a shell command in the guest and returns its output lines.
func (g *Guest) Run(cmd string) ([]string, error) {
	g.mu.Lock()
	g.seq++
	id := fmt.Sprintf("r%d", g.seq)
	g.mu.Unlock()
	for try := 0; try < 3; try++ {
		if err := g.Send(fmt.Sprintf("run %s %s", id, cmd)); err != nil {
			return nil, err
		}
		if err := g.WaitFor("=== END run "+id+" ===", 60*time.Second); err == nil {
			return g.Section("run " + id), nil
		}
	}
	return nil, fmt.Errorf("injecttest: no output of %q", cmd)
}

// DummyLines returns the dummy's output lines so far.
func (g *Guest) DummyLines() []string {
	b, _ := os.ReadFile(g.Dummy)
	return strings.Split(strings.TrimSpace(strings.ReplaceAll(string(b), "\r", "")), "\n")
}

// DummyOK waits until the dummy printed n more DUMMY OK lines than it had,
// and reports any DUMMY CORRUPT line.
func (g *Guest) DummyOK(n int, d time.Duration) error {
	count := func() (ok int, bad string) {
		for _, l := range g.DummyLines() {
			if strings.HasPrefix(l, "DUMMY OK") {
				ok++
			} else if strings.HasPrefix(l, "DUMMY CORRUPT") {
				bad = l
			}
		}
		return
	}
	start, bad := count()
	if bad != "" {
		return fmt.Errorf("injecttest: the dummy says %q", bad)
	}
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		now, bad := count()
		if bad != "" {
			return fmt.Errorf("injecttest: the dummy says %q", bad)
		}
		if now >= start+n {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("injecttest: the dummy printed no %d more DUMMY OK lines in %v", n, d)
}

func must(b []byte, _ error) []byte { return b }
