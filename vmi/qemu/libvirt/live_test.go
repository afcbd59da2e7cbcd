package libvirt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/qemu/libvirt/libvirttest"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// taintMessage is what libvirt 9.0 records for monitor pass-through:
// virDomainGetMessages (virsh dominfo's "Messages:") and, in the domain
// log, "Domain id=N is tainted: custom-monitor".
const (
	taintMessage = "tainted: custom monitor control commands issued"
	taintLog     = "is tainted: custom-monitor"
)

// TestDomain dials a real libvirt domain (libvirttest: libvirtd started
// without systemd, a transient type='qemu' domain booted from the guest
// fixture) and checks everything the endpoint gives against an
// independent reference: the monitor against libvirt's own state and the
// QEMU process, the PID against QEMU's vCPU thread ids, the taint against
// `virsh dominfo` and the domain log, and memory and processes read
// through a GDB stub opened on demand against a dump QEMU wrote and the
// guest's own ps.
func TestDomain(t *testing.T) {
	d := libvirttest.Start(t, libvirttest.Config{})
	ctx := ctxT(t, 10*time.Minute)
	ep, err := Dial(ctx, d.Spec())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	if ep.Name != d.Spec() || ep.Monitor == nil || ep.OpenGDB == nil || ep.GDB != "" || ep.Close == nil {
		t.Fatalf("endpoint %+v", ep)
	}
	if msgs := messages(t, d); has(msgs, taintMessage) {
		t.Fatalf("tainted before any monitor command: %q", msgs)
	}

	t.Run("monitor", func(t *testing.T) { testMonitor(t, ctx, d, ep) })
	t.Run("taint", func(t *testing.T) { testTaint(t, d) })
	t.Run("pid", func(t *testing.T) { testPID(t, ctx, d, ep) })
	t.Run("stub", func(t *testing.T) { testLive(t, ctx, d, ep, attachGDB) })
	t.Run("process", func(t *testing.T) { testLive(t, ctx, d, ep, attachProcess) })
}

