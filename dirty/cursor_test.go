package dirty

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// fileBlock returns the filesystem block (4 KiB, the disk offset / 4096: the
// workload's images have no partition table) of block 0 of path in img, as
// debugfs maps it.
func fileBlock(t *testing.T, dir, img, path string) int64 {
	t.Helper()
	out := sh(t, dir, "debugfs", "-R", "bmap "+path+" 0", img)
	blk, err := strconv.ParseInt(strings.TrimSpace(lastLine(out)), 10, 64)
	if err != nil || blk == 0 {
		t.Fatalf("debugfs bmap %s: %q", path, out)
	}
	return blk
}

// tree is the full walk of the only volume of an image (the reference).
func tree(t *testing.T, img string) map[string]node {
	t.Helper()
	im, v := openVol(t, img)
	defer im.Close()
	return walkAll(t, v)
}

func hasReason(cs []Change, k Kind) bool {
	return slices.ContainsFunc(cs, func(c Change) bool { return slices.Contains(c.Reasons, k) })
}

// overwrite is the qemu-io command that overwrites 4 KiB block blk with Y.
func overwrite(blk int64) string { return fmt.Sprintf("write -P 0x59 %d 4096", blk*4096) }

// TestCowChainRotation: an external snapshot puts a new overlay above the
// one the last poll saw. The writes made to the old overlay after that poll
// and those in the new one must all be found, without a full pass (a poll
// that looked at the new top overlay alone would miss the first); a poll
// with nothing written since finds nothing, however much the overlays hold;
// an overlay made anew at the same path (the VM reverted) is seen changing
// back; and when the overlay the last poll saw is gone from the chain
// (discarded: a new overlay on the base) only a full pass is safe.
func TestCowChainRotation(t *testing.T) {
	dir, writes := workload(t)
	path := func(n string) string { return filepath.Join(dir, n) }
	blk := fileBlock(t, dir, "changed.img", "/sub/f010")
	before := tree(t, path("base.img"))
	sh(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw", "ov1.qcow2")
	var st memStore
	if sel := poll(t, path("ov1.qcow2"), "cow", &st); !hasReason(sel.Changes, KindFull) {
		t.Fatal("the first poll is not a full pass")
	}

	qemuIO(t, dir, "ov1.qcow2", writes)
	sh(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "ov1.qcow2", "-F", "qcow2", "ov2.qcow2")
	qemuIO(t, dir, "ov2.qcow2", []string{overwrite(blk)})
	after := tree(t, path("ov2.qcow2"))
	truth := truthDiff(before, after)
	if truth["/sub/f010"] != Modified || truth["/sub/new.txt"] != Added {
		t.Fatalf("the reference does not see both overlays' writes: %v", truth)
	}
	sel := poll(t, path("ov2.qcow2"), "cow", &st)
	if hasReason(sel.Changes, KindFull) {
		t.Error("a rotated chain made a full pass")
	}
	checkAgainstTruth(t, truth, after, sel.Changes)

	sel = poll(t, path("ov2.qcow2"), "cow", &st)
	for _, c := range sel.Changes {
		t.Errorf("nothing written since the last poll, yet: %s %s %v", c.Change, c.Path, c.Reasons)
	}
	if s := sel.Stats["disk"]; s.DirtyBytes != 0 {
		t.Errorf("nothing written since the last poll, yet %d dirty bytes", s.DirtyBytes)
	}

	// The VM reverted: ov2 made anew at the same path, on ov1. The block
	// of /sub/f010 that ov2 held is read from ov1 again: f010 changed back.
	sh(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "ov1.qcow2", "-F", "qcow2", "ov2.qcow2")
	reverted := tree(t, path("ov2.qcow2"))
	truth = truthDiff(after, reverted)
	if truth["/sub/f010"] != Modified {
		t.Fatalf("the reference does not see the revert: %v", truth)
	}
	sel = poll(t, path("ov2.qcow2"), "cow", &st)
	checkAgainstTruth(t, truth, reverted, sel.Changes)

	sh(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw", "ov3.qcow2")
	sel = poll(t, path("ov3.qcow2"), "cow", &st)
	if !hasReason(sel.Changes, KindFull) {
		t.Error("a discarded overlay did not force a full pass")
	}
}

// TestBitmapRotation follows the rotation recipe of incremental backup: a
// new bitmap is added and the old one disabled, the poll reads the old one;
// the next poll reads the new one. Each poll must report exactly what was
// written since the previous one, with no full pass; a bitmap that was not
// enabled at the last poll, or that holds less than it did then (cleared),
// may have missed writes: it forces a full pass.
func TestBitmapRotation(t *testing.T) {
	dir, writes := workload(t)
	path := func(n string) string { return filepath.Join(dir, n) }
	img := path("bm.qcow2")
	blk := fileBlock(t, dir, "changed.img", "/sub/f010")
	sh(t, dir, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "base.img", "bm.qcow2")
	sh(t, dir, "qemu-img", "bitmap", "--add", "--enable", "bm.qcow2", "b1")
	before := tree(t, img)
	var st memStore
	if sel := poll(t, img, "bitmap:b1", &st); !hasReason(sel.Changes, KindFull) {
		t.Fatal("the first poll is not a full pass")
	}

	qemuIO(t, dir, "bm.qcow2", writes)
	sh(t, dir, "qemu-img", "bitmap", "--add", "--enable", "bm.qcow2", "b2")
	sh(t, dir, "qemu-img", "bitmap", "--disable", "bm.qcow2", "b1")
	mid := tree(t, img)
	sel := poll(t, img, "bitmap:b1", &st)
	if hasReason(sel.Changes, KindFull) {
		t.Error("the second poll of the same bitmap made a full pass")
	}
	checkAgainstTruth(t, truthDiff(before, mid), mid, sel.Changes)

	// b1 still holds the workload's writes: none is new.
	sel = poll(t, img, "bitmap:b1", &st)
	for _, c := range sel.Changes {
		t.Errorf("nothing written since the last poll, yet: %s %s %v", c.Change, c.Path, c.Reasons)
	}
	if s := sel.Stats["disk"]; s.DirtyBytes != 0 {
		t.Errorf("nothing written since the last poll, yet %d dirty bytes", s.DirtyBytes)
	}

	// The rotated bitmap: it was enabled at the last poll.
	qemuIO(t, dir, "bm.qcow2", []string{overwrite(blk)})
	end := tree(t, img)
	truth := truthDiff(mid, end)
	if len(truth) != 1 || truth["/sub/f010"] != Modified {
		t.Fatalf("reference: %v, want /sub/f010 modified", truth)
	}
	sel = poll(t, img, "bitmap:b2", &st)
	if hasReason(sel.Changes, KindFull) {
		t.Error("a rotated bitmap made a full pass")
	}
	checkStrict(t, truth, end, sel.Changes)
	if s := sel.Stats["disk"]; s.DirtyBytes != HashBlock {
		t.Errorf("dirty bytes %d, want the one block written (%d)", s.DirtyBytes, HashBlock)
	}

	// b2 removed and added again after a write: the write is in no bitmap
	// any more, and b2 holds less than at the last poll.
	qemuIO(t, dir, "bm.qcow2", []string{overwrite(fileBlock(t, dir, "changed.img", "/sub/f011"))})
	sh(t, dir, "qemu-img", "bitmap", "--remove", "bm.qcow2", "b2")
	sh(t, dir, "qemu-img", "bitmap", "--add", "--enable", "bm.qcow2", "b2")
	if sel = poll(t, img, "bitmap:b2", &st); !hasReason(sel.Changes, KindFull) {
		t.Error("a bitmap that lost its bits did not force a full pass")
	}

	sh(t, dir, "qemu-img", "bitmap", "--add", "--enable", "bm.qcow2", "b3")
	if sel = poll(t, img, "bitmap:b3", &st); !hasReason(sel.Changes, KindFull) {
		t.Error("a bitmap added after the last poll did not force a full pass")
	}
}
