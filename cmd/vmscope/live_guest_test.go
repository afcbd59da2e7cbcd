package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// pollGuest is the guest of testdata/livedirty: the Debian kernel under
// QEMU (TCG) with a qcow2 data disk (ext4), a workload in rounds driven
// through its second serial port, and a background writer.
type pollGuest struct {
	t       testing.TB
	console string   // the serial console's log
	mon     statuser // the test's own monitor (run state)
	ctl     net.Conn
	spec    string
	spec2   string // the same guest through another QMP socket
	bin     string
	bg      bool // the background writer runs (and counts)
}

func liveFixture(t testing.TB) (kernel, initrd string) {
	t.Helper()
	dir := filepath.Join(fixture.Root(), "testdata", "out-livedirty")
	for _, f := range []string{"vmlinuz", "initrd.gz"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			fixture.Missing(t, "%s (bash testdata/livedirty/build.sh)", filepath.Join(dir, f))
		}
	}
	return filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.gz")
}

// bootLive boots the guest on a fresh size-MiB ext4 qcow2 disk (made with
// mkfs.ext4 -d from tree when not "") and runs the vmscope binary of
// vmscopeBin.
func bootLive(t testing.TB, sizeMiB int, tree string, appendLine string) *pollGuest {
	t.Helper()
	kernel, initrd := liveFixture(t)
	work := t.TempDir()
	raw := filepath.Join(work, "disk.raw")
	args := []string{"-q", "-F", "-b", "4096", "-E", "root_owner=0:0"}
	if tree != "" {
		args = append(args, "-d", tree)
	}
	fixture.Run(t, work, "mkfs.ext4", append(args, raw, fmt.Sprintf("%dM", sizeMiB))...)
	img := filepath.Join(work, "disk.qcow2")
	fixture.Run(t, work, "qemu-img", "convert", "-O", "qcow2", raw, img)
	os.Remove(raw)
	bin := vmscopeBin(t)
	// unix socket paths are short: /tmp.
	sock := func(what string) string {
		p := filepath.Join(os.TempDir(), fmt.Sprintf("vmscope-ld-%s-%d.sock", what, os.Getpid()))
		os.Remove(p)
		t.Cleanup(func() { os.Remove(p) })
		return p
	}
	ctlSock, qmpSock, qmp2Sock, testSock := sock("ctl"), sock("qmp"), sock("qmp2"), sock("tqmp")
	port := freeTCPPort(t)
	console := filepath.Join(work, "console.log")
	cmd := exec.Command(fixture.Tool(t, "qemu-system-x86_64"), "-accel", "tcg", "-m", "256", "-smp", "1",
		"-nographic", "-display", "none", "-no-reboot", "-monitor", "none", "-net", "none",
		"-kernel", kernel, "-initrd", initrd,
		"-append", strings.TrimSpace("console=ttyS0 quiet panic=-1 "+appendLine),
		"-serial", "file:"+console,
		"-chardev", "socket,id=ctl,path="+ctlSock+",server=on,wait=off",
		"-serial", "chardev:ctl", // ttyS1: the guest's commands
		"-gdb", fmt.Sprintf("tcp:127.0.0.1:%d", port),
		"-qmp", "unix:"+testSock+",server=on,wait=off", // the test's monitor
		"-qmp", "unix:"+qmpSock+",server=on,wait=off", // vmscope's
		"-qmp", "unix:"+qmp2Sock+",server=on,wait=off", // a second vmscope's
		"-blockdev", "driver=file,node-name=data-file,filename="+img,
		"-blockdev", "driver=qcow2,node-name=data,file=data-file",
		"-device", "virtio-blk-pci,drive=data,id=vd0")
	var qerr strings.Builder
	cmd.Stderr = &qerr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lg := &pollGuest{t: t, console: console, bin: bin, bg: !strings.Contains(appendLine, "vmscope.bg=0"),
		spec: fmt.Sprintf("gdb://127.0.0.1:%d,qmp=unix:%s", port, qmpSock), spec2: fmt.Sprintf("gdb://127.0.0.1:%d,qmp=unix:%s", port, qmp2Sock)}
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(lg.log(), "=== READY ===") {
		if time.Now().After(deadline) || cmd.ProcessState != nil || strings.Contains(lg.log(), "=== FAIL") {
			t.Fatalf("the guest did not get ready: %s\n%s", qerr.String(), tail(lg.log(), 2000))
		}
		time.Sleep(100 * time.Millisecond)
	}
	q, err := qemu.DialQMP(context.Background(), testSock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	lg.mon = q
	if lg.ctl, err = net.Dial("unix", ctlSock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.ctl.Close() })
	return lg
}

