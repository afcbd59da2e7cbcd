package cfi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// The live tests boot the guest fixture's kernel (testdata/guest/build.sh)
// on the cfi workload initramfs with the TCG plugin loaded
// (testdata/cfi-plugin/build.sh), under QEMU TCG.

// cfiFixture returns the kernel, the workload initramfs and the plugin.
func cfiFixture(t *testing.T) (kernel, initrd, plugin string) {
	t.Helper()
	if testing.Short() {
		fixture.Missing(t, "-short: the live cfi tests boot a guest")
	}
	fixture.Tool(t, "qemu-system-x86_64")
	kernel = fixture.GuestPath(t, "vmlinuz")
	dir := filepath.Join(fixture.Root(), "testdata", "out-cfi-plugin")
	initrd, plugin = filepath.Join(dir, "initrd.gz"), filepath.Join(dir, "cfi-plugin.so")
	for _, p := range []string{initrd, plugin} {
		if _, err := os.Stat(p); err != nil {
			fixture.Missing(t, "%s (run bash testdata/cfi-plugin/build.sh)", p)
		}
	}
	return kernel, initrd, plugin
}

// testGuest is a booted QEMU: Spec for vmscope (GDB stub + its QMP
// socket), Ref the test's own QMP, Plugin the plugin's socket.
type testGuest struct {
	Spec, Console, Plugin string
	Ref                   *qemu.QMP
	cmd                   *exec.Cmd
	done                  chan struct{}
	stderr                bytes.Buffer
	sock                  string // the sockets' folder
}

// bootGuest boots the workload guest with the plugin and extra QEMU
// arguments and waits for READY; QEMU is quit when the test ends.
func bootGuest(t *testing.T, appendArgs string, extra ...string) *testGuest {
	t.Helper()
	kernel, initrd, plugin := cfiFixture(t)
	g, err := startGuest(kernel, initrd, plugin, t.TempDir(), appendArgs, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.quit)
	return g
}

// startGuest boots the workload guest, its console in dir, and waits for
// READY; the caller quits it.
func startGuest(kernel, initrd, plugin, dir, appendArgs string, extra ...string) (*testGuest, error) {
	sock, err := os.MkdirTemp("", "cfi")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(sock)
		return nil, err
	}
	gdb := l.Addr().String()
	l.Close()
	g := &testGuest{Console: filepath.Join(dir, "console.log"), Plugin: filepath.Join(sock, "p.sock"), done: make(chan struct{}), sock: sock}
	qmpA, qmpB := filepath.Join(sock, "a.sock"), filepath.Join(sock, "b.sock")
	g.Spec = "gdb://" + gdb + ",qmp=unix:" + qmpA
	args := []string{"-accel", "tcg", "-m", "512", "-smp", "1", "-nographic", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", strings.TrimSpace("console=ttyS0 quiet panic=-1 " + appendArgs),
		"-serial", "file:" + g.Console, "-monitor", "none", "-net", "none", "-gdb", "tcp:" + gdb,
		"-qmp", "unix:" + qmpA + ",server=on,wait=off", "-qmp", "unix:" + qmpB + ",server=on,wait=off",
		"-plugin", plugin + ",sock=" + g.Plugin}
	g.cmd = exec.Command("qemu-system-x86_64", append(args, extra...)...)
	g.cmd.Stderr = &g.stderr
	if err := g.cmd.Start(); err != nil {
		os.RemoveAll(sock)
		return nil, err
	}
	go func() { g.cmd.Wait(); close(g.done) }()
	deadline := time.After(4 * time.Minute)
	for {
		if b, _ := os.ReadFile(g.Console); bytes.Contains(b, []byte("=== READY ===")) {
			break
		}
		select {
		case <-g.done:
			b, _ := os.ReadFile(g.Console)
			g.quit()
			return nil, fmt.Errorf("qemu exited before READY: %v %s; console tail: %q", g.cmd.ProcessState, g.stderr.String(), b[max(0, len(b)-600):])
		case <-deadline:
			g.quit()
			return nil, errors.New("no READY on the console")
		case <-time.After(200 * time.Millisecond):
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if g.Ref, err = qemu.DialQMP(ctx, qmpB); err != nil {
		g.quit()
		return nil, err
	}
	return g, nil
}

// quit ends QEMU (QMP quit, then kill) and waits for it.
func (g *testGuest) quit() {
	if g.Ref != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		g.Ref.Quit(ctx)
		cancel()
		g.Ref.Close()
		g.Ref = nil
	}
	select {
	case <-g.done:
	case <-time.After(15 * time.Second):
		g.cmd.Process.Kill()
		<-g.done
	}
	os.RemoveAll(g.sock)
}

