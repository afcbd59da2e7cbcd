// Package watchtest boots the watch fixture (testdata/watch/build.sh) for
// the tests of package watch and of `vmscope watch`: the Debian kernel of
// testdata/guest under QEMU (TCG) with an ext4 data disk on virtio-blk, a
// GDB stub and QMP on the host, and a second serial port whose first line
// starts the guest's file scenario. The guest's console holds its own view
// (stat, ls -i, the scenario's ACT lines, inotify's INOTIFY lines).
package watchtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// Dir is the fixture folder, testdata/out-watch.
func Dir() string { return filepath.Join(fixture.Root(), "testdata", "out-watch") }

// Guest is the fixture guest, running.
type Guest struct {
	Spec    string // gdb://HOST:PORT,qmp=unix:PATH
	GDB     string
	QMP     string
	Console string
	Ctl     string // unix socket of the guest's /dev/ttyS1
	Dir     string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// Dir510 is the fixture on the previous Debian stable kernel (5.10),
// testdata/out-watch510 (testdata/watch/guest510.sh).
func Dir510() string { return filepath.Join(fixture.Root(), "testdata", "out-watch510") }

// Boot boots the fixture guest with extra kernel arguments, waits for its
// READY marker and stops it when the test ends. It skips (fails under CI)
// when the fixture or QEMU is missing.
func Boot(t testing.TB, appendArgs string) *Guest {
	t.Helper()
	return BootFrom(t, Dir(), "bash testdata/watch/build.sh", appendArgs)
}

// BootFrom is Boot of the fixture in folder src, which script builds.
func BootFrom(t testing.TB, src, script, appendArgs string) *Guest {
	t.Helper()
	if testing.Short() {
		fixture.Missing(t, "-short: boots a guest")
	}
	fixture.Tool(t, "qemu-system-x86_64")
	for _, f := range []string{"vmlinuz", "initrd.gz", "data.img"} {
		if _, err := os.Stat(filepath.Join(src, f)); err != nil {
			fixture.Missing(t, "%s (%s)", filepath.Join(src, f), script)
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "data.img")
	b, err := os.ReadFile(filepath.Join(src, "data.img"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gdb := l.Addr().String()
	l.Close()
	sock, err := os.MkdirTemp("", "vmscope-watch")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	g := &Guest{GDB: gdb, QMP: filepath.Join(sock, "qmp"), Ctl: filepath.Join(sock, "ctl"),
		Console: filepath.Join(dir, "console.log"), Dir: dir, exited: make(chan struct{})}
	g.Spec = "gdb://" + g.GDB + ",qmp=unix:" + g.QMP
	var stderr bytes.Buffer
	g.cmd = exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "1",
		"-nographic", "-display", "none", "-no-reboot",
		"-kernel", filepath.Join(src, "vmlinuz"), "-initrd", filepath.Join(src, "initrd.gz"),
		// no_timer_check: a loaded host's TCG can miss the boot's IO-APIC
		// timer check, and the kernel panics ("IO-APIC + timer doesn't work")
		"-append", strings.TrimSpace("console=ttyS0 quiet panic=-1 no_timer_check "+appendArgs),
		"-serial", "file:"+g.Console, "-serial", "unix:"+g.Ctl+",server=on,wait=off",
		"-monitor", "none", "-gdb", "tcp:"+g.GDB, "-qmp", "unix:"+g.QMP+",server=on,wait=off",
		"-net", "none", "-drive", "file="+img+",format=raw,if=virtio")
	g.cmd.Stderr = &stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() { g.cmd.Process.Kill(); <-g.exited })
	if err := g.WaitFor("=== READY ===", 4*time.Minute); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	return g
}

// CPUTime is the CPU time QEMU has used so far (user and system, from
// /proc/PID/stat): what the guest's work costs the host, whatever else
// loads it.
func (g *Guest) CPUTime() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", g.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// the fields after the command name, which is in parentheses
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("watchtest: /proc/%d/stat: %q", g.cmd.Process.Pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("watchtest: /proc/%d/stat: %d fields", g.cmd.Process.Pid, len(f))
	}
	// utime and stime are fields 14 and 15 of stat(5), 12 and 13 after ")"
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("watchtest: /proc/%d/stat: utime %q stime %q", g.cmd.Process.Pid, f[11], f[12])
	}
	return time.Duration(u+s) * time.Second / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

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
	return g.WaitAfter(0, marker, d)
}