// statuser tells the guest's run state (*qemu.QMP, or libvirt's view of a
// domain).
type statuser interface {
	Status(context.Context) (qemu.Status, error)
}

func freeTCPPort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (lg *pollGuest) log() string {
	b, _ := os.ReadFile(lg.console)
	return strings.ReplaceAll(string(b), "\r", "")
}

// send writes a command line to the guest and waits for one more
// marker on its console.
func (lg *pollGuest) send(cmd, marker string, timeout time.Duration) {
	lg.t.Helper()
	before := strings.Count(lg.log(), marker)
	if _, err := fmt.Fprintf(lg.ctl, "%s\n", cmd); err != nil {
		lg.t.Fatal(err)
	}
	deadline := time.Now().Add(timeout)
	for strings.Count(lg.log(), marker) <= before {
		if time.Now().After(deadline) {
			lg.t.Fatalf("no %q after %q in %v:\n%s", marker, cmd, timeout, tail(lg.log(), 2000))
		}
		if strings.Contains(lg.log(), "=== FAIL") {
			lg.t.Fatalf("guest failed:\n%s", tail(lg.log(), 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (lg *pollGuest) round(k int) {
	lg.send(fmt.Sprintf("round %d", k), fmt.Sprintf("=== ROUND %d DONE ===", k), 2*time.Minute)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

var (
	reTruth = regexp.MustCompile(`(?m)^=== (W|D|DIR) (\d+) (\S+) ===$`)
	reBG    = regexp.MustCompile(`(?m)^=== BG (\S+) ===$`)
	reTick  = regexp.MustCompile(`(?m)^=== TICK (\d+) ===$`)
	reJW    = regexp.MustCompile(`(?m)^=== JWRITE (\d+) DONE ===$`)
)

// truth returns the paths round k wrote (files, and directories when
// dirs) and deleted, as announced.
func (lg *pollGuest) truth(k int, dirs bool) (written, deleted map[string]bool) {
	written, deleted = map[string]bool{}, map[string]bool{}
	for _, m := range reTruth.FindAllStringSubmatch(lg.log(), -1) {
		if m[2] != strconv.Itoa(k) {
			continue
		}
		switch m[1] {
		case "W":
			written[m[3]] = true
		case "DIR":
			if dirs {
				written[m[3]] = true
			}
		default:
			deleted[m[3]] = true
			delete(written, m[3])
		}
	}
	return written, deleted
}

func (lg *pollGuest) background() map[string]bool {
	bg := map[string]bool{"/bg": true}
	for _, m := range reBG.FindAllStringSubmatch(lg.log(), -1) {
		bg[m[1]] = true
	}
	// the test's own writes between rounds (jwrite)
	for _, m := range reJW.FindAllStringSubmatch(lg.log(), -1) {
		bg["/jw"], bg["/jw/m"+m[1]] = true, true
	}
	return bg
}

func (lg *pollGuest) ticks() int {
	ms := reTick.FindAllStringSubmatch(lg.log(), -1)
	if len(ms) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(ms[len(ms)-1][1])
	return n
}

// run runs the vmscope binary with env and returns its stdout, stderr
// and exit status; while it runs, QEMU's run state is watched through the
// test's own QMP connection: a run state other than running fails the
// test, and the guest's workload counter must move during the run.
func (lg *pollGuest) run(env []string, args ...string) (string, string, int) {
	lg.t.Helper()
	cmd := exec.Command(lg.bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	before := lg.ticks()
	stop := lg.watchRunning()
	err := cmd.Run()
	stop()
	if lg.bg {
		lg.mustTick(before, args[0])
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		lg.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// watchRunning polls query-status until stop is called; any state but
// running fails the test.
func (lg *pollGuest) watchRunning() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			st, err := lg.mon.Status(context.Background())
			if err != nil || !st.Running {
				lg.t.Errorf("the guest is not running during a poll: %s %v", st.Status, err)
				return
			}
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// mustTick waits (a little) for the guest's workload counter to move past
// before: it ran during and after the command.
func (lg *pollGuest) mustTick(before int, what string) {
	lg.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for lg.ticks() <= before {
		if time.Now().After(deadline) {
			lg.t.Errorf("%s: the guest's workload counter stayed at %d", what, before)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type changeDoc struct {
	Source string `json:"source"`
	Stats  map[string]struct {
		DirtyBytes    int64 `json:"dirty_bytes"`
		ReplayedBytes int64 `json:"replayed_bytes"`
	} `json:"stats"`
	Changes []struct {
		Path     string   `json:"path"`
		Paths    []string `json:"paths"`
		OldPaths []string `json:"old_paths"`
		Type     string   `json:"type"`
		Change   string   `json:"change"`
	} `json:"changes"`
}

// poll runs vmscope dirty --guest on the state and returns its changes.
func (lg *pollGuest) poll(state string, env ...string) (*changeDoc, string) {
	lg.t.Helper()
	out, errOut, code := lg.run(env, "dirty", "--guest", lg.spec, "--state", state, "--format", "json")
	if code != 0 {
		lg.t.Fatalf("dirty --guest: exit %d: %s", code, errOut)
	}
	var doc changeDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		lg.t.Fatalf("dirty --guest output: %v\n%s", err, out)
	}
	return &doc, errOut
}

// check compares the changes of docs (one poll, or a killed poll and the
// next) with round k's truth: every path written is added or modified,
// every path deleted is deleted (0 misses); any other path reported is the
// background writer's, or a directory above a path of the round (extras).
func (lg *pollGuest) check(k int, full bool, docs ...*changeDoc) {
	lg.t.Helper()
	written, deleted := lg.truth(k, !full) // a full pass lists files
	if len(written)+len(deleted) == 0 {
		lg.t.Fatalf("round %d announced nothing", k)
	}
	bg := lg.background()
	parents := map[string]bool{}
	for p := range written {
		for d := path.Dir(p); ; d = path.Dir(d) {
			parents[d] = true
			if d == "/" {
				break
			}
		}
	}
	for p := range deleted {
		parents[path.Dir(p)] = true
	}
	got := map[string]string{}
	for _, doc := range docs {
		for _, c := range doc.Changes {
			ps := append(append([]string{c.Path}, c.Paths...), c.OldPaths...)
			for _, p := range ps {
				got[p] = c.Change
			}
			if full {
				continue
			}
			in := false
			for _, p := range ps {
				in = in || written[p] || deleted[p] || bg[p] || parents[p] && c.Type == "dir"
			}
			if !in {
				lg.t.Errorf("round %d: extra %s %s %s (neither the round's nor the background writer's)", k, c.Change, c.Type, c.Path)
			}
		}
	}
	for p := range written {
		if c := got[p]; c != "added" && c != "modified" {
			lg.t.Errorf("round %d: missed %s (written; reported %q)", k, p, c)
		}
	}
	for p := range deleted {
		if got[p] != "deleted" {
			lg.t.Errorf("round %d: missed %s (deleted; reported %q)", k, p, got[p])
		}
	}
}

// TestLiveDirtyGuest polls a running guest after each round of its
// workload while a background writer writes the whole time: no path of a
// round is missed, nothing but the background writer's files is extra, a
// marker written in round 2 is found by scan --dirty live, the guest is
// never paused and its workload counter moves during every poll. Then a
// poll is killed with SIGKILL after each of its steps, guest release
// cleans up, and the next poll misses nothing.
func TestLiveDirtyGuest(t *testing.T) {
	lg := bootLive(t, 64, "", "")
	state := filepath.Join(t.TempDir(), "state.db")

	lg.round(1)
	doc, errOut := lg.poll(state)
	if !strings.Contains(errOut, "full pass") || !strings.Contains(doc.Source, "bitmap generation 1") {
		t.Errorf("first poll: %s %s", doc.Source, errOut)
	}
	lg.check(1, true, doc)

	lg.round(2)
	doc, _ = lg.poll(state)
	if !strings.Contains(doc.Source, "bitmap generation 2, writes since generation 1") {
		t.Errorf("poll 2 source: %s", doc.Source)
	}
	lg.check(2, false, doc)

	rules := filepath.Join(t.TempDir(), "marker.yar")
	os.WriteFile(rules, []byte(`rule live_marker { strings: $m = "VMSCOPE_LIVE_MARKER_ROUND2" condition: $m }`), 0o644)
	out, errOut, code := lg.run(nil, "scan", "--guest", lg.spec, "--dirty", "live", "--state", state, "--rules", rules, "--format", "json")
	if code != 1 || !strings.Contains(out, `"/r2/marker.txt"`) || !strings.Contains(out, "live_marker") {
		t.Errorf("scan --dirty live: exit %d, marker not found: %s\n%s", code, errOut, tail(out, 1500))
	}

	// A full scan of the live disk at one point in time: the journal
	// replayed in memory, no problem, the marker found; it leaves the
	// tracking bitmaps alone (poll 3 below is no full pass).
	// A file whose inode and directory entry are in the journal only.
	lg.send("jwrite 1", "=== JWRITE 1 DONE ===", time.Minute)
	os.WriteFile(rules, []byte(`rule live_marker { strings: $m = "VMSCOPE_LIVE_MARKER_ROUND2" $j = "VMSCOPE_JOURNAL_ONLY_1" condition: any of them }`), 0o644)
	out, errOut, code = lg.run(nil, "scan", "--guest", lg.spec, "--rules", rules, "--format", "json")
	if code != 1 || !strings.Contains(out, `"/r2/marker.txt"`) || !strings.Contains(out, `"/jw/m1"`) || strings.Contains(errOut, "problem") || strings.Contains(errOut, "bitmap generation") {
		t.Errorf("scan --guest: exit %d: %s\n%s", code, errOut, tail(out, 1500))
	}

	lg.round(3)
	doc, _ = lg.poll(state)
	lg.check(3, false, doc)

	for step := 1; step <= 5; step++ {
		k := 3 + step
		lg.round(k)
		killed := lg.killedPoll(state, step, func() {
			if step != 3 {
				return
			}
			// Two pollers: the second refuses, by the state's lock or
			// by the first one's objects in QEMU.
			_, errOut, code := lg.run(nil, "dirty", "--guest", lg.spec, "--state", state)
			if code != 2 || !strings.Contains(errOut, "another vmscope") {
				t.Errorf("a second poller of the same state: exit %d: %s", code, errOut)
			}
			_, errOut, code = lg.run(nil, "dirty", "--guest", lg.spec2, "--state", state+".other")
			if code != 2 || !strings.Contains(errOut, "a vmscope poll is running on this guest") || !strings.Contains(errOut, "vmscope-fleece") {
				t.Errorf("a second poller with another state: exit %d: %s", code, errOut)
			}
		})
		out, errOut, code := lg.run(nil, "guest", "release", "--guest", lg.spec)
		if code != 0 || !strings.Contains(out, "live poll: removed") || step >= 2 && !strings.Contains(out, "merged bitmap") {
			t.Errorf("step %d: guest release: exit %d: %s %s", step, code, out, errOut)
		}
		doc, _ := lg.poll(state)
		if strings.Contains(doc.Source, "full pass") {
			t.Errorf("step %d: a full pass after release", step)
		}
		if step >= 4 { // the killed poll saved its state: it reported the round
			lg.check(k, false, killed, doc)
		} else {
			lg.check(k, false, doc)
		}
	}
}

// killedPoll starts a poll that stops after step, runs during while it
// holds there, SIGKILLs it, and returns what it wrote on stdout (the changes, from step 4 on).
func (lg *pollGuest) killedPoll(state string, step int, during func()) *changeDoc {
	lg.t.Helper()
	cmd := exec.Command(lg.bin, "dirty", "--guest", lg.spec, "--state", state, "--format", "json")
	cmd.Env = append(os.Environ(), fmt.Sprintf("VMSCOPE_LIVE_STOP_AFTER=%d", step))
	stderr, _ := cmd.StderrPipe()
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		lg.t.Fatal(err)
	}
	br := bufio.NewReader(stderr)
	var all strings.Builder
	for {
		line, err := br.ReadString('\n')
		all.WriteString(line)
		if strings.Contains(line, "stopped after step") {
			break
		}
		if err != nil {
			cmd.Wait()
			lg.t.Fatalf("step %d: the poll ended before its stop: %s", step, all.String())
		}
	}
	during()
	cmd.Process.Signal(syscall.SIGKILL)
	go io.Copy(io.Discard, br)
	cmd.Wait()
	doc := &changeDoc{}
	if step >= 4 {
		if err := json.Unmarshal([]byte(out.String()), doc); err != nil {
			lg.t.Fatalf("step %d: killed poll's output: %v", step, err)
		}
	}
	return doc
}

// TestLiveDirtyBitmapAlone: without the background writer, and with the
// journal checkpointed after each round, a poll's view has nothing to
// replay: the files of each round are found from QEMU's dirty bitmap
// alone, with no miss and no extra.
//
// The same boot serves the process spec: after rounds 1 and 2, `dirty
// --guest qemu:qmp=unix:SOCK` (its pid from the socket's peer, no GDB
// stub) polls with a state of its own, as the gdb:// spec does: round 2's
// paths, no miss (the subtests process/round1 and process/round2).
func TestLiveDirtyBitmapAlone(t *testing.T) {
	lg := bootLive(t, 64, "", "vmscope.bg=0")
	_, qmp, ok := strings.Cut(lg.spec, ",qmp=")
	if !ok {
		t.Fatalf("spec %s", lg.spec)
	}
	state, pstate := filepath.Join(t.TempDir(), "state.db"), filepath.Join(t.TempDir(), "process.db")
	// on is lg for the subtest t, with spec.
	on := func(t *testing.T, spec string) *pollGuest {
		g := *lg
		g.t, g.spec = t, spec
		return &g
	}
	for k := 1; k <= 3; k++ {
		lg.round(k)
		t.Run(fmt.Sprintf("gdb/round%d", k), func(t *testing.T) {
			g := on(t, lg.spec)
			doc, _ := g.poll(state)
			g.check(k, k == 1, doc)
			if k == 1 {
				return
			}
			st := doc.Stats["disk"]
			if st.ReplayedBytes != 0 || st.DirtyBytes == 0 {
				t.Errorf("round %d: %d bytes replayed from the journal, %d dirty: want 0 and the bitmap's", k, st.ReplayedBytes, st.DirtyBytes)
			}
		})
		if k > 2 {
			continue
		}
		t.Run(fmt.Sprintf("process/round%d", k), func(t *testing.T) {
			g := on(t, "qemu:qmp="+qmp)
			doc, _ := g.poll(pstate)
			if k == 2 && (!strings.Contains(doc.Source, "guest qemu:qmp=") || !strings.Contains(doc.Source, "writes since generation 1")) {
				t.Errorf("poll 2 source: %s", doc.Source)
			}
			g.check(k, k == 1, doc)
		})
	}
}
