package watch

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/watch/denyctl"
	"github.com/vmscope/vmscope/watch/watchtest"
)

// openKernel attaches to the guest (its own journal in the test's
// folder, unless opts say otherwise) and discovers its kernel.
func openKernel(t testing.TB, l *watchtest.Guest, opts ...qemu.Option) (*qemu.Guest, *Kernel) {
	t.Helper()
	ctx := context.Background()
	if len(opts) == 0 {
		opts = []qemu.Option{qemu.WithJournal(filepath.Join(l.Dir, "journal"))}
	}
	g, err := qemu.Open(ctx, l.Spec, opts...)
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
// parent. This test boots with KASLR off; with KASLR on, on both kernels,
// the same check is the first subtest of TestWatchScenario and
// TestWatchScenario510 (one boot each).
func TestResolveEqualsGuestStat(t *testing.T) {
	t.Run("append=nokaslr", func(t *testing.T) { resolveEqualsGuestStat(t, watchtest.Boot(t, "nokaslr")) })
}

// boot510 boots the watch fixture on bullseye's 5.10 kernel.
func boot510(t *testing.T) *watchtest.Guest {
	return watchtest.BootFrom(t, watchtest.Dir510(), "bash testdata/watch/guest510.sh", "")
}

func resolveEqualsGuestStat(t *testing.T, l *watchtest.Guest) {
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
	kvmPlans(t, g, w)
}

// kvmPlans checks the KVM plan check on the plans of this guest's
// resolved files: every watched range is one aligned 1/2/4/8-byte piece
// (a valid vmi.Trap), so a plan needs one debug register per range; one
// file needs 9 (its inode's lock, size, mode, owner, link count and
// state, its dentry's name, name pointer and parent) and is refused on
// KVM's 4 with that count named; a pending path alone needs 1 (its
// directory's lock) and is accepted; the six watched files need 46.
func kvmPlans(t *testing.T, g *qemu.Guest, w *Kernel) {
	ctx := context.Background()
	for _, c := range []struct {
		paths []string
		need  int
	}{
		{[]string{"/mnt/data/watched/secret.txt"}, 9},
		{[]string{"/mnt/data/watched/cold.txt"}, 1},
		{watched, 5*9 + 1},
	} {
		x, err := New(ctx, g, w, c.paths, Options{})
		if err != nil {
			t.Fatal(err)
		}
		plan := x.Plan()
		for _, tr := range plan {
			if err := tr.Validate(); err != nil || tr.Access.Read && !tr.Access.Write {
				t.Errorf("%v: %v (not one debug register)", tr, err)
			}
		}
		n, err := DebugRegisters(plan)
		if err != nil || n != len(plan) || n != c.need {
			t.Errorf("%v: %d ranges, %d debug registers, %v; want %d", c.paths, len(plan), n, err, c.need)
		}
		err = x.CheckDebugRegisters(KVMDebugRegisters)
		if c.need <= KVMDebugRegisters {
			if err != nil {
				t.Errorf("%v on KVM: %v", c.paths, err)
			}
			continue
		}
		if want := fmt.Sprintf("needs %d debug registers", c.need); !errors.Is(err, ErrTooManyWatchpoints) || !strings.Contains(err.Error(), want) {
			t.Errorf("%v on KVM: %v, want ErrTooManyWatchpoints saying %q", c.paths, err, want)
		}
		t.Logf("%d paths on KVM: %v", len(c.paths), err)
	}
}

// watched are the fixture's watched files (testdata/watch/build.sh).
var watched = []string{
	"/mnt/data/watched/secret.txt", "/mnt/data/watched/config.txt", "/mnt/data/watched/notes.txt",
	"/mnt/data/watched/moveme.txt", "/mnt/data/watched/victim.txt", "/mnt/data/watched/cold.txt",
}

// scenario is one run of the guest's scenario under watch.
type scenario struct {
	events []Event
	stats  Stats
	l      *watchtest.Guest
	g      *qemu.Guest
	w      *Kernel
	inodes map[string]vmi.VA // the struct inode of each target when the watch began
	mark   int               // the console's length before the command was sent
}

// runScenario watches the fixture's files while the guest runs its
// scenario, and returns the events and the guest.
func runScenario(t *testing.T, l *watchtest.Guest, deny func(g *qemu.Guest) *Deny) scenario {
	return runCommand(t, l, "go", deny)
}

// runCommand is runScenario of the guest's command cmd: "go" (the
// scenario, once per boot) or "short" (the short scenario, which changes
// nothing; then sc.mark is where its console output begins).
func runCommand(t *testing.T, l *watchtest.Guest, cmd string, deny func(g *qemu.Guest) *Deny) scenario {
	g, w := openKernel(t, l)
	sc := scenario{l: l, g: g, w: w, inodes: map[string]vmi.VA{}}
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
	if cmd == "go" && (len(x.Pending()) != 1 || x.Pending()["/mnt/data/watched/cold.txt"] == nil) {
		t.Errorf("pending %v, want cold.txt only", x.Pending())
	}
	for p, tg := range x.Targets() {
		sc.inodes[p] = tg.Inode
	}
	runDone := make(chan error, 1)
	go func() { runDone <- x.Run(ctx) }()
	var events []Event
	collected := make(chan struct{})
	go func() {
		for ev := range x.Events() {
			events = append(events, ev)
		}
		close(collected)
	}()
	time.Sleep(time.Second)
	sc.mark = l.Mark()
	start, done := "=== SCENARIO START ===", "=== SCENARIO DONE ==="
	if cmd == "short" {
		start, done = "=== SHORT START ===", "=== SHORT DONE ==="
	}
	if err := l.StartCommand(cmd, start); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitAfter(sc.mark, done, 6*time.Minute); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
	<-collected
	if bps := g.Breakpoints(); len(bps) != 0 {
		t.Errorf("%d traps left after Run: %v", len(bps), bps)
	}
	sc.events, sc.stats = events, x.Stats()
	return sc
}

// TestWatchScenario checks vmscope's events against the guest's own log
// of its actions (ACT lines: pid, uid, kind) and inotify: each action on
// a watched file is reported once, with its kind, pid, comm and uid; no
// action on an unwatched file is reported; no stop falls outside the
// watched ranges (TCG); after the watched victim.txt is unlinked and many
// files are created, nothing more is reported for it.
//
// One boot (KASLR on) serves two subtests in order: resolve (the check of
// TestResolveEqualsGuestStat, before the scenario caches cold.txt), then
// the scenario.
func TestWatchScenario(t *testing.T) {
	l := watchtest.Boot(t, "")
	t.Run("resolve", func(t *testing.T) { resolveEqualsGuestStat(t, l) })
	t.Run("scenario", func(t *testing.T) { watchScenario(t, l) })
}

// TestWatchScenario510 is TestWatchScenario on the previous Debian stable
// kernel (bullseye's 5.10, KASLR on), and on the same boot, after the
// scenario, deny mode on the short scenario (denyShort).
func TestWatchScenario510(t *testing.T) {
	l := boot510(t)
	t.Run("resolve", func(t *testing.T) { resolveEqualsGuestStat(t, l) })
	t.Run("scenario", func(t *testing.T) { watchScenario(t, l) })
	t.Run("deny", func(t *testing.T) { denyShort(t, l) })
}

// denyShort runs the guest's short scenario (opens of secret.txt by uids
// 1000 and 0, and of other watched and unwatched files) in deny mode with
// uid 1000 forbidden secret.txt: the guest's own log of that run shows
// EACCES for exactly its two opens of secret.txt by uid 1000, every other
// action goes through, and the events of the denied opens say deny.
func denyShort(t *testing.T, l *watchtest.Guest) {
	const secret = "/mnt/data/watched/secret.txt"
	sc := runCommand(t, l, "short", func(g *qemu.Guest) *Deny {
		return &Deny{Controller: denyctl.Controller(g), Forbid: func(p string, ti TaskInfo) bool {
			return p == secret && (ti.UID == 1000 || ti.EUID == 1000)
		}}
	})
	checkDenied(t, sc, sc.l.ActionsAfter(sc.mark), 7)
}

func watchScenario(t *testing.T, guest *watchtest.Guest) {
	sc := runScenario(t, guest, nil)
	events, st, l := sc.events, sc.stats, sc.l
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
	reusedSlot(t, sc)
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
	sc := runScenario(t, watchtest.Boot(t, ""), func(g *qemu.Guest) *Deny {
		return &Deny{Controller: denyctl.Controller(g), Forbid: func(p string, ti TaskInfo) bool {
			return p == secret && (ti.UID == 1000 || ti.EUID == 1000)
		}}
	})
	checkDenied(t, sc, sc.l.Actions(), 100)
}

// checkDenied checks a deny run (uid 1000 forbidden secret.txt) against
// the guest's log of it, acts (at least min actions): EACCES for exactly
// the two opens of secret.txt by uid 1000, and events with action deny
// for them; nothing else denied.
func checkDenied(t *testing.T, sc scenario, acts []watchtest.Action, min int) {
	const secret = "/mnt/data/watched/secret.txt"
	events, st := sc.events, sc.stats
	t.Logf("stats %+v", st)
	if len(acts) < min {
		t.Fatalf("%d ACT lines, want %d or more", len(acts), min)
	}
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
	for _, a := range acts {
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

// reusedSlot proves the scenario reused the unlinked victim.txt's slot:
// a file created after the unlink got its inode number (the guest's own
// fstat, against its stat before the scenario), and its struct inode is
// looked up again in guest memory to say whether the kernel object's
// address was reused too. No event for that file (nor any other created
// one) may appear: the events are by path, and none names a created
// file, and none names victim.txt after its unlink (checked above).
func reusedSlot(t *testing.T, sc scenario) {
	const victim = "/mnt/data/watched/victim.txt"
	before, err := sc.l.Stats("stat")
	if err != nil {
		t.Fatal(err)
	}
	ino := before[victim].Ino
	if ino == 0 {
		t.Fatalf("no stat of %s before the scenario", victim)
	}
	var reuser string
	created := map[string]bool{}
	for _, a := range sc.l.Actions() {
		if a.Kind != "create" {
			continue
		}
		created[a.Path] = true
		if a.Ino == ino && reuser == "" {
			reuser = a.Path
		}
	}
	if len(created) == 0 {
		t.Fatal("the guest logged no create")
	}
	if reuser == "" {
		t.Fatalf("no file created after the unlink got %s's inode %d: the slot was not reused, so the test proves nothing", victim, ino)
	}
	t.Logf("%s reused inode %d of %s", reuser, ino, victim)
	for _, ev := range sc.events {
		if created[ev.Path] {
			t.Errorf("event for a created file %s: %+v", ev.Path, ev)
		}
	}
	// the kernel object: resolve the file that reused the number
	ctx := context.Background()
	if err := sc.g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	defer sc.g.Resume(ctx)
	r, err := NewResolver(ctx, sc.w)
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Resolve(ctx, reuser)
	if err != nil || res.Target == nil {
		t.Fatalf("%s: %+v %v", reuser, res, err)
	}
	if res.Target.Ino != ino {
		t.Errorf("%s: vmscope resolves inode %d, the guest says %d", reuser, res.Target.Ino, ino)
	}
	if sc.inodes[victim] == 0 {
		t.Fatalf("%s was not a target when the watch began", victim)
	}
	t.Logf("struct inode of %s was %#x; of %s now %#x (same address: %v)", victim, uint64(sc.inodes[victim]), reuser,
		uint64(res.Target.Inode), res.Target.Inode == sc.inodes[victim])
}
