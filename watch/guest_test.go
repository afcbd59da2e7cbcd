package watch

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/watch/denyctl"
	"github.com/vmscope/vmscope/watch/watchtest"
)

// openKernel attaches to the guest (its own journal in the test's
// folder) and discovers its kernel.
func openKernel(t testing.TB, l *watchtest.Guest) (*qemu.Guest, *Kernel) {
	t.Helper()
	ctx := context.Background()
	g, err := qemu.Open(ctx, l.Spec, qemu.WithJournal(filepath.Join(l.Dir, "journal")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close(context.Background()) })
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	cpus, err := g.CPUs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k, err := linux.Discover(ctx, g, linux.WithCPUs(cpus))
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewKernel(k)
	if err != nil {
		t.Fatal(err)
	}
	return g, w
}

// TestResolveEqualsGuestStat resolves the fixture's files in the live
// guest's dentry cache and checks each inode number and device against the
// guest's own stat; a file never looked up is Pending, under its cached
// parent.
func TestResolveEqualsGuestStat(t *testing.T) {
	for _, mode := range []string{"", "nokaslr"} {
		t.Run("append="+mode, func(t *testing.T) { resolveEqualsGuestStat(t, mode) })
	}
}

func resolveEqualsGuestStat(t *testing.T, appendArgs string) {
	l := watchtest.Boot(t, appendArgs)
	truth, err := l.Stats("stat")
	if err != nil || len(truth) < 9 {
		t.Fatalf("stat section: %d lines, %v", len(truth), err)
	}
	g, w := openKernel(t, l)
	defer g.Resume(context.Background())
	ctx := context.Background()
	start := time.Now()
	r, err := NewResolver(ctx, w)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range truth {
		res, err := r.Resolve(ctx, path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if res.Target == nil {
			t.Errorf("%s: pending (%+v), but the guest stat'ed it", path, res.Pending)
			continue
		}
		if res.Target.Ino != want.Ino || res.Target.DevT != want.Dev {
			t.Errorf("%s: inode %d dev %d, guest stat says %d %d", path, res.Target.Ino, res.Target.DevT, want.Ino, want.Dev)
		}
	}
	res, err := r.Resolve(ctx, "/mnt/data/watched/cold.txt")
	if err != nil {
		t.Fatal(err)
	}
	if res.Pending == nil || res.Pending.Missing != "cold.txt" {
		t.Errorf("cold.txt: %+v, want pending on cold.txt", res)
	}
	dir, err := r.Resolve(ctx, "/mnt/data/watched")
	if err != nil || dir.Target == nil || dir.Target.Inode != res.Pending.DirInode {
		t.Errorf("cold.txt pending under inode %#x, /mnt/data/watched is %+v %v", uint64(res.Pending.DirInode), dir.Target, err)
	}
	t.Logf("resolved %d paths in %v", len(truth)+2, time.Since(start))
}

// watched are the fixture's watched files (testdata/watch/build.sh).
var watched = []string{
	"/mnt/data/watched/secret.txt", "/mnt/data/watched/config.txt", "/mnt/data/watched/notes.txt",
	"/mnt/data/watched/moveme.txt", "/mnt/data/watched/victim.txt", "/mnt/data/watched/cold.txt",
}

// runScenario watches the fixture's files while the guest runs its
// scenario, and returns the events and the guest.
func runScenario(t *testing.T, appendArgs string, deny func(g *qemu.Guest) *Deny) ([]Event, Stats, *watchtest.Guest) {
	l := watchtest.Boot(t, appendArgs)
	g, w := openKernel(t, l)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := Options{Queue: 4096}
	if deny != nil {
		opts.Deny = deny(g)
	}
	x, err := New(ctx, g, w, watched, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Pending()) != 1 || x.Pending()["/mnt/data/watched/cold.txt"] == nil {
		t.Errorf("pending %v, want cold.txt only", x.Pending())
	}
	done := make(chan error, 1)
	go func() { done <- x.Run(ctx) }()
	var events []Event
	collected := make(chan struct{})
	go func() {
		for ev := range x.Events() {
			events = append(events, ev)
		}
		close(collected)
	}()
	time.Sleep(time.Second)
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFor("=== SCENARIO DONE ===", 6*time.Minute); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	<-collected
	if bps := g.Breakpoints(); len(bps) != 0 {
		t.Errorf("%d traps left after Run: %v", len(bps), bps)
	}
	return events, x.Stats(), l
}

// TestWatchScenario checks vmscope's events against the guest's own log
// of its actions (ACT lines: pid, uid, kind) and inotify: each action on
// a watched file is reported once, with its kind, pid, comm and uid; no
// action on an unwatched file is reported; no stop falls outside the
// watched ranges (TCG); after the watched victim.txt is unlinked and many
// files are created, nothing more is reported for it.
func TestWatchScenario(t *testing.T) {
	events, st, l := runScenario(t, "", nil)
	for _, ev := range events {
		t.Logf("event %s %s pid=%d comm=%s uid=%d fields=%v fn=%s entry=%s stops=%d note=%s", ev.Kind, ev.Path, ev.PID, ev.Comm, ev.UID, ev.Fields, ev.Function, ev.VFSEntry, ev.Stops, ev.Note)
	}
	t.Logf("stats %+v", st)
	acts := l.Actions()
	if len(acts) < 100 {
		t.Fatalf("%d ACT lines", len(acts))
	}
	// The guest logs getpid(), the thread group: a Go actor may make a
	// system call on any of its threads, so events are matched by TGID.
	byPID := map[int][]Event{}
	for _, ev := range events {
		byPID[ev.TGID] = append(byPID[ev.TGID], ev)
	}
	isWatched := map[string]bool{}
	for _, p := range watched {
		isWatched[p] = true
	}
	checked := 0
	for _, a := range acts {
		var got []Event
		for _, ev := range byPID[a.PID] {
			if ev.Kind == a.Kind {
				got = append(got, ev)
			}
		}
		if !isWatched[a.Path] {
			if len(byPID[a.PID]) != 0 {
				t.Errorf("unwatched %s %s by pid %d: reported %+v", a.Kind, a.Path, a.PID, byPID[a.PID])
			}
			continue
		}
		checked++
		if len(got) != 1 {
			t.Errorf("%s %s by pid %d: %d events of that kind, want 1 (%+v)", a.Kind, a.Path, a.PID, len(got), byPID[a.PID])
			continue
		}
		ev := got[0]
		if ev.Path != a.Path || ev.Comm != a.Comm || int(ev.UID) != a.UID || int(ev.EUID) != a.EUID || ev.TGID != a.PID {
			t.Errorf("%s %s by pid %d uid %d comm %s: reported %+v", a.Kind, a.Path, a.PID, a.UID, a.Comm, ev)
		}
	}
	// victim.txt: unlinked (its inode freed: the event says so), then
	// files are created until its slot may be reused: nothing more
	after := false
	for _, ev := range events {
		if ev.Path != "/mnt/data/watched/victim.txt" {
			continue
		}
		if after {
			t.Errorf("victim.txt reported after its unlink: %+v", ev)
		}
		if ev.Kind == "unlink" {
			after = true
			if ev.Note != "freed" {
				t.Errorf("the unlink of victim.txt: note %q, want freed", ev.Note)
			}
		}
	}
	if !after {
		t.Error("no unlink of victim.txt reported")
	}
	if checked < 10 {
		t.Errorf("checked %d watched actions", checked)
	}
	if st.Outside != 0 {
		t.Errorf("%d stops outside the watched ranges", st.Outside)
	}
}

// TestDenyScenario runs the scenario in deny mode with uid 1000 forbidden
// secret.txt: the guest's own log shows EACCES for exactly the opens of
// secret.txt by uid 1000, and every other action goes through; the
// events of the denied opens say deny.
func TestDenyScenario(t *testing.T) {
	const secret = "/mnt/data/watched/secret.txt"
	events, st, l := runScenario(t, "", func(g *qemu.Guest) *Deny {
		return &Deny{Controller: denyctl.Controller(g), Forbid: func(p string, ti TaskInfo) bool {
			return p == secret && (ti.UID == 1000 || ti.EUID == 1000)
		}}
	})
	t.Logf("stats %+v", st)
	denied := map[int]bool{}
	for _, ev := range events {
		if ev.Action == "deny" {
			denied[ev.TGID] = true
			if ev.Path != secret || ev.UID != 1000 {
				t.Errorf("denied event %+v is not a forbidden access", ev)
			}
		}
	}
	n := 0
	for _, a := range l.Actions() {
		forbidden := a.Path == secret && a.UID == 1000 && a.Kind == "open"
		if forbidden {
			n++
			if a.Result != "EACCES" {
				t.Errorf("forbidden open by pid %d: %s, want EACCES", a.PID, a.Result)
			}
			if !denied[a.PID] {
				t.Errorf("forbidden open by pid %d: no event with action deny", a.PID)
			}
		} else if a.Result == "EACCES" {
			t.Errorf("%+v: EACCES, but nothing forbids it", a)
		}
	}
	if n != 2 {
		t.Errorf("%d forbidden opens in the scenario, want 2", n)
	}
	if st.Denied != n {
		t.Errorf("%d permission checks denied, want %d", st.Denied, n)
	}
}
