package dirty

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/internal/testdisk"
)

// TestFullCompare checks the full walk against what the workload's debugfs
// script and in-place write did (the ground truth by construction), and
// the block-level Compare against the full walk: the same paths at content
// level, in both directions.
func TestFullCompare(t *testing.T) {
	ctx := context.Background()
	dir, _ := workload(t)
	oim, od := testdisk.Open(t, filepath.Join(dir, "base.img"))
	defer oim.Close()
	cim, cd := testdisk.Open(t, filepath.Join(dir, "changed.img"))
	defer cim.Close()
	full, err := FullCompare(ctx, od, cd)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range full.Errors {
		t.Error(e)
	}
	got := map[string]Change{}
	for _, c := range full.Changes {
		got[c.Path] = c
		t.Logf("%-9s %-5s %-24s %v", c.Change, c.Type, c.Path, c.Fields)
	}
	want := map[string]string{
		"/sub/new.txt": Added, "/gone/x": Deleted, "/gone": Deleted, "/newdir": Added,
		"/newdir/inner.txt": Added, "/sub/deep/a-link.txt": Added, "/c.txt": Deleted,
		"/sub/c-renamed.txt": Added, "/etc/hosts": Metadata, "/etc/passwd": Metadata,
		"/lnk": Modified, "/var/log/app.log": Modified, "/big.bin": Modified, "/sub/a.txt": Metadata,
	}
	for p, k := range want {
		c, ok := got[p]
		switch {
		case !ok:
			t.Errorf("missed %s (%s)", p, k)
		case c.Change != k:
			t.Errorf("%s: %s, want %s", p, c.Change, k)
		case k == Modified && c.Type == "file" && !c.Rescan:
			t.Errorf("%s: content changed, not marked for re-scan", p)
		}
	}
	for p, c := range got {
		if want[p] == "" && c.Type != "dir" {
			t.Errorf("extra: %s %s %v", c.Change, p, c.Fields)
		}
	}

	// The block-level diff finds the same content-level changes.
	sel, err := Compare(ctx, oim, od, cim, cd)
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]bool{}
	for _, c := range sel.Changes {
		for _, p := range append(c.Paths, c.OldPaths...) {
			paths[p] = true
		}
	}
	for _, c := range full.Changes {
		if c.Change != Metadata && !paths[c.Path] {
			t.Errorf("Compare missed %s %s", c.Change, c.Path)
		}
	}
	for _, c := range sel.Changes {
		// debugfs reuses a freed inode number without a new generation:
		// Compare sees that inode's content change, the walk a new path.
		if k := got[c.Path].Change; c.Change == Modified && c.Rescan && k != Modified && k != Added {
			t.Errorf("Compare reports %s modified; the full walk: %q", c.Path, k)
		}
	}
}
