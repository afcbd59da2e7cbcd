package dirty

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"slices"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/internal/testdisk"
)

// node is what the reference remembers of one path: the full-walk view.
type node struct {
	e      fsparse.Entry
	sum    string
	xattrs string // name=base64(value), sorted; only the guest's listing has them
}

// walkAll is the independent reference: a full fsparse walk of the volume
// with the sha256 of every regular file.
func walkAll(t *testing.T, v *fsparse.Volume) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := v.Walk(context.Background(), ".", func(e fsparse.Entry, err error) error {
		if err != nil {
			t.Fatalf("walk %s: %v", e.Path, err)
		}
		n := node{e: e}
		if e.Type == "file" {
			f, err := v.OpenInode(e.Ino)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			io.Copy(h, io.NewSectionReader(f, 0, f.Size()))
			n.sum = hex.EncodeToString(h.Sum(nil))
		}
		out[e.Path] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// truthDiff compares two full walks: path → "added", "deleted", "modified"
// (content or identity) or "metadata".
func truthDiff(a, b map[string]node) map[string]string {
	out := map[string]string{}
	for p, x := range a {
		y, ok := b[p]
		switch {
		case !ok:
			out[p] = Deleted
		case x.e.Ino != y.e.Ino || x.e.Type != y.e.Type || x.sum != y.sum:
			out[p] = Modified
		case x.xattrs != y.xattrs:
			out[p] = Metadata
		case x.e.Perm != y.e.Perm || x.e.Uid != y.e.Uid || x.e.Gid != y.e.Gid || x.e.Size != y.e.Size ||
			x.e.Links != y.e.Links || !x.e.Mtime.Equal(y.e.Mtime) || !x.e.Atime.Equal(y.e.Atime) ||
			!x.e.Ctime.Equal(y.e.Ctime) || x.e.Target != y.e.Target || (x.e.Crtime == nil) != (y.e.Crtime == nil) ||
			x.e.Crtime != nil && !x.e.Crtime.Equal(*y.e.Crtime):
			out[p] = Metadata
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			out[p] = Added
		}
	}
	return out
}

// checkAgainstTruth asserts zero misses and zero extras: every path the
// reference finds changed is reported, content changes of regular files
// are marked for re-scan, every report carries a reason, and no report
// names only paths the reference finds unchanged.
func checkAgainstTruth(t *testing.T, truth map[string]string, after map[string]node, got []Change) {
	t.Helper()
	seen := map[string]*Change{}
	for i := range got {
		c := &got[i]
		if len(c.Reasons) == 0 {
			t.Errorf("change without a reason: %+v", c)
		}
		for _, p := range c.Paths {
			seen[p] = c
		}
		for _, p := range c.OldPaths {
			if seen[p] == nil {
				seen[p] = c
			}
		}
	}
	for p, k := range truth {
		c := seen[p]
		if c == nil {
			t.Errorf("missed: %s (%s)", p, k)
			continue
		}
		if k == Modified && after[p].e.Type == "file" && !c.Rescan && c.Change != Deleted && slices.Contains(c.Paths, p) {
			t.Errorf("%s: content changed but not marked for re-scan: %+v", p, c)
		}
	}
	extra := 0
	for i := range got {
		hit := false
		for _, p := range append(slices.Clone(got[i].Paths), got[i].OldPaths...) {
			if truth[p] != "" {
				hit = true
			}
		}
		if !hit {
			extra++
			t.Errorf("extra (reason %v): %s %s %v", got[i].Reasons, got[i].Change, got[i].Path, got[i].Fields)
		}
	}
	t.Logf("%d changed paths in the reference, %d changes reported, %d extra", len(truth), len(got), extra)
}

func openVol(t *testing.T, path string) (*disk.Image, *fsparse.Volume) {
	t.Helper()
	im, d := testdisk.Open(t, path)
	v, err := d.Volume("")
	if err != nil {
		t.Fatal(err)
	}
	return im, v
}

func TestOverlayFixtureVsTruth(t *testing.T) {
	ctx := context.Background()
	_, oldV := openVol(t, fixture.Path(t, "ext4.img"))
	im, newV := openVol(t, fixture.Path(t, "overlay-raw.qcow2"))
	old, err := BuildIndex(ctx, oldV)
	if err != nil {
		t.Fatal(err)
	}
	top, err := im.Layers()[0].Allocated(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res := pollLogged(t, newV, old, top, WithOldDevice(oldV.Device))
	before, after := walkAll(t, oldV), walkAll(t, newV)
	checkAgainstTruth(t, truthDiff(before, after), after, res.Changes)
}

// pollLogged runs Poll, fails the test on its errors and logs what it
// found.
func pollLogged(t *testing.T, v *fsparse.Volume, old *Index, dirty rangeset.Set, opts ...Option) *Result {
	t.Helper()
	res, err := Poll(context.Background(), v, old, dirty, opts...)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range res.Errors {
		t.Error(e)
	}
	for _, c := range res.Changes {
		t.Logf("%-9s %-28s %v %v old=%v", c.Change, c.Path, c.Reasons, c.Fields, c.OldPaths)
	}
	t.Logf("stats %+v", res.Stats)
	return res
}
