package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
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

// TestWatchCLIPolicyThenKill runs `vmscope watch` on the fixture guest
// while its scenario runs: with a policy forbidding uid 1000 the watched
// secret.txt, the run ends at --duration with exit status 1 and an alert
// line naming the pid the guest logged for that open; then a vmscope
// binary watching is killed with SIGKILL once its traps are armed, `guest
// release` restores the guest, and the guest runs its scenario (which
// touches the watched files) to the end: no watch was left behind.
func TestWatchCLIPolicyThenKill(t *testing.T) {
	if testing.Short() {
		fixture.Missing(t, "-short: boots a guest")
	}
	l := watchtest.Boot(t, "")
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
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	if c := <-code; c != exitFindings {
		t.Fatalf("exit %d, want %d (policy broken): %s", c, exitFindings, errOut.String())
	}
	var openPID int
	for _, a := range l.Actions() {
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

	// SIGKILL a watching vmscope, then release.
	bin := filepath.Join(dir, "vmscope")
	if b, err := exec.Command(fixture.Tool(t, "go"), "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
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
	// The scenario goes on touching the watched files: a watchpoint left
	// behind would stop the guest (QEMU stops on a hit with no debugger).
	if err := l.WaitFor("=== SCENARIO DONE ===", 6*time.Minute); err != nil {
		t.Fatal(err)
	}
	if st := qmpStatus(t, l); st != "running" {
		t.Errorf("after the scenario: guest %q, want running", st)
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
