package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/watch/watchtest"
)

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitText(t *testing.T, what func() string, s string, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if strings.Contains(what(), s) {
			return
		}
	}
	t.Fatalf("no %q after %v in:\n%s", s, d, what())
}

// TestWatchCLI runs `vmscope watch` on one boot of the fixture guest
// (6.1), in two subtests in this order: deny-table (the short scenario,
// which changes nothing and may run again), then policy-then-kill (the
// scenario, which runs once per boot). Each checks the guest's log from
// its own start on.
func TestWatchCLI(t *testing.T) {
	if testing.Short() {
		fixture.Missing(t, "-short: boots a guest")
	}
	l := watchtest.Boot(t, "")
	t.Run("deny-table", func(t *testing.T) { watchCLIDenyTable(t, l) })
	t.Run("policy-then-kill", func(t *testing.T) { watchCLIPolicyThenKill(t, l) })
}

// watchCLIPolicyThenKill runs `vmscope watch` on the fixture guest while
// its scenario runs: with a policy forbidding uid 1000 the watched
// secret.txt, the run ends at --duration with exit status 1 and an alert
// line naming the pid the guest logged for that open; then a vmscope
// binary watching is killed with SIGKILL once its traps are armed, `guest
// release` restores the guest, and the guest runs its scenario (which
// touches the watched files) to the end: no watch was left behind.
func watchCLIPolicyThenKill(t *testing.T, l *watchtest.Guest) {
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy")
	os.WriteFile(policy, []byte("# secret.txt is not for uid 1000\ndeny /mnt/data/watched/secret.txt uid=1000\n"), 0o644)
	secret := "/mnt/data/watched/secret.txt"

	var out, errOut syncBuffer
	code := make(chan int, 1)
	go func() {
		code <- run(context.Background(), []string{"watch", "--guest", l.Spec, "--journal", filepath.Join(dir, "j1"),
			"--policy", policy, "--duration", "40s", secret, "/mnt/data/watched/config.txt"}, &out, &errOut)
	}()
	waitText(t, errOut.String, "traps armed", 3*time.Minute)
	mark := l.Mark()
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	if c := <-code; c != exitFindings {
		t.Fatalf("exit %d, want %d (policy broken): %s", c, exitFindings, errOut.String())
	}
	var openPID int
	for _, a := range l.ActionsAfter(mark) {
		if a.Path == secret && a.Kind == "open" && a.UID == 1000 && openPID == 0 {
			openPID = a.PID
		}
	}
	if openPID == 0 {
		t.Fatalf("the guest logged no open of %s", secret)
	}
	alerts := 0
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		var ev struct {
			Kind, Path, Action string
			PID                int `json:"pid"`
			UID                int `json:"uid"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if ev.Action == "alert" {
			alerts++
			if ev.Path != secret || ev.UID != 1000 {
				t.Errorf("alert %+v: not a forbidden access", ev)
			}
		}
		if ev.Kind == "open" && ev.Path == secret && ev.PID == openPID && ev.Action != "alert" {
			t.Errorf("open of %s by pid %d: action %q, want alert", secret, openPID, ev.Action)
		}
	}
	if alerts == 0 {
		t.Errorf("no alert:\n%s", out.String())
	}
	st := qmpStatus(t, l)
	if st != "running" {
		t.Fatalf("after --duration: guest %q, want running", st)
	}

	killRelease(t, l, func() error {
		// The scenario goes on touching the watched files: a watchpoint
		// left behind would stop the guest (QEMU stops on a hit with no
		// debugger).
		return l.WaitAfter(mark, "=== SCENARIO DONE ===", 6*time.Minute)
	})
}

// TestWatchCLIKill510 is the cleanup half of TestWatchCLI/policy-then-kill on
// the previous Debian stable kernel (bullseye's 5.10): a vmscope binary
// watching secret.txt and notes.txt is killed with SIGKILL once its traps
// are armed, `guest release` restores the guest, and the guest then runs
// its short scenario (which opens both files) to the end, still running:
// no watch was left behind.
func TestWatchCLIKill510(t *testing.T) {
	if testing.Short() {
		fixture.Missing(t, "-short: boots a guest")
	}
	l := watchtest.BootFrom(t, watchtest.Dir510(), "bash testdata/watch/guest510.sh", "")
	killRelease(t, l, func() error {
		mark := l.Mark()
		if err := l.StartCommand("short", "=== SHORT START ==="); err != nil {
			return err
		}
		return l.WaitAfter(mark, "=== SHORT DONE ===", 3*time.Minute)
	})
}

// killRelease starts a vmscope binary watching secret.txt and notes.txt,
// kills it with SIGKILL once its traps are armed, runs `guest release`
// (which must say the traps were removed and delete the journal), checks
// that the guest runs, then runs touch (guest work that touches the
// watched files: a watchpoint left behind would stop the guest, as QEMU
// stops on a hit with no debugger) and checks that the guest still runs.
func killRelease(t *testing.T, l *watchtest.Guest, touch func() error) {
	t.Helper()
	dir := t.TempDir()
	secret := "/mnt/data/watched/secret.txt"
	// SIGKILL a watching vmscope, then release.
	bin := vmscopeBin(t)
	j2 := filepath.Join(dir, "j2")
	var kerr syncBuffer
	cmd := exec.Command(bin, "watch", "--guest", l.Spec, "--journal", j2, secret, "/mnt/data/watched/notes.txt")
	cmd.Stderr = &kerr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitText(t, kerr.String, "traps armed", 3*time.Minute)
	time.Sleep(2 * time.Second)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	rel, relErr, c := vmscope(t, "guest", "release", "--guest", l.Spec, "--journal", j2)
	if c != 0 || !strings.Contains(rel, "traps removed") {
		t.Fatalf("guest release: exit %d: %s %s", c, rel, relErr)
	}
	t.Logf("release: %s", rel)
	if _, err := os.Stat(j2); !os.IsNotExist(err) {
		t.Errorf("journal %s still there after release: %v", j2, err)
	}
	if st := qmpStatus(t, l); st != "running" {
		t.Fatalf("after release: guest %q, want running", st)
	}
	if err := touch(); err != nil {
		t.Fatal(err)
	}
	if st := qmpStatus(t, l); st != "running" {
		t.Errorf("after the guest touched the watched files: guest %q, want running", st)
	}
}

func qmpStatus(t *testing.T, l *watchtest.Guest) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, err := qemu.DialQMP(ctx, l.QMP)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	st, err := q.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.Status
}

// watchCLIDenyTable runs `vmscope watch --mode deny --policy FILE
// --format table` on the fixture guest while it runs its short scenario
// (opens of watched and unwatched files as uids 0, 1000 and 1001): the
// guest's own log shows EACCES for exactly the two opens the policy
// forbids (secret.txt by uid 1000) and every other action succeeds; the
// exit status is 1; each output line is one table row (time, kind, path,
// pid, comm, uid, VFS entry, action) and the forbidden opens' rows name
// the pids the guest logged, with action deny.
func watchCLIDenyTable(t *testing.T, l *watchtest.Guest) {
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy")
	os.WriteFile(policy, []byte("deny /mnt/data/watched/secret.txt uid=1000\n"), 0o644)
	secret := "/mnt/data/watched/secret.txt"

	var out, errOut syncBuffer
	code := make(chan int, 1)
	go func() {
		code <- run(context.Background(), []string{"watch", "--guest", l.Spec, "--journal", filepath.Join(dir, "j"),
			"--mode", "deny", "--policy", policy, "--format", "table", "--duration", "45s",
			secret, "/mnt/data/watched/config.txt", "/mnt/data/watched/notes.txt"}, &out, &errOut)
	}()
	waitText(t, errOut.String, "traps armed", 3*time.Minute)
	armed := time.Now()
	mark := l.Mark()
	started := false
	for i := 0; i < 3 && !started; i++ {
		if err := l.Send("short"); err != nil {
			t.Fatal(err)
		}
		started = l.WaitAfter(mark, "=== SHORT START ===", 20*time.Second) == nil
	}
	if !started {
		t.Fatal("the guest did not start its short scenario")
	}
	if err := l.WaitAfter(mark, "=== SHORT DONE ===", 40*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("short scenario done %v after the traps were armed (--duration 45s)", time.Since(armed).Round(time.Second))
	select {
	case c := <-code:
		t.Fatalf("vmscope exited (%d) before the scenario ended: the test's --duration is too short for this host", c)
	default:
	}
	if c := <-code; c != exitFindings {
		t.Fatalf("exit %d, want %d (policy broken): %s", c, exitFindings, errOut.String())
	}
	t.Logf("stderr:\n%s", errOut.String())

	forbidden := map[int]bool{}
	acts := 0
	for _, a := range l.ActionsAfter(mark) {
		acts++
		if a.Path == secret && a.UID == 1000 && a.Kind == "open" {
			forbidden[a.PID] = true
			if a.Result != "EACCES" {
				t.Errorf("forbidden open of %s by pid %d: %s, want EACCES", secret, a.PID, a.Result)
			}
		} else if a.Result != "ok" {
			t.Errorf("%+v: %s, but the policy does not forbid it", a, a.Result)
		}
	}
	if len(forbidden) != 2 || acts < 9 {
		t.Fatalf("%d forbidden opens among %d actions in the guest's log, want 2 among 9 or more", len(forbidden), acts)
	}

	denied := map[int]bool{}
	rows := 0
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 8 {
			t.Errorf("row %q: %d columns, want 8", line, len(f))
			continue
		}
		rows++
		if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
			t.Errorf("row %q: time: %v", line, err)
		}
		pid, err1 := strconv.Atoi(f[3])
		uid, err2 := strconv.Atoi(f[5])
		if err1 != nil || err2 != nil {
			t.Errorf("row %q: pid or uid not a number", line)
			continue
		}
		switch f[7] {
		case "deny":
			if f[2] != secret || uid != 1000 {
				t.Errorf("row %q: denied, but not a forbidden access", line)
			}
			if f[1] == "open" {
				denied[pid] = true
			}
		case "log":
			if f[2] == secret && uid == 1000 {
				t.Errorf("row %q: a forbidden access logged, not denied", line)
			}
		default:
			t.Errorf("row %q: action %q", line, f[7])
		}
	}
	for pid := range forbidden {
		if !denied[pid] {
			t.Errorf("forbidden open by pid %d: no deny row:\n%s", pid, out.String())
		}
	}
	if rows < 4 {
		t.Errorf("%d rows, want the watched opens of the scenario:\n%s", rows, out.String())
	}
	if st := qmpStatus(t, l); st != "running" {
		t.Errorf("after the run: guest %q, want running", st)
	}
}