// running fails the test unless QMP says the guest runs (within 2 s: a
// resume through the stub is not waited for).
func (g *testGuest) running(t *testing.T) {
	t.Helper()
	for i := 0; ; i++ {
		st, err := g.Ref.Status(context.Background())
		if err == nil && st.Running {
			return
		}
		if i == 20 {
			t.Errorf("guest status %+v, %v: want running", st, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// attach opens the guest's stub and finds its kernel and regions.
func attach(t *testing.T, g *testGuest) (*qemu.Guest, *linux.Kernel, *Regions) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	qg, err := qemu.Open(ctx, g.Spec, qemu.WithoutJournal())
	if err != nil {
		t.Fatal(err)
	}
	fail := func(err error) {
		qg.Close(context.Background())
		t.Fatal(err)
	}
	cpus, err := qg.CPUs(ctx)
	if err != nil {
		fail(err)
	}
	k, err := linux.Discover(ctx, qg, linux.WithCPUs(cpus))
	if err != nil {
		fail(err)
	}
	r, err := LoadRegions(ctx, k)
	if err != nil {
		fail(err)
	}
	return qg, k, r
}

// startPlugin runs a PluginSource on g's socket into a collector and
// returns once the plugin has taken the client (failing t if Run ends or
// ctx does first). stop cancels the source and returns Run's error; later
// calls return nil.
func startPlugin(ctx context.Context, t *testing.T, g *testGuest) (*collector, func() error) {
	t.Helper()
	plug := &collector{}
	ready := make(chan struct{})
	pctx, pcancel := context.WithCancel(ctx)
	perr := make(chan error, 1)
	go func() {
		perr <- (&PluginSource{Socket: g.Plugin, OnReady: func() { close(ready) }}).Run(pctx, plug.emit)
	}()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		pcancel()
		return <-perr
	}
	select {
	case <-ready:
	case err := <-perr:
		stopped = true
		pcancel()
		t.Fatal(err)
	case <-ctx.Done():
		stop()
		t.Fatal(ctx.Err())
	}
	return plug, stop
}

// collector keeps a source's events.
type collector struct {
	mu  sync.Mutex
	evs []Event
}

func (c *collector) emit(ev Event) error {
	c.mu.Lock()
	c.evs = append(c.evs, ev)
	c.mu.Unlock()
	return nil
}

func (c *collector) pages() map[vmi.VA]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[vmi.VA]bool{}
	for _, ev := range c.evs {
		if !ev.Replay {
			out[ev.Page] = true
		}
	}
	return out
}

// execLogPages reads the pages of the TB start addresses QEMU's
// -d exec,nochain log holds ("Trace N: HOST [CSBASE/PC/FLAGS/CFLAGS] SYM").
func execLogPages(t *testing.T, path string) map[vmi.VA]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[vmi.VA]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "Trace ") {
			continue
		}
		i, j := strings.IndexByte(line, '['), strings.IndexByte(line, ']')
		if i < 0 || j < i {
			t.Fatalf("exec log line %q", line)
		}
		f := strings.Split(line[i+1:j], "/")
		if len(f) < 2 {
			t.Fatalf("exec log line %q", line)
		}
		pc, err := strconv.ParseUint(f[1], 16, 64)
		if err != nil {
			t.Fatalf("exec log line %q: %v", line, err)
		}
		out[pageOf(vmi.VA(pc))] = true
		n++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("exec log: %d TB executions on %d pages", n, len(out))
	return out
}

var ripRE = regexp.MustCompile(`RIP=([0-9a-f]{16})`)

