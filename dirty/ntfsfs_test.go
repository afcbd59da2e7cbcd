package dirty

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/ntfs"
	"github.com/vmscope/vmscope/internal/fixture"
)

// TestNTFSIndexOwners: the dirty index of the NTFS fixture owns every
// cluster of every file's non-resident attributes ($DATA streams named
// and unnamed, $I30 allocations and bitmaps) as package ntfs's cluster map
// says (itself checked against ifind and ntfscluster), and its paths are
// the volume's.
func TestNTFSIndexOwners(t *testing.T) {
	p := filepath.Join(fixture.Root(), "testdata", "out-ntfs", "ntfs.img")
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (bash testdata/ntfs/build.sh)", p)
	}
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	st, _ := fh.Stat()
	d, err := fsparse.Open(fh, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	v := d.Volumes[0]
	nf, ok := v.FS.(*ntfs.FS)
	if !ok {
		t.Fatalf("volume is %s", v.Type)
	}
	x, err := BuildIndex(context.Background(), v)
	if err != nil {
		t.Fatal(err)
	}
	m, err := nf.Owners(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, e := range m.Extents() {
		rec := e.Owner.Record
		if rec < 24 && rec != ntfs.RootRecord {
			continue // metadata files are not tracked
		}
		for _, c := range []uint64{e.LCN, e.LCN + e.Len - 1} {
			found := false
			x.owned(c, c+1, func(o owner) { found = found || uint64(o.ino) == rec })
			if !found {
				t.Errorf("cluster %d (%v): not owned by record %d in the dirty index", c, e.Owner, rec)
			}
			checked++
		}
	}
	if checked < 20 {
		t.Fatalf("%d clusters checked", checked)
	}
	for _, name := range []string{"docs/numbers.txt", "manylinks/orig", "big/f1500.txt"} {
		e, err := v.Lstat(name)
		if err != nil {
			t.Fatal(err)
		}
		ps := x.Paths(uint32(e.Ino))
		if len(ps) == 0 || ps[0] != "/"+name && name != "manylinks/orig" {
			t.Errorf("%s: paths %v", name, ps)
		}
		if name == "manylinks/orig" && len(ps) != 151 {
			t.Errorf("%s: %d paths, want 151", name, len(ps))
		}
	}
}