func has(msgs []string, s string) bool {
	for _, m := range msgs {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// messages are libvirt's messages about the domain, from the test's own
// connection.
func messages(t *testing.T, d *libvirttest.Domain) []string {
	l, dom := d.Libvirt()
	m, err := l.DomainGetMessages(dom, 0)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func testMonitor(t *testing.T, ctx context.Context, d *libvirttest.Domain, ep qemu.Endpoint) {
	r, err := ep.Monitor.Execute(ctx, "query-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	var st qemu.Status
	if err := json.Unmarshal(r, &st); err != nil || !st.Running || st.Status != "running" {
		t.Errorf("query-status: %s %v", r, err)
	}
	if s := d.State(t); s != golibvirt.DomainRunning {
		t.Errorf("libvirt state %d, QMP says running", s)
	}
	// A QMP error answer keeps its class.
	_, err = ep.Monitor.Execute(ctx, "vmscope-no-such-command", nil)
	var qe *qemu.QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "vmscope-no-such-command" {
		t.Errorf("unknown command: %v, want a *qemu.QMPError of class CommandNotFound", err)
	}
	_, err = ep.Monitor.Execute(ctx, "query-status", map[string]any{"bogus": 1})
	if !errors.As(err, &qe) || qe.Class != "GenericError" {
		t.Errorf("bad argument: %v, want a *qemu.QMPError of class GenericError", err)
	}
	// HMP info ramblock: the guest RAM block is the domain's <memory>.
	out, err := ep.Monitor.HMP(ctx, "info ramblock")
	if err != nil {
		t.Fatal(err)
	}
	// Block Name  PSize  Offset  Used  Total
	m := regexp.MustCompile(`(?m)^\s*pc\.ram\s+\d+ [KMG]iB\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s*$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("info ramblock: no pc.ram block:\n%s", out)
	}
	if size, _ := strconv.ParseUint(m[1], 16, 64); size != 512<<20 {
		t.Errorf("info ramblock: pc.ram of %#x bytes, the domain has 512 MiB", size)
	}
	// the same through virsh, the reference client
	ref, err := exec.CommandContext(ctx, "virsh", "-q", "-c", "qemu:///system", "qemu-monitor-command", d.Name, "--hmp", "info ramblock").Output()
	if err != nil || strings.TrimSpace(string(ref)) != strings.TrimSpace(out) {
		t.Errorf("virsh qemu-monitor-command --hmp 'info ramblock' (%v):\n%s\nvmscope:\n%s", err, ref, out)
	}
}

// testTaint checks the package documentation's account of the taint.
func testTaint(t *testing.T, d *libvirttest.Domain) {
	if msgs := messages(t, d); !has(msgs, taintMessage) {
		t.Errorf("libvirt messages after monitor commands: %q, want %q", msgs, taintMessage)
	}
	out, err := exec.Command("virsh", "-c", "qemu:///system", "dominfo", d.Name).CombinedOutput()
	if err != nil || !strings.Contains(string(out), taintMessage) {
		t.Errorf("virsh dominfo (%v):\n%s\nwant %q", err, out, taintMessage)
	}
	log, err := os.ReadFile(d.LogFile())
	if err != nil || !bytes.Contains(log, []byte(taintLog)) {
		t.Errorf("%s (%v): no %q", d.LogFile(), err, taintLog)
	}
}

// testPID checks the PID against QEMU itself: every vCPU thread QMP
// names is a thread of that process, and the process runs QEMU.
func testPID(t *testing.T, ctx context.Context, d *libvirttest.Domain, ep qemu.Endpoint) {
	if ep.PID <= 1 {
		t.Fatalf("pid %d", ep.PID)
	}
	r, err := ep.Monitor.Execute(ctx, "query-cpus-fast", nil)
	if err != nil {
		t.Fatal(err)
	}
	var cpus []qemu.CPUInfo
	if err := json.Unmarshal(r, &cpus); err != nil || len(cpus) != 1 {
		t.Fatalf("query-cpus-fast: %s %v", r, err)
	}
	for _, c := range cpus {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", ep.PID, c.ThreadID)); err != nil {
			t.Errorf("vCPU %d thread %d is not a thread of pid %d: %v", c.Index, c.ThreadID, ep.PID, err)
		}
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", ep.PID))
	if err != nil || filepath.Base(exe) != "qemu-system-x86_64" {
		t.Errorf("pid %d runs %q (%v)", ep.PID, exe, err)
	}
}

// attached is vmscope's live path attached to the domain's endpoint.
type attached struct {
	live  vmi.Live
	stub  string                      // the stub's address; "" without one
	close func(context.Context) error // detaches (and closes the stub)
}

// attachGDB is the GDB-stub path: a stub opened on demand (ep.OpenGDB) and
// the existing qemu.Open on it. The process-memory path attaches through
// the same Endpoint; testLive is the same for both.
func attachGDB(t *testing.T, ctx context.Context, ep qemu.Endpoint) attached {
	addr, closeStub, err := ep.OpenGDB(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h, _, _ := net.SplitHostPort(addr); h != "127.0.0.1" {
		t.Errorf("stub on %s, want loopback", addr)
	}
	g, err := qemu.Open(ctx, "gdb://"+addr, qemu.WithJournal(filepath.Join(t.TempDir(), "journal")))
	if err != nil {
		closeStub(context.WithoutCancel(ctx))
		t.Fatal(err)
	}
	return attached{live: g, stub: addr, close: func(ctx context.Context) error {
		return errors.Join(g.Close(ctx), closeStub(ctx))
	}}
}

// testLive attaches (attach), pauses, lists the guest's processes as
// `mem ps` does and compares them with the guest's own ps, compares random
// pages with `virsh dump --memory-only` taken at the same stop (and that
// dump with Domain.DumpGuestMemory's), and checks that after the detach no stub
// listens and the guest runs.
func testLive(t *testing.T, ctx context.Context, d *libvirttest.Domain, ep qemu.Endpoint, attach func(*testing.T, context.Context, qemu.Endpoint) attached) {
	a := attach(t, ctx, ep)
	closed := false
	defer func() {
		if !closed {
			a.close(context.WithoutCancel(ctx))
		}
	}()
	g := a.live
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	checkPS(t, ctx, g, d.Truth(t))

	// virsh dump --memory-only at the stop the stub holds (libvirt sees
	// the domain paused and leaves it so). Not QMP dump-guest-memory
	// through the pass-through: libvirtd 9.0 crashes on the DUMP_COMPLETED
	// event of a dump it did not start (see the package documentation).
	if s := d.State(t); s != golibvirt.DomainPaused {
		t.Fatalf("libvirt state %d while the stub holds the guest, want paused", s)
	}
	dump := filepath.Join(d.Dir, "now.elf")
	defer os.Remove(dump)
	if out, err := exec.CommandContext(ctx, "virsh", "-q", "-c", "qemu:///system", "dump", d.Name, dump, "--memory-only", "--format", "elf").CombinedOutput(); err != nil {
		t.Fatalf("virsh dump: %v: %s", err, out)
	}
	if s := d.State(t); s != golibvirt.DomainPaused {
		t.Fatalf("libvirt state %d after virsh dump, want paused", s)
	}
	// The pass-through refuses dump-guest-memory (it would crash
	// libvirtd); Domain.DumpGuestMemory asks libvirt for the same dump.
	if _, err := ep.Monitor.Execute(ctx, "dump-guest-memory", map[string]any{"paging": false, "protocol": "file:" + dump + ".qmp"}); !errors.Is(err, ErrRefused) {
		t.Fatalf("dump-guest-memory through the pass-through: %v, want ErrRefused", err)
	}
	ours := filepath.Join(d.Dir, "ours.elf")
	defer os.Remove(ours)
	if err := ep.Monitor.(*Domain).DumpGuestMemory(ctx, ours, "elf"); err != nil {
		t.Fatal(err)
	}
	if err := sameFiles(dump, ours); err != nil {
		t.Errorf("Domain.DumpGuestMemory and virsh dump at the same stop: %v", err)
	}
	snap, err := snapshot.Open(dump)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	samePages(t, g, snap, 64)

	closed = true
	if err := a.close(ctx); err != nil {
		t.Errorf("detach: %v", err)
	}
	if a.stub != "" {
		if c, err := net.DialTimeout("tcp", a.stub, 2*time.Second); err == nil {
			c.Close()
			t.Errorf("a stub still listens on %s after the detach", a.stub)
		}
	}
	r, err := ep.Monitor.Execute(ctx, "query-status", nil)
	var st qemu.Status
	if err == nil {
		err = json.Unmarshal(r, &st)
	}
	if err != nil || !st.Running {
		t.Errorf("after detach: query-status %s %v, want running", r, err)
	}
	if s := d.State(t); s != golibvirt.DomainRunning {
		t.Errorf("after detach: libvirt state %d, want running", s)
	}
}

// checkPS lists the paused guest's processes from its memory as `mem ps`
// does (vmi/linux) and compares them with the guest's own ps, printed on
// its console at boot: every user process of ps is there with its ppid
// and argv, no other user process is, and the kernel threads agree in
// number but for kworkers started or ended since.
func checkPS(t *testing.T, ctx context.Context, g vmi.Live, truth *guesttest.Truth) {
	cpus, err := g.CPUs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k, err := linux.Discover(ctx, g, linux.WithCPUs(cpus))
	if err != nil {
		t.Fatal(err)
	}
	tasks, probs, err := k.Tasks(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		t.Errorf("problem: %+v", p)
	}
	type row struct {
		ppid int
		args string
	}
	user := func(args string) bool { return !strings.HasPrefix(args, "[") }
	want, got := map[int]row{}, map[int]row{}
	kernelWant, kernelGot := 0, 0
	if len(truth.PS) == 0 {
		names := []string{}
		for n := range truth.Sections {
			names = append(names, n)
		}
		t.Fatalf("the guest's console has no ps; sections %q", names)
	}
	for _, p := range truth.PS {
		if user(p.Args) {
			want[p.PID] = row{p.PPID, p.Args}
		} else {
			kernelWant++
		}
	}
	for _, tk := range tasks {
		if tk.Kernel {
			kernelGot++
			continue
		}
		got[tk.PID] = row{tk.PPID, strings.Join(tk.Args, " ")}
	}
	for pid, w := range want {
		if g, ok := got[pid]; !ok || g != w {
			t.Errorf("pid %d: live %+v (found %v), guest ps %+v", pid, g, ok, w)
		}
	}
	for pid, g := range got {
		if _, ok := want[pid]; !ok {
			t.Errorf("pid %d %+v live, not in the guest's ps", pid, g)
		}
	}
	if len(want) < 8 {
		t.Errorf("guest ps: only %d user processes", len(want))
	}
	t.Logf("%d user processes equal to the guest's ps; %d kernel threads live, %d in ps", len(want), kernelGot, kernelWant)
}

// samePages compares random pages of the dump's RAM with the live
// guest's until n pages that are not all zero were equal (at most 64·n
// pages).
func samePages(t *testing.T, live, dump vmi.Memory, n int) {
	var pages []uint64
	for _, r := range dump.Ranges() {
		for pa := (uint64(r.Start) + vmi.PageBytes - 1) &^ (vmi.PageBytes - 1); pa+vmi.PageBytes <= uint64(r.End()); pa += vmi.PageBytes {
			pages = append(pages, pa)
		}
	}
	if len(pages) < 1000 {
		t.Fatalf("dump holds %d pages", len(pages))
	}
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	a, b := make([]byte, vmi.PageBytes), make([]byte, vmi.PageBytes)
	nonzero, compared := 0, 0
	for ; nonzero < n && compared < 64*n; compared++ {
		pa := pages[rng.IntN(len(pages))]
		if _, err := live.ReadAt(a, int64(pa)); err != nil {
			t.Fatalf("live page %#x: %v", pa, err)
		}
		if _, err := dump.ReadAt(b, int64(pa)); err != nil {
			t.Fatalf("dump page %#x: %v", pa, err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("page %#x differs between the stub and the dump", pa)
		}
		if bytes.ContainsFunc(b, func(r rune) bool { return r != 0 }) {
			nonzero++
		}
	}
	if nonzero < n {
		t.Errorf("only %d of %d random pages hold data", nonzero, compared)
	}
	t.Logf("%d random pages equal, %d of them not all zero", compared, nonzero)
}

// sameFiles compares two dumps' RAM byte for byte.
func sameFiles(a, b string) error {
	sa, err := snapshot.Open(a)
	if err != nil {
		return err
	}
	defer sa.Close()
	sb, err := snapshot.Open(b)
	if err != nil {
		return err
	}
	defer sb.Close()
	ra, rb := sa.Ranges(), sb.Ranges()
	if fmt.Sprint(ra) != fmt.Sprint(rb) {
		return fmt.Errorf("ranges %v and %v", ra, rb)
	}
	x, y := make([]byte, 1<<20), make([]byte, 1<<20)
	for _, r := range ra {
		for off := uint64(0); off < r.Size; off += uint64(len(x)) {
			n := min(uint64(len(x)), r.Size-off)
			if _, err := sa.ReadAt(x[:n], int64(uint64(r.Start)+off)); err != nil {
				return err
			}
			if _, err := sb.ReadAt(y[:n], int64(uint64(r.Start)+off)); err != nil {
				return err
			}
			if !bytes.Equal(x[:n], y[:n]) {
				return fmt.Errorf("differ in the MiB at %#x", uint64(r.Start)+off)
			}
		}
	}
	return nil
}

// TestDomainPID checks that a pidfile naming another process, or nothing
// usable, is refused.
func TestDomainPID(t *testing.T) {
	old := RunDir
	RunDir = t.TempDir()
	defer func() { RunDir = old }()
	for name, content := range map[string]string{
		"self":    strconv.Itoa(os.Getpid()), // the test binary, not a QEMU
		"garbage": "12ab",
		"zero":    "0",
		"huge":    strings.Repeat("1", maxPIDFile+1),
		"gone":    "2147483646",
	} {
		if err := os.WriteFile(filepath.Join(RunDir, name+".pid"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if pid, err := DomainPID(name); !errors.Is(err, ErrPID) {
			t.Errorf("%s: pid %d, %v; want ErrPID", name, pid, err)
		}
	}
	if _, err := DomainPID("missing"); !errors.Is(err, ErrPID) {
		t.Errorf("missing pidfile: %v", err)
	}
	if _, err := DomainPID("../etc/passwd"); err == nil {
		t.Error("a domain name with '/' was accepted")
	}
}