// TestSourcesAgainstExecLog checks the pages the plugin and the sampler
// report against an independent reference, QEMU's own log of every
// executed translation block (-d exec,nochain, kernel half only), over one
// window of the workload bounded by QMP stop: the plugin's pages are
// exactly the log's (less the page the vCPU was on when the window opened,
// on which it may run on without a transition), the sampler's are a subset
// of them, and the guest runs after the sampler.
func TestSourcesAgainstExecLog(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "exec.log")
	g := bootGuest(t, "", "-d", "nochain", "-D", logPath, "-dfilter", "0xffff800000000000..0xffffffffffffffff")
	qg, k, regions := attach(t, g)
	// The stub is attached again inside the window: a QMP stop while it
	// is attached would reach it as a stop it did not ask for.
	as := k.AS
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	if err := qg.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// Open the window: stop, turn the exec log on, register the plugin
	// client, note the RIP the window starts at, run.
	if err := g.Ref.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Ref.HMP(ctx, "log exec,nochain"); err != nil {
		t.Fatal(err)
	}
	plug, stopPlugin := startPlugin(ctx, t, g)
	defer stopPlugin()
	regs, err := g.Ref.HMP(ctx, "info registers")
	if err != nil {
		t.Fatal(err)
	}
	m := ripRE.FindStringSubmatch(regs)
	if m == nil {
		t.Fatalf("no RIP in %q", regs)
	}
	startRIP, _ := strconv.ParseUint(m[1], 16, 64)
	if err := g.Ref.Cont(ctx); err != nil {
		t.Fatal(err)
	}

	// Sample for 3 s.
	qg, err = qemu.Open(ctx, g.Spec, qemu.WithoutJournal())
	if err != nil {
		t.Fatal(err)
	}
	as.Mem = qg
	var samp collector
	ss := &SampleSource{Guest: qg, AS: as, Regions: regions, Rate: 100}
	sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
	err = ss.Run(sctx, samp.emit)
	scancel()
	if err != nil {
		t.Fatal(err)
	}
	g.running(t)
	if err := qg.Close(ctx); err != nil {
		t.Fatal(err)
	}
	g.running(t)

	// Close the window: stop, log off, drain the plugin.
	if err := g.Ref.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Ref.HMP(ctx, "log none"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the vCPU is stopped: what the plugin sent is in the socket
	if err := stopPlugin(); err != nil {
		t.Fatal(err)
	}
	g.quit() // flushes and closes the log
	logPages := execLogPages(t, logPath)

	plugPages := plug.pages()
	for p := range plugPages {
		if !logPages[p] {
			t.Errorf("plugin page %#x is not in QEMU's exec log", uint64(p))
		}
	}
	startPage := pageOf(vmi.VA(startRIP))
	missing := 0
	for p := range logPages {
		if !plugPages[p] {
			if p != startPage {
				t.Errorf("exec log page %#x not reported by the plugin (window started at RIP %#x)", uint64(p), startRIP)
			}
			missing++
		}
	}
	sampPages := samp.pages()
	for p := range sampPages {
		if !logPages[p] {
			t.Errorf("sampled page %#x is not in QEMU's exec log", uint64(p))
		}
	}
	if sst := ss.Stats(); len(sampPages) == 0 || sst.Kernel == 0 {
		t.Errorf("sampler saw no kernel page: %+v", sst)
	}
	if len(plugPages) < 100 {
		t.Errorf("plugin reported %d pages in the window", len(plugPages))
	}
	t.Logf("window: exec log %d pages; plugin %d (%d missing: the start page); sample %d pages (%+v)",
		len(logPages), len(plugPages), missing, len(sampPages), ss.Stats())
}

// TestStepWindows steps windows of __x64_sys_getdents64 (the workload's
// ls calls it) while the plugin (checked against QEMU's log above)
// reports the same window: every stepped page is one the plugin saw, each
// window starts on the entry's page, and the guest runs with no
// breakpoint afterwards.
func TestStepWindows(t *testing.T) {
	g := plainGuest(t) // the shared plain boot
	qg, k, _ := attach(t, g)
	defer qg.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	plug, stopPlugin := startPlugin(ctx, t, g)
	defer stopPlugin()
	entry, ok := k.Symbols.Addr("__x64_sys_getdents64")
	if !ok {
		t.Fatal("no __x64_sys_getdents64")
	}
	var step collector
	st := &StepSource{Guest: qg, AS: k.AS, Entry: entry, Windows: 3, MaxSteps: 3000}
	t0 := time.Now()
	if err := st.Run(ctx, step.emit); err != nil {
		t.Fatal(err)
	}
	t.Logf("stepping: %v, %+v", time.Since(t0), st.Stats())
	if bps := qg.Breakpoints(); len(bps) != 0 {
		t.Errorf("breakpoints left: %v", bps)
	}
	g.running(t)
	time.Sleep(time.Second)
	if err := stopPlugin(); err != nil {
		t.Fatal(err)
	}
	plugPages := plug.pages()
	stepPages := step.pages()
	for p := range stepPages {
		if !plugPages[p] {
			t.Errorf("stepped page %#x not reported by the plugin", uint64(p))
		}
	}
	windows := 0
	for _, ev := range step.evs {
		if ev.From == 0 {
			windows++
			if ev.Page != pageOf(entry) || ev.Addr != entry {
				t.Errorf("window starts at %#x, want the entry %#x", uint64(ev.Addr), uint64(entry))
			}
		}
	}
	if sts := st.Stats(); windows != 3 || sts.Windows != 3 || len(stepPages) < 2 {
		t.Errorf("%d windows (%+v), %d pages", windows, sts, len(stepPages))
	}
	t.Logf("step: %d pages, all among the plugin's %d", len(stepPages), len(plugPages))
}
