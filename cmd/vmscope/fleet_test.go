package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/vmscope/vmscope/fleet"
	"github.com/vmscope/vmscope/internal/fixture"
)

// fleetFixture is the fixture fleet (testdata/fleet/build.sh).
func fleetFixture(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(fixture.Root(), "testdata", "out-fleet")
	if _, err := os.Stat(filepath.Join(dir, ".done")); err != nil {
		fixture.Missing(t, "%s (bash testdata/fleet/build.sh)", dir)
	}
	return dir
}

// buildVmscope builds the binary into a test folder.
func buildVmscope(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "vmscope")
	if out, err := exec.Command(fixture.Tool(t, "go"), "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type fleetRun struct {
	bin, fix, inv, state, out, run string
}

// cmd is `vmscope fleet scan` of the fixture inventory as shard (i/N or
// auto/N), with extra environment.
func (r fleetRun) cmd(shard string, env ...string) *exec.Cmd {
	c := exec.Command(r.bin, "fleet", "scan", r.inv, "--shard", shard,
		"--state-dir", r.state, "--out", r.out, "--run-id", r.run, "--rules", filepath.Join(r.fix, "rules.yar"), "--jobs", "1")
	c.Env = append(os.Environ(), env...)
	return c
}

func exitOf(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// report is `vmscope fleet report --format ndjson` of the run.
func (r fleetRun) report(t *testing.T) []byte {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"fleet", "report", "--out", filepath.Join(r.out, r.run), "--inventory", r.inv, "--format", "ndjson"}, &out, &errOut)
	if code != exitFindings {
		t.Fatalf("fleet report: exit %d: %s", code, errOut.String())
	}
	return out.Bytes()
}

// newFleetRun is a run of inventory inv (the fixture's when "") with its
// own state and results; every run has the same run id, so that reports
// compare byte for byte.
func newFleetRun(t *testing.T, bin, fix, inv string) fleetRun {
	d := t.TempDir()
	if inv == "" {
		inv = filepath.Join(fix, "inventory.ndjson")
	}
	return fleetRun{bin, fix, inv, filepath.Join(d, "state"), filepath.Join(d, "out"), "r"}
}

// shards runs n concurrent shard processes (auto/n, JOB_COMPLETION_INDEX
// set) and returns their exit statuses.
func (r fleetRun) shards(t *testing.T, n int, env string) []int {
	t.Helper()
	cmds := make([]*exec.Cmd, n)
	errs := make([]bytes.Buffer, n)
	for i := range cmds {
		cmds[i] = r.cmd(fmt.Sprintf("auto/%d", n), env+fmt.Sprint(i))
		cmds[i].Stderr = &errs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	codes := make([]int, n)
	for i, c := range cmds {
		codes[i] = exitOf(c.Wait())
		if codes[i] != exitOK && codes[i] != exitFindings {
			t.Errorf("shard %d/%d: exit %d: %s", i, n, codes[i], errs[i].String())
		}
	}
	return codes
}

// findingKeys are the findings of NDJSON lines, as comparable strings.
func findingKeys(t *testing.T, b []byte) []string {
	t.Helper()
	var keys []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var f struct {
			Type, Partition, Path, Rule, Namespace, SHA256 string
			Inode                                          uint64
			Size                                           int64
			Strings                                        json.RawMessage
		}
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			t.Fatal(err)
		}
		if f.Type == "finding" {
			keys = append(keys, fmt.Sprintf("%s|%s|%s|%s|%s|%d|%d|%s", f.Partition, f.Path, f.Namespace, f.Rule, f.SHA256, f.Inode, f.Size, f.Strings))
		}
	}
	sort.Strings(keys)
	return keys
}

