package linux_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/linux"
)

// The writers boot of the guest fixture (testdata/guest/build.sh): a LiME
// dump made inside the guest by the LiME module, then, with the guest
// stopped, QEMU's ELF dump and its kdump files, and makedumpfile's over
// that ELF dump.
const writers = "writers"

// sameMoment are the dumps of the stopped writers guest besides guest.elf,
// by writer and format.
// qemuFormat is the QEMU format, made only when this QEMU offers it
// (vmi/snapshot's TestWritersQEMUFormats checks every offered one is there).
var sameMoment = []struct{ file, writer, qemuFormat string }{
	{"qemu-zlib.kdump", "QEMU kdump-zlib", "kdump-zlib"},
	{"qemu-lzo.kdump", "QEMU kdump-lzo", "kdump-lzo"},
	{"qemu-snappy.kdump", "QEMU kdump-snappy", "kdump-snappy"},
	{"md-zlib.kdump", "makedumpfile -c", ""},
	{"md-lzo.kdump", "makedumpfile -l", ""},
	{"md-lzo.flat", "makedumpfile -F -l", ""},
}

// offered reports whether QEMU offered the dump format when the fixture
// was made (query-dump-guest-memory-capability).
func offered(t *testing.T, format string) bool {
	t.Helper()
	b, err := os.ReadFile(guesttest.Path(t, writers, "dump-formats.json"))
	if err != nil {
		t.Fatal(err)
	}
	var caps struct {
		Formats []string `json:"formats"`
	}
	if err := json.Unmarshal(b, &caps); err != nil {
		t.Fatal(err)
	}
	return slices.Contains(caps.Formats, format)
}

// answers are what `mem ps -t`, `mem modules` and `mem files` print, as
// the library returns them: every field of every row.
type answers struct {
	tasks []linux.Task
	mods  []linux.Module
	files []linux.File
}

func writerAnswers(t *testing.T, file string) answers {
	t.Helper()
	ctx := context.Background()
	s := openDump(t, writers, file)
	k, err := linux.Discover(ctx, s, linux.WithCPUs(s.CPUs()))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var a answers
	var probs, p []linux.Problem
	if a.tasks, p, err = k.Tasks(ctx, true); err != nil {
		t.Fatalf("%s: tasks: %v", file, err)
	}
	probs = append(probs, p...)
	if a.mods, p, err = k.Modules(ctx); err != nil {
		t.Fatalf("%s: modules: %v", file, err)
	}
	probs = append(probs, p...)
	if a.files, p, err = k.Files(ctx, a.tasks, 0); err != nil {
		t.Fatalf("%s: files: %v", file, err)
	}
	probs = append(probs, p...)
	for _, p := range probs {
		t.Errorf("%s: problem %+v", file, p)
	}
	return a
}

func jsonLines[T any](rows []T) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		b, _ := json.Marshal(r)
		out[i] = string(b)
	}
	return out
}

// diffLines reports the rows only one side has (order counts: a row moved
// is reported on both sides).
func diffLines(t *testing.T, what, name string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") == strings.Join(want, "\n") {
		return
	}
	in := map[string]int{}
	for _, l := range want {
		in[l]++
	}
	var extra, missing []string
	for _, l := range got {
		if in[l] > 0 {
			in[l]--
		} else {
			extra = append(extra, l)
		}
	}
	for l, n := range in {
		for range n {
			missing = append(missing, l)
		}
	}
	sort.Strings(missing)
	t.Errorf("%s: %s differs from the ELF dump's (%d rows, %d): only %s:\n%s\nonly in the ELF dump:\n%s", name, what, len(got), len(want), name,
		strings.Join(extra, "\n"), strings.Join(missing, "\n"))
}