// Mark is the console's length now: a position for WaitAfter and
// ActionsAfter, so that a command run again on the same guest is told
// apart from its earlier runs.
func (g *Guest) Mark() int {
	b, _ := os.ReadFile(g.Console)
	return len(b)
}

// after is the console from position mark on.
func (g *Guest) after(mark int) []byte {
	b, _ := os.ReadFile(g.Console)
	if mark > len(b) {
		return nil
	}
	return b[mark:]
}

// WaitAfter is WaitFor of marker in the console from position mark on.
func (g *Guest) WaitAfter(mark int, marker string, d time.Duration) error {
	end := time.Now().Add(d)
	for {
		b := g.after(mark)
		if bytes.Contains(b, []byte(marker)) {
			return nil
		}
		if bytes.Contains(b, []byte("=== FAIL")) {
			return fmt.Errorf("watchtest: the guest failed:\n%s", b)
		}
		if !g.Running() || time.Now().After(end) {
			return fmt.Errorf("watchtest: no %q on the console (qemu running: %v):\n%s", marker, g.Running(), b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Start sends the line that starts the guest's scenario and waits until
// the guest says it started (sending again if the line was lost, as it
// can be when the guest's read loop reopens its port).
func (g *Guest) Start() error {
	return g.StartCommand("go", "=== SCENARIO START ===")
}

// StartCommand sends command line cmd (see testdata/watch/init.sh) and
// waits until the guest prints marker after it, sending again if the line
// was lost.
func (g *Guest) StartCommand(cmd, marker string) error {
	mark := g.Mark()
	var err error
	for i := 0; i < 3; i++ {
		if err = g.Send(cmd); err != nil {
			continue
		}
		// long enough for a loaded host: a second command the guest did
		// get runs it again after the first
		if err = g.WaitAfter(mark, marker, time.Minute); err == nil {
			return nil
		}
	}
	return err
}

// Send sends one command line to the guest's command loop
// (testdata/watch/init.sh).
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

// Section returns the lines of console section name (between "=== BEGIN
// name ===" and "=== END name ===").
func (g *Guest) Section(name string) []string {
	b, _ := os.ReadFile(g.Console)
	var out []string
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.HasSuffix(l, "=== BEGIN "+name+" ==="):
			in = true
		case in && l == "=== END "+name+" ===":
			return out
		case in:
			out = append(out, l)
		}
	}
	return out
}

// Stat is a line of the guest's `stat -c '%n %i %d'`: inode and st_dev.
type Stat struct {
	Ino, Dev uint64
}

// Stats parses section name of stat lines by path.
func (g *Guest) Stats(name string) (map[string]Stat, error) {
	m := map[string]Stat{}
	for _, l := range g.Section(name) {
		f := strings.Fields(l)
		if len(f) != 3 {
			return nil, fmt.Errorf("watchtest: stat line %q", l)
		}
		ino, err1 := strconv.ParseUint(f[1], 10, 64)
		dev, err2 := strconv.ParseUint(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("watchtest: stat line %q", l)
		}
		m[f[0]] = Stat{ino, dev}
	}
	return m, nil
}

// Action is an ACT line of the scenario: one system call on one file.
type Action struct {
	PID, UID, EUID int
	Comm, Kind     string
	Path, Result   string
	Ino            uint64 // the inode number a create got (0 for other kinds)
}

// Actions parses the ACT lines of the console.
func (g *Guest) Actions() []Action { return g.ActionsAfter(0) }

// ActionsAfter parses the ACT lines of the console from position mark on.
func (g *Guest) ActionsAfter(mark int) []Action {
	b := g.after(mark)
	var out []Action
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimRight(l, "\r")
		i := strings.Index(l, "ACT pid=")
		if i < 0 {
			continue
		}
		var a Action
		for _, f := range strings.Fields(l[i+4:]) {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "pid":
				a.PID, _ = strconv.Atoi(v)
			case "uid":
				a.UID, _ = strconv.Atoi(v)
			case "euid":
				a.EUID, _ = strconv.Atoi(v)
			case "comm":
				a.Comm = v
			case "kind":
				a.Kind = v
			case "path":
				a.Path = v
			case "result":
				a.Result = v
			case "ino":
				a.Ino, _ = strconv.ParseUint(v, 10, 64)
			}
		}
		out = append(out, a)
	}
	return out
}

// Lines returns the console lines that contain s.
func (g *Guest) Lines(s string) []string {
	b, _ := os.ReadFile(g.Console)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, strings.TrimRight(l, "\r"))
		}
	}
	return out
}

// Context is a context for a guest operation of at most d.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