// TestFleet drives `vmscope fleet` as a scheduler does: the built binary,
// several processes at once, killed, re-run.
func TestFleet(t *testing.T) {
	fix := fleetFixture(t)
	bin := buildVmscope(t)
	inv, err := fleet.ReadInventoryFile(filepath.Join(fix, "inventory.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Images) < 24 {
		t.Fatalf("fixture fleet of %d images, want at least 24", len(inv.Images))
	}
	ref := newFleetRun(t, bin, fix, "")
	ref.shards(t, 1, "JOB_COMPLETION_INDEX=")
	want := ref.report(t)

	t.Run("union", func(t *testing.T) { testFleetUnion(t, bin, fix, inv, ref, want) })
	t.Run("resume", func(t *testing.T) { testFleetResume(t, bin, fix) })
	t.Run("lock", func(t *testing.T) { testFleetLock(t, bin, fix) })
	t.Run("sigterm", func(t *testing.T) { testFleetSIGTERM(t, bin, fix, want) })
	t.Run("parallel", func(t *testing.T) { testFleetParallel(t, bin, fix, want) })
	t.Run("slurm", func(t *testing.T) { testFleetSlurm(t, bin, fix, want) })
}

// testFleetParallel runs the GNU parallel recipe of deploy/ as written:
// its report equals one process's.
func testFleetParallel(t *testing.T, bin, fix string, want []byte) {
	fixture.Tool(t, "parallel")
	r := newFleetRun(t, bin, fix, "")
	c := exec.Command("bash", filepath.Join(fixture.Root(), "deploy", "parallel", "fleet.sh"), r.inv, r.state, r.out, "3", r.run)
	c.Env = append(os.Environ(), "VMSCOPE="+bin, "VMSCOPE_FLAGS=--rules "+filepath.Join(fix, "rules.yar")+" --jobs 1", "VMSCOPE_REPORT_FORMAT=ndjson")
	var out, errOut bytes.Buffer
	c.Stdout, c.Stderr = &out, &errOut
	if code := exitOf(c.Run()); code != exitFindings {
		t.Fatalf("deploy/parallel/fleet.sh: exit %d: %s", code, errOut.String())
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Errorf("the parallel recipe's report differs from one process's:\n%s", out.String())
	}
}

// testFleetSlurm starts a single-node Slurm cluster (testdata/fleet/slurm.sh:
// munged, slurmctld, slurmd in a private folder) and runs
// deploy/slurm/fleet.sbatch as a job array of 7 tasks (--shard auto/7 from
// SLURM_ARRAY_TASK_ID): each image is scanned by the task its id hashes
// to, and the report equals one process's.
func testFleetSlurm(t *testing.T, bin, fix string, want []byte) {
	fixture.Tool(t, "sbatch")
	fixture.Tool(t, "munged")
	dir, err := os.MkdirTemp("", "vmscope-slurm-") // a short path: the munge socket's
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(fixture.Root(), "testdata", "fleet", "slurm.sh")
	t.Cleanup(func() {
		exec.Command("bash", script, "stop", dir).Run()
		os.RemoveAll(dir)
	})
	if out, err := exec.Command("bash", script, "start", dir).CombinedOutput(); err != nil {
		t.Fatalf("slurm.sh start: %v\n%s", err, out)
	}
	r := newFleetRun(t, bin, fix, "")
	os.MkdirAll(r.state, 0o755)
	os.MkdirAll(r.out, 0o755)
	c := exec.Command("sbatch", "--wait", "--array=0-6", "--output="+filepath.Join(dir, "task-%a.out"), "--export=ALL",
		filepath.Join(fixture.Root(), "deploy", "slurm", "fleet.sbatch"), r.inv, r.state, r.out)
	c.Env = append(os.Environ(), "SLURM_CONF="+filepath.Join(dir, "slurm.conf"), "VMSCOPE="+bin, "VMSCOPE_RUN_ID="+r.run,
		"VMSCOPE_FLAGS=--rules "+filepath.Join(fix, "rules.yar")+" --jobs 1")
	if out, err := c.CombinedOutput(); err != nil {
		logs, _ := exec.Command("sh", "-c", "cat "+dir+"/task-*.out; tail -20 "+dir+"/log/*.log").CombinedOutput()
		t.Fatalf("sbatch --wait: %v\n%s\n%s", err, out, logs)
	}
	files, _ := filepath.Glob(filepath.Join(r.out, r.run, "*.ndjson"))
	if n := bytes.Count(mustRead(t, r.inv), []byte("\n")); len(files) != n {
		t.Errorf("%d results of %d images", len(files), n)
	}
	for _, f := range files {
		l, err := lastLineOf(f)
		if err != nil {
			t.Fatal(err)
		}
		if w := fmt.Sprintf("%d/7", fleet.Owner(l.ImageID, 7)); l.Shard != w {
			t.Errorf("%s scanned by array task %s, its id hashes to %s", l.ImageID, l.Shard, w)
		}
	}
	if got := r.report(t); !bytes.Equal(got, want) {
		t.Errorf("the Slurm array's report differs from one process's:\n%s", got)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testFleetUnion: N in {1, 3, 7} concurrent shards: each image in the
// shard its id hashes to and in no other, the results' union is the
// inventory, the report is byte-equal to one process's, and each image's
// findings equal `vmscope scan IMAGE`'s.
func testFleetUnion(t *testing.T, bin, fix string, inv *fleet.Inventory, ref fleetRun, want []byte) {
	for _, n := range []int{1, 3, 7} {
		r := newFleetRun(t, bin, fix, "")
		r.shards(t, n, "JOB_COMPLETION_INDEX=")
		files, _ := filepath.Glob(filepath.Join(r.out, r.run, "*"))
		var ids []string
		for _, f := range files {
			id := strings.TrimSuffix(filepath.Base(f), ".ndjson")
			ids = append(ids, id)
			last, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// Every line carries run_id, image_id, shard and type; the
			// shard is the one the id hashes to.
			for _, l := range bytes.Split(bytes.TrimSpace(last), []byte("\n")) {
				var h fleet.Head
				if err := json.Unmarshal(l, &h); err != nil || h.RunID != r.run || h.ImageID != id || h.Type == "" {
					t.Fatalf("%s: line %s: %+v %v", f, l, h, err)
				}
				if wantShard := fmt.Sprintf("%d/%d", fleet.Owner(id, n), n); h.Shard != wantShard {
					t.Errorf("%s scanned by shard %s, its id hashes to %s", id, h.Shard, wantShard)
				}
			}
		}
		if !slices.Equal(ids, inv.IDs()) {
			t.Errorf("N=%d: results %v, inventory %v", n, ids, inv.IDs())
		}
		// fleet plan agrees: disjoint, union = inventory.
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			var out bytes.Buffer
			if code := run(context.Background(), []string{"fleet", "plan", filepath.Join(fix, "inventory.ndjson"), "--shard", fmt.Sprintf("%d/%d", i, n)}, &out, &out); code != 0 {
				t.Fatalf("fleet plan: %d %s", code, out.String())
			}
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				if l == "" {
					continue
				}
				id, _, _ := strings.Cut(l, "\t")
				if j, dup := seen[id]; dup {
					t.Errorf("N=%d: %s planned in shards %d and %d", n, id, j, i)
				}
				seen[id] = i
			}
		}
		if len(seen) != len(inv.Images) {
			t.Errorf("N=%d: %d planned, inventory has %d", n, len(seen), len(inv.Images))
		}
		if got := r.report(t); !bytes.Equal(got, want) {
			t.Errorf("N=%d: report differs from one process's:\n%s\nwant\n%s", n, got, want)
		}
		// Each of the two bases was scanned once (one result per base
		// and rules digest), however many shards shared it.
		if bases, _ := filepath.Glob(filepath.Join(r.state, "layers", "*.json")); len(bases) != 2 {
			t.Errorf("N=%d: base results %v, want one per base", n, bases)
		}
	}
	// Each image's findings equal vmscope scan's.
	shared := 0
	for _, im := range inv.Images {
		res, err := os.ReadFile(filepath.Join(ref.out, ref.run, im.ID+".ndjson"))
		if err != nil {
			t.Fatal(err)
		}
		var il fleet.ImageLine
		lines := bytes.Split(bytes.TrimSpace(res), []byte("\n"))
		json.Unmarshal(lines[len(lines)-1], &il)
		if il.DirtySource == "base-shared" {
			shared++
		}
		var out, errOut bytes.Buffer
		code := run(context.Background(), []string{"scan", "--rules", filepath.Join(fix, "rules.yar"), "--format", "ndjson", im.Path}, &out, &errOut)
		if _, err := os.Stat(im.Path); err != nil || im.ID == "corrupt" {
			if il.Status != fleet.StatusFailed || il.Retry || code != exitError {
				t.Errorf("%s: fleet %+v, scan exit %d: want a failed image, not worth a retry", im.ID, il, code)
			}
			continue
		}
		if g, w := findingKeys(t, res), findingKeys(t, out.Bytes()); !slices.Equal(g, w) {
			t.Errorf("%s (%s): fleet findings\n%s\nvmscope scan\n%s", im.ID, il.DirtySource, strings.Join(g, "\n"), strings.Join(w, "\n"))
		}
		if (code == exitFindings) != (il.Status == fleet.StatusFindings) {
			t.Errorf("%s: scan exit %d, fleet status %s", im.ID, code, il.Status)
		}
	}
	if shared < 12 {
		t.Errorf("%d overlays reused their base's verdicts, want at least 12 of 16", shared)
	}
}

// stateSums are the sha256 of every state file of dir.
func stateSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	ms, _ := filepath.Glob(filepath.Join(dir, "*.state"))
	sums := map[string]string{}
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		sums[filepath.Base(m)] = hex.EncodeToString(s[:])
	}
	return sums
}