// checkTruth compares the ELF dump's answers with the guest's console
// truth of the writers boot, so that the reference the other writers are
// compared with is right: every process (pid, ppid, argv), every module
// (name, base, size, refs, state), every fd of every user process.
func checkTruth(t *testing.T, truth *guesttest.Truth, a answers) {
	t.Helper()
	var got, want []string
	for _, tk := range a.tasks {
		if !tk.Kernel {
			got = append(got, fmt.Sprintf("%d %d %s", tk.PID, tk.PPID, strings.Join(tk.Args, " ")))
		}
	}
	for _, p := range truth.PS {
		if !strings.HasPrefix(p.Args, "[") {
			want = append(want, fmt.Sprintf("%d %d %s", p.PID, p.PPID, p.Args))
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if len(want) < 10 || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("user processes:\n%s\nguest ps:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := len(a.tasks); n != len(truth.PS) {
		t.Errorf("%d processes, guest ps %d", n, len(truth.PS))
	}
	got, want = nil, nil
	for _, m := range a.mods {
		got = append(got, fmt.Sprintf("%s %#x %d %d %s", m.Name, m.Base, m.Size, m.Refs, m.State))
	}
	for _, m := range truth.Modules {
		want = append(want, fmt.Sprintf("%s %#x %d %d %s", m.Name, m.Addr, m.Size, m.Refs, m.State))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("modules:\n%s\nguest:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	got, want = nil, nil
	for _, f := range a.files {
		if _, ok := truth.FDs[f.PID]; ok {
			got = append(got, fmt.Sprintf("%d %d %s", f.PID, f.FD, f.Path))
		}
	}
	for pid, fds := range truth.FDs {
		for _, f := range fds {
			want = append(want, fmt.Sprintf("%d %d %s", pid, f.Num, f.Target))
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if len(want) < 20 || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("fds:\n%s\nguest:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestWritersAnswers checks that every kdump file QEMU and makedumpfile
// wrote of the stopped writers guest gives the same `mem ps -t`, `mem
// modules` and `mem files` answers, every field of every row, as QEMU's
// ELF dump of the same moment, which itself agrees with the guest's own
// ps, /proc/modules and /proc/PID/fd.
func TestWritersAnswers(t *testing.T) {
	truth := guesttest.Load(t, writers)
	ref := writerAnswers(t, "guest.elf")
	checkTruth(t, truth, ref)
	for _, w := range sameMoment {
		t.Run(w.file, func(t *testing.T) {
			if w.qemuFormat != "" && !offered(t, w.qemuFormat) {
				t.Logf("this QEMU does not offer %s", w.qemuFormat)
				return
			}
			a := writerAnswers(t, w.file)
			diffLines(t, "ps -t", w.writer, jsonLines(a.tasks), jsonLines(ref.tasks))
			diffLines(t, "modules", w.writer, jsonLines(a.mods), jsonLines(ref.mods))
			diffLines(t, "files", w.writer, jsonLines(a.files), jsonLines(ref.files))
			t.Logf("%s: %d processes, %d modules, %d open files: equal to the ELF dump's", w.writer, len(a.tasks), len(a.mods), len(a.files))
		})
	}
}

// blankWorkers clears the name and state of workqueue workers (and of
// their threads).
func blankWorkers(ts []linux.Task) []linux.Task {
	out := make([]linux.Task, len(ts))
	for i, tk := range ts {
		if tk.Kernel && strings.HasPrefix(tk.Comm, "kworker/") {
			tk.Name, tk.State = tk.Comm, ""
			tk.Threads = blankWorkers(tk.Threads)
		}
		out[i] = tk
	}
	return out
}

// TestWritersLiMEAnswers checks the real LiME dump, made inside the guest
// by the LiME module while the scenario was steady, against the guest's
// console truth and QEMU's ELF dump, both of the moment right after LiME's
// insmod returned. Every row of `mem ps -t`, `mem modules` and `mem files`
// must be equal, every field, but for what changed between the two
// moments, each named here:
//   - the insmod process that ran LiME (pid "lime" of the scenario) is in
//     the LiME dump only, with its open files, one of them lime.ko;
//   - the lime module is "Loading" in the LiME dump (its init function is
//     the dump), with its init sections still counted in its size and the
//     loader's reference, and "Live" after;
//   - a kernel workqueue worker (kworker/*) shows the workqueue of the
//     item it runs or ran last in its name (wq_worker_comm) and may be
//     running: the name after comm and the state may differ.
func TestWritersLiMEAnswers(t *testing.T) {
	truth := guesttest.Load(t, writers)
	limePID := truth.Scenario["lime"]
	if limePID == 0 {
		t.Fatal("no lime pid in the scenario section")
	}
	ref := writerAnswers(t, "guest.elf")
	checkTruth(t, truth, ref)
	a := writerAnswers(t, "guest.lime")

	var tasks []linux.Task
	insmod := 0
	for _, tk := range a.tasks {
		if tk.PID == limePID {
			insmod++
			if tk.Comm != "insmod" || tk.PPID != 1 || tk.Kernel || tk.TGID != tk.PID {
				t.Errorf("LiME's insmod: %+v", tk)
			}
			continue
		}
		tasks = append(tasks, tk)
	}
	if insmod != 1 {
		t.Errorf("%d tasks of pid %d (LiME's insmod) in the LiME dump, want 1", insmod, limePID)
	}
	renamed := 0
	got, want := blankWorkers(tasks), blankWorkers(ref.tasks)
	for i := range min(len(tasks), len(ref.tasks)) {
		if tasks[i].Kernel && strings.HasPrefix(tasks[i].Comm, "kworker/") && tasks[i].PID == ref.tasks[i].PID &&
			(tasks[i].Name != ref.tasks[i].Name || tasks[i].State != ref.tasks[i].State) {
			renamed++
		}
	}
	diffLines(t, "ps -t", "LiME", jsonLines(got), jsonLines(want))

	mods := append([]linux.Module(nil), a.mods...)
	lime := -1
	for i, m := range mods {
		if m.Name == "lime" {
			lime = i
		}
	}
	refLime := slices.IndexFunc(ref.mods, func(m linux.Module) bool { return m.Name == "lime" })
	if lime < 0 || refLime < 0 {
		t.Fatalf("no lime module: LiME dump %d, ELF dump %d", lime, refLime)
	}
	if m, r := mods[lime], ref.mods[refLime]; m.State != "Loading" || r.State != "Live" || m.Addr != r.Addr || m.Base != r.Base || m.Size < r.Size || m.Refs != r.Refs+1 {
		t.Errorf("lime module: LiME dump %+v, ELF dump %+v", m, r)
	}
	mods[lime] = ref.mods[refLime]
	diffLines(t, "modules", "LiME", jsonLines(mods), jsonLines(ref.mods))

	var files []linux.File
	var insmodFiles []string
	for _, f := range a.files {
		if f.PID == limePID {
			insmodFiles = append(insmodFiles, f.Path)
			continue
		}
		files = append(files, f)
	}
	if !slices.Contains(insmodFiles, "/lib/modules/lime.ko") {
		t.Errorf("LiME's insmod has %v open, not lime.ko", insmodFiles)
	}
	diffLines(t, "files", "LiME", jsonLines(files), jsonLines(ref.files))
	t.Logf("LiME: %d processes (insmod %d with %v open), %d modules (lime Loading), %d open files: equal to the ELF dump's after; %d kworkers with another workqueue name or state",
		len(a.tasks), limePID, insmodFiles, len(a.mods), len(a.files), renamed)
}
