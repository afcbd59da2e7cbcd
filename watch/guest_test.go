package watch

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmscope/vmscope/watch/watchtest"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// openKernel attaches to the guest (its own journal in the test's
// folder) and discovers its kernel.
func openKernel(t *testing.T, l *watchtest.Guest) (*qemu.Guest, *Kernel) {
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
	l := watchtest.Boot(t, "")
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