// testFleetResume: a shard SIGKILLed between images, before a state
// commit, inside one (the kill sent while it saves), after it and at
// random times; re-run with the same run id: the report is byte-equal to
// an uninterrupted run's, no image whose state was committed is scanned
// again (its state file is unchanged by the re-run), and every state
// passes its integrity check.
func testFleetResume(t *testing.T, bin, fix string) {
	// A part of the fleet: both bases and overlays of each, a raw image,
	// the missing one; its reference is an uninterrupted run.
	inv := filepath.Join(t.TempDir(), "part.ndjson")
	var part bytes.Buffer
	for _, id := range []string{"base-a", "ov-a-02", "ov-a-03", "ov-a-04", "ov-b-02", "ov-b-06", "raw-02", "gone"} {
		f := id + ".qcow2"
		if strings.HasPrefix(id, "raw") {
			f = id + ".img"
		}
		if id == "base-a" {
			f = "base-a.img"
		}
		fmt.Fprintf(&part, "{\"id\":%q,\"path\":%q}\n", id, filepath.Join(fix, f))
	}
	os.WriteFile(inv, part.Bytes(), 0o644)
	ref := newFleetRun(t, bin, fix, inv)
	ref.shards(t, 1, "JOB_COMPLETION_INDEX=")
	want := ref.report(t)
	points := []string{"between-images:ov-a-03", "before-commit:ov-b-02", "state-commit:ov-a-04", "before-result:raw-02"}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	points = append(points, fmt.Sprintf("random:%dms", rng.IntN(1500)))
	t.Logf("random kill seed %d", seed)
	for _, fp := range points {
		r := newFleetRun(t, bin, fix, inv)
		c := r.cmd("0/1")
		var errOut bytes.Buffer
		c.Stderr = &errOut
		if d, ok := strings.CutPrefix(fp, "random:"); ok {
			dur, _ := time.ParseDuration(d)
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(dur)
			c.Process.Signal(syscall.SIGKILL)
			c.Wait()
		} else {
			c.Env = append(c.Env, "VMSCOPE_FLEET_FAILPOINT="+fp)
			err := c.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("%s: not killed: %v\n%s", fp, err, errOut.String())
			}
		}
		before := stateSums(t, r.state)
		var errOut2 bytes.Buffer
		c = r.cmd("0/1")
		c.Stderr = &errOut2
		if code := exitOf(c.Run()); code != exitFindings {
			t.Fatalf("%s: re-run exit %d: %s", fp, code, errOut2.String())
		}
		after := stateSums(t, r.state)
		for name, sum := range before {
			if after[name] != sum {
				t.Errorf("%s: %s committed before the kill was scanned again by the re-run", fp, name)
			}
		}
		for name := range after {
			if err := fleet.CheckState(filepath.Join(r.state, name)); err != nil {
				t.Errorf("%s: %v", fp, err)
			}
		}
		if got := r.report(t); !bytes.Equal(got, want) {
			t.Errorf("%s: report after resume differs:\n%s\nwant\n%s", fp, got, want)
		}
		if left, _ := filepath.Glob(filepath.Join(r.out, r.run, ".*")); len(left) > 0 {
			t.Errorf("%s: files left in the results: %v", fp, left)
		}
		t.Logf("%s: %d states committed before the kill", fp, len(before))
	}
}

