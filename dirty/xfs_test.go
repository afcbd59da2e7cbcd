package dirty

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/fsparse/xfs"
	"github.com/vmscope/vmscope/internal/fixture"
)

func xfsFixture(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", "out-xfs", name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (run bash testdata/xfs/build.sh)", p)
	}
	return p
}

// TestXFSOverlayVsTruth polls an XFS volume through a qcow2 overlay that
// holds exactly the blocks a loop mount changed (testdata/xfs/build.sh:
// writes into a B+tree file and into a reflinked clone, a file created, one
// deleted from a node directory, a rename, a chmod, an append, a write into
// a hole). Every path the script changed is found (zero missed), and the
// changes equal a whole-tree comparison of the two volumes (zero extra).
func TestXFSOverlayVsTruth(t *testing.T) {
	ctx := context.Background()
	_, oldV := openVol(t, xfsFixture(t, "xfs.img"))
	im, newV := openVol(t, xfsFixture(t, "overlay.qcow2"))
	if xfs.Of(oldV) == nil {
		t.Fatalf("xfs.img opened as %s", oldV.Type)
	}
	old, err := BuildIndex(ctx, oldV)
	if err != nil {
		t.Fatal(err)
	}
	if len(old.Files) < 11000 {
		t.Fatalf("index holds %d files", len(old.Files))
	}
	top, err := im.Layers()[0].Allocated(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res := pollLogged(t, newV, old, top, WithOldDevice(oldV.Device))
	before, after := walkAll(t, oldV), walkAll(t, newV)
	checkAgainstTruth(t, truthDiff(before, after), after, res.Changes)
	b, err := os.ReadFile(xfsFixture(t, "changes.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range strings.Fields(string(b)) {
		p = "/" + p
		found := false
		for _, c := range res.Changes {
			found = found || c.Path == p || slices.Contains(c.Paths, p) || slices.Contains(c.OldPaths, p)
		}
		if !found {
			t.Errorf("missed: %s (changed by the script)", p)
		}
	}
	// btree-clone shares its blocks with btree: the write into btree went
	// to new blocks (copy on write), so the clone is not due.
	for _, c := range res.Changes {
		if c.Path == "/x/btree-clone" {
			t.Errorf("btree-clone reported, unchanged: %+v", c)
		}
	}
}

// TestXFSIndexVsBlockUse: the dirty index's block → owner map agrees with
// xfs_db blockuse -n for every block xfs_db gives to an inode.
func TestXFSIndexVsBlockUse(t *testing.T) {
	ctx := context.Background()
	_, v := openVol(t, xfsFixture(t, "xfs.img"))
	x, err := BuildIndex(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(xfsFixture(t, "blockuse.txt"))
	if err != nil {
		t.Fatal(err)
	}
	sb := xfs.Of(v).Super()
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 7 || f[5] != "inode" {
			continue
		}
		var ag, bno, ino uint64
		if _, err := fmt.Sscanf(f[2], "(%d/%d)", &ag, &bno); err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Sscan(f[6], &ino); err != nil {
			t.Fatal(err)
		}
		blk := ag*uint64(sb.AGBlocks) + bno
		found := false
		x.ownedBy(blk, blk+1, func(o owner) { found = found || uint64(o.ino) == ino })
		if !found {
			t.Errorf("block %d: xfs_db gives it to inode %d, the index does not", blk, ino)
		}
		n++
	}
	if n < 10000 {
		t.Errorf("only %d owned blocks compared", n)
	}
}
