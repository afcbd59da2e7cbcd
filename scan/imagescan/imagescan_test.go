package imagescan_test

import (
	"context"
	"path/filepath"
	"sort"
	"testing"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/dirty/state"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/qcow"
	"github.com/vmscope/vmscope/scan"
	"github.com/vmscope/vmscope/scan/imagescan"
)

// TestCommitVerdictsOnWholeDisk polls a filesystem on a whole disk (its
// volume is "disk" to dirty, "" to scan results), scans the due files with
// the marker rules and commits: the state must hold the verdict "match"
// for exactly the files the scan found, and "clean" for the others it read.
func TestCommitVerdictsOnWholeDisk(t *testing.T) {
	ctx := context.Background()
	im, err := qcow.Open(fixture.Path(t, "scan-p1.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	d, err := fsparse.Open(im, im.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Volumes) != 1 || d.Volumes[0].Partition.Index != 0 || imagescan.PartitionName(d.Volumes[0]) != "" {
		t.Fatalf("want one whole-disk volume, got %d", len(d.Volumes))
	}
	vol := d.Volumes[0].ID
	rules, err := scan.LoadRules(filepath.Join(fixture.Root(), "testdata", "rules", "markers.yar"))
	if err != nil {
		t.Fatal(err)
	}
	statePath := filepath.Join(t.TempDir(), "state.db")
	db, err := state.Open(statePath)
	if err != nil {
		t.Fatal(err)
	}
	sel, err := dirty.Select(ctx, im, d, dirty.Hash(im), db, rules.Digest())
	if err != nil {
		t.Fatal(err)
	}
	res, err := imagescan.Scan(ctx, d, rules, sel)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) > 0 {
		t.Fatalf("%d errors, the first: %v", len(res.Errors), res.Errors[0])
	}
	found := map[string]bool{}
	for _, f := range res.Findings {
		if f.Partition != "" {
			t.Errorf("finding %s on partition %q, want \"\"", f.Path, f.Partition)
		}
		found[f.Path] = true
	}
	if len(found) == 0 {
		t.Fatal("no findings: the fixture holds marker files")
	}
	if err := imagescan.Commit(ctx, d, sel, res); err != nil {
		t.Fatal(err)
	}
	sel.Close()
	db.Close()

	db, err = state.Open(statePath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	snap, err := db.Load(dirty.Identity(im, d))
	if err != nil || snap == nil {
		t.Fatalf("load: %v", err)
	}
	x := snap.Indexes[vol]
	var matched []string
	clean := 0
	x.Each(func(ino uint32, r *dirty.FileRec) {
		switch r.Verdict {
		case "match":
			matched = append(matched, x.Paths(ino)...)
		case "clean":
			clean++
		}
	})
	if err := x.Err(); err != nil {
		t.Fatal(err)
	}
	var want []string
	for p := range found {
		want = append(want, p)
	}
	sort.Strings(want)
	sort.Strings(matched)
	if len(matched) != len(want) {
		t.Fatalf("verdict match on %v, findings on %v", matched, want)
	}
	for i := range want {
		if matched[i] != want[i] {
			t.Fatalf("verdict match on %v, findings on %v", matched, want)
		}
	}
	if clean == 0 {
		t.Error("no file has the verdict clean")
	}
	t.Logf("%d files matched, %d clean", len(matched), clean)
}