// dumpState lists every key and value of a state file (its logical
// content, whatever bbolt's page layout).
func dumpState(t *testing.T, path string) string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var b strings.Builder
	var walk func(prefix string, bk *bolt.Bucket)
	walk = func(prefix string, bk *bolt.Bucket) {
		bk.ForEach(func(k, v []byte) error {
			if v == nil {
				walk(prefix+string(k)+"/", bk.Bucket(k))
				return nil
			}
			fmt.Fprintf(&b, "%s%x=%x\n", prefix, k, v)
			return nil
		})
	}
	db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error { walk(string(name)+"/", bk); return nil })
	})
	return b.String()
}

// testFleetLock: two pollers of one image at once: the one that holds the
// lock scans, the other reports the image skipped naming the holder; the
// state equals a sequential run's. A killed holder's lock is released by
// the kernel: the next poller scans.
func testFleetLock(t *testing.T, bin, fix string) {
	d := t.TempDir()
	inv := filepath.Join(d, "one.ndjson")
	os.WriteFile(inv, []byte(fmt.Sprintf("{\"id\":\"raw-02\",\"path\":%q}\n", filepath.Join(fix, "raw-02.img"))), 0o644)
	poller := func(state, runID string, env ...string) *exec.Cmd {
		c := exec.Command(bin, "fleet", "scan", inv, "--state-dir", state, "--out", filepath.Join(d, "out"), "--run-id", runID, "--rules", filepath.Join(fix, "rules.yar"))
		c.Env = append(os.Environ(), env...)
		return c
	}
	waitHolder := func(state string, pid int) {
		for i := 0; i < 500; i++ {
			b, _ := os.ReadFile(filepath.Join(state, "raw-02.lock"))
			if bytes.Contains(b, []byte(fmt.Sprintf("\"pid\":%d", pid))) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("pid %d never held the lock", pid)
	}
	state := filepath.Join(d, "state")
	a := poller(state, "a", "VMSCOPE_FLEET_FAILPOINT=before-commit:raw-02:sleep=2s")
	var aErr bytes.Buffer
	a.Stderr = &aErr
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	waitHolder(state, a.Process.Pid)
	bOut, err := poller(state, "b").CombinedOutput()
	if code := exitOf(err); code != exitOK {
		t.Fatalf("second poller: exit %d: %s", code, bOut)
	}
	if code := exitOf(a.Wait()); code != exitFindings {
		t.Fatalf("first poller: exit %d: %s", code, aErr.String())
	}
	la, err := lastLineOf(filepath.Join(d, "out", "a", "raw-02.ndjson"))
	if err != nil || la.Status != fleet.StatusFindings {
		t.Fatalf("first poller: %+v %v", la, err)
	}
	lb, err := lastLineOf(filepath.Join(d, "out", "b", "raw-02.ndjson"))
	if err != nil || lb.Status != fleet.StatusSkipped || !strings.Contains(lb.Error, fmt.Sprintf("pid %d run \"a\"", a.Process.Pid)) {
		t.Fatalf("second poller: %+v %v, want skipped, locked by pid %d", lb, err, a.Process.Pid)
	}
	seq := filepath.Join(d, "seq")
	if out, err := poller(seq, "s").CombinedOutput(); exitOf(err) != exitFindings {
		t.Fatalf("sequential run: %v %s", err, out)
	}
	if g, w := dumpState(t, filepath.Join(state, "raw-02.state")), dumpState(t, filepath.Join(seq, "raw-02.state")); g != w {
		t.Errorf("state of the concurrent pollers differs from a sequential run's")
	}

	// A holder killed while it holds the lock: the kernel drops it.
	killed := filepath.Join(d, "killed")
	k := poller(killed, "k", "VMSCOPE_FLEET_FAILPOINT=before-commit:raw-02:sleep=60s")
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	waitHolder(killed, k.Process.Pid)
	k.Process.Signal(syscall.SIGKILL)
	k.Wait()
	if out, err := poller(killed, "k").CombinedOutput(); exitOf(err) != exitFindings {
		t.Fatalf("after the holder was killed: %v %s", err, out)
	}
	if l, err := lastLineOf(filepath.Join(d, "out", "k", "raw-02.ndjson")); err != nil || l.Status != fleet.StatusFindings {
		t.Errorf("after the holder was killed: %+v %v", l, err)
	}
}

func lastLineOf(path string) (*fleet.ImageLine, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ls := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	var l fleet.ImageLine
	return &l, json.Unmarshal(ls[len(ls)-1], &l)
}

// testFleetSIGTERM: SIGTERM in the middle of an image (held at a
// failpoint) cancels the shard: exit 2, no half-written result; the re-run
// completes the run to the uninterrupted report.
func testFleetSIGTERM(t *testing.T, bin, fix string, want []byte) {
	r := newFleetRun(t, bin, fix, "")
	c := r.cmd("0/1", "VMSCOPE_FLEET_FAILPOINT=before-commit:ov-a-05:sleep=1s")
	var errOut bytes.Buffer
	c.Stderr = &errOut
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		if m, _ := filepath.Glob(filepath.Join(r.out, r.run, ".ov-a-05.pending-*")); len(m) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Process.Signal(syscall.SIGTERM)
	if code := exitOf(c.Wait()); code != exitError {
		t.Fatalf("SIGTERM: exit %d, want 2: %s", code, errOut.String())
	}
	if _, err := os.Stat(filepath.Join(r.out, r.run, "ov-a-05.ndjson")); err == nil {
		// The commit may have finished before the signal was seen.
		t.Logf("ov-a-05 completed before the cancellation")
	}
	if left, _ := filepath.Glob(filepath.Join(r.out, r.run, ".tmp-*")); len(left) > 0 {
		t.Errorf("half-written files: %v", left)
	}
	c = r.cmd("0/1")
	if code := exitOf(c.Run()); code != exitFindings {
		t.Fatalf("re-run: exit %d", code)
	}
	if got := r.report(t); !bytes.Equal(got, want) {
		t.Errorf("report after SIGTERM and re-run differs")
	}
}
