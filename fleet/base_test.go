package fleet

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/dirty/state"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/scan"
	"github.com/vmscope/vmscope/scan/imagescan"
)

// TestLayerIDIsContent: a copy of a base at another path has its id;
// another base, or the base with one byte of a superblock changed, has
// another.
func TestLayerIDIsContent(t *testing.T) {
	dir := filepath.Join(fixture.Root(), "testdata", "out-fleet")
	if _, err := os.Stat(filepath.Join(dir, ".done")); err != nil {
		fixture.Missing(t, "%s (bash testdata/fleet/build.sh)", dir)
	}
	tmp := t.TempDir()
	cp := func(src, dst string) {
		in, err := os.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		out, _ := os.Create(dst)
		io.Copy(out, in)
		out.Close()
	}
	cp(filepath.Join(dir, "base-a.img"), filepath.Join(tmp, "copy.img"))
	cp(filepath.Join(dir, "base-a.img"), filepath.Join(tmp, "touched.img"))
	f, _ := os.OpenFile(filepath.Join(tmp, "touched.img"), os.O_RDWR, 0)
	f.WriteAt([]byte{0x5a}, 1024+0x30) // s_wtime of the superblock
	f.Close()
	id := func(p string) string {
		im, d, err := openImage(p)
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		s, err := LayerID(context.Background(), im.Layers()[0], d)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, c := id(filepath.Join(dir, "base-a.img")), id(filepath.Join(tmp, "copy.img"))
	if a != c {
		t.Errorf("a copy of base-a has another id: %s, %s", a, c)
	}
	if b := id(filepath.Join(dir, "base-b.qcow2")); b == a {
		t.Errorf("base-b has base-a's id")
	}
	if w := id(filepath.Join(tmp, "touched.img")); w == a {
		t.Errorf("a base written since has the same id")
	}
}

// TestOverlayDigestsFromBase: an overlay's first poll over a shared base
// takes the base's digests for the files it did not write; every digest of
// its committed state equals the one a plain first poll (which reads every
// file) records, and that poll was base-shared.
func TestOverlayDigestsFromBase(t *testing.T) {
	dir, rules := fleetFixture(t)
	ctx := context.Background()
	inv, err := ParseInventory(strings.NewReader(`{"id":"ov-a-01","path":"ov-a-01.qcow2"}`+"\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	var got []Outcome
	o := Options{Shard: Shard{0, 1}, StateDir: filepath.Join(tmp, "state"), OutDir: filepath.Join(tmp, "out"), RunID: "r", Rules: rules, Done: func(oc Outcome) { got = append(got, oc) }}
	if _, err := Scan(ctx, inv, o); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Err != nil {
		t.Fatalf("outcomes %+v", got)
	}
	res, err := os.ReadFile(resultPath(filepath.Join(tmp, "out", "r"), "ov-a-01"))
	if err != nil || !strings.Contains(string(res), `"dirty_source":"base-shared"`) {
		t.Fatalf("not a base-shared poll (%v): %s", err, res)
	}
	layers, _ := filepath.Glob(filepath.Join(tmp, "state", "layers", "*.json"))
	if len(layers) != 1 {
		t.Fatalf("base results %v", layers)
	}
	br, err := readBase(layers[0])
	if err != nil || len(br.Files) == 0 {
		t.Fatalf("base result without file digests (%v)", err)
	}
	img, d, err := openImage(filepath.Join(dir, "ov-a-01.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	db, err := state.Open(filepath.Join(tmp, "state", "ov-a-01.state"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	snap, err := db.Load(dirty.Identity(img, d))
	if err != nil || snap == nil {
		t.Fatalf("state: %v", err)
	}
	ref := &memStore{}
	sel, err := dirty.Select(ctx, img, d, fullSource{}, ref, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sel.Close()
	if err := sel.CommitContext(ctx); err != nil {
		t.Fatal(err)
	}
	n := 0
	for vol, x := range ref.snap.Indexes {
		sx := snap.Indexes[vol]
		if sx == nil {
			t.Fatalf("%s: no index in the state", vol)
		}
		have := map[uint32]string{}
		sx.Each(func(ino uint32, r *dirty.FileRec) { have[ino] = r.SHA256 })
		x.Each(func(ino uint32, r *dirty.FileRec) {
			if !r.IsRegular() || r.SHA256 == "" {
				return
			}
			n++
			if have[ino] != r.SHA256 {
				t.Errorf("%s inode %d %v: state digest %q, file's %q", vol, ino, x.Paths(ino), have[ino], r.SHA256)
			}
		})
	}
	if n == 0 {
		t.Fatal("no regular file compared")
	}
}

// TestOverlayFirstPollReadsItsChanges: an overlay's base-shared first poll
// scans only the files its layer changed (the files `--dirty base:` finds
// due, counted and summed in its image line), and the state it commits
// equals, record by record (type, size, block map, paths, digest, verdict),
// the state a whole first poll commits after reading and scanning every
// file. Two overlays of base-a (one with findings of its own, one removing
// the base's marker) share one base scan.
func TestOverlayFirstPollReadsItsChanges(t *testing.T) {
	dir, rules := fleetFixture(t)
	ctx := context.Background()
	ids := []string{"ov-a-02", "ov-a-03"}
	var lines string
	for _, id := range ids {
		lines += `{"id":"` + id + `","path":"` + id + `.qcow2"}` + "\n"
	}
	inv, err := ParseInventory(strings.NewReader(lines), dir)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	o := Options{Shard: Shard{0, 1}, StateDir: filepath.Join(tmp, "state"), OutDir: filepath.Join(tmp, "out"), RunID: "r", Rules: rules}
	if _, err := Scan(ctx, inv, o); err != nil {
		t.Fatal(err)
	}
	if layers, _ := filepath.Glob(filepath.Join(tmp, "state", "layers", "*.json")); len(layers) != 1 {
		t.Fatalf("base results %v, want one", layers)
	}
	bim, bd, err := openImage(filepath.Join(dir, "base-a.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer bim.Close()
	for _, id := range ids {
		il, err := lastImageLine(resultPath(filepath.Join(tmp, "out", "r"), id))
		if err != nil || il.DirtySource != "base-shared" || !il.Committed {
			t.Fatalf("%s: not a committed base-shared poll (%v): %+v", id, err, il)
		}
		img, d, err := openImage(filepath.Join(dir, id+".qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		cmp, err := dirty.Compare(ctx, bim, bd, img, d)
		if err != nil {
			t.Fatal(err)
		}
		var size int64
		for _, c := range cmp.Due() {
			size += c.Size
		}
		if n := int64(len(cmp.Due())); n == 0 || il.Files != n || il.BytesRead != size {
			t.Errorf("%s: scanned %d files, %d bytes; the overlay changed %d files, %d bytes", id, il.Files, il.BytesRead, n, size)
		}
		cmp.Close()
		// The reference: a whole first poll, every file read and scanned.
		ref := &memStore{}
		sel, err := dirty.Select(ctx, img, d, dirty.Auto(img), ref, rules.Digest())
		if err != nil {
			t.Fatal(err)
		}
		res, err := imagescan.Scan(ctx, d, rules, sel)
		if err != nil || len(res.Errors) > 0 {
			t.Fatalf("%s: whole scan: %v %v", id, err, res.Errors)
		}
		if err := imagescan.Commit(ctx, d, sel, res); err != nil {
			t.Fatal(err)
		}
		sel.Close()
		if il.Findings != len(res.Findings) {
			t.Errorf("%s: %d findings, a whole scan has %d", id, il.Findings, len(res.Findings))
		}
		db, err := state.Open(filepath.Join(tmp, "state", id+".state"))
		if err != nil {
			t.Fatal(err)
		}
		snap, err := db.Load(dirty.Identity(img, d))
		if err != nil || snap == nil {
			t.Fatalf("%s: state: %v", id, err)
		}
		if snap.Source != ref.snap.Source || len(snap.Unscanned) != 0 {
			t.Errorf("%s: state cursor %q, unscanned %v; a whole poll's: %q", id, snap.Source, snap.Unscanned, ref.snap.Source)
		}
		n, verdicts := 0, map[string]int{}
		for vol, x := range ref.snap.Indexes {
			sx := snap.Indexes[vol]
			if sx == nil {
				t.Fatalf("%s %s: no index in the state", id, vol)
			}
			have := map[uint32]*dirty.FileRec{}
			sx.Each(func(ino uint32, r *dirty.FileRec) { have[ino] = r })
			x.Each(func(ino uint32, r *dirty.FileRec) {
				n++
				h := have[ino]
				delete(have, ino)
				if h == nil {
					t.Errorf("%s %s inode %d %v: not in the state", id, vol, ino, x.Paths(ino))
					return
				}
				if h.Mode != r.Mode || h.Size != r.Size || h.Extents != r.Extents || h.SHA256 != r.SHA256 || h.Verdict != r.Verdict ||
					!slices.Equal(sx.Paths(ino), x.Paths(ino)) {
					t.Errorf("%s %s inode %d %v: state %v %d %x %q %q %v, whole poll %v %d %x %q %q", id, vol, ino, x.Paths(ino),
						h.Mode, h.Size, h.Extents, h.SHA256, h.Verdict, sx.Paths(ino), r.Mode, r.Size, r.Extents, r.SHA256, r.Verdict)
				}
				if r.IsRegular() {
					verdicts[r.Verdict]++
				}
			})
			for ino := range have {
				t.Errorf("%s %s inode %d %v: in the state, not in the image", id, vol, ino, sx.Paths(ino))
			}
		}
		db.Close()
		if n == 0 || verdicts["clean"] == 0 {
			t.Fatalf("%s: %d records compared, verdicts %v", id, n, verdicts)
		}
		t.Logf("%s: %d records equal, verdicts %v, %d of them scanned", id, n, verdicts, il.Files)
	}
}

// fleetFixture returns the folder of the fixture fleet and its rules.
func fleetFixture(t *testing.T) (string, *scan.Rules) {
	t.Helper()
	dir := filepath.Join(fixture.Root(), "testdata", "out-fleet")
	if _, err := os.Stat(filepath.Join(dir, ".done")); err != nil {
		fixture.Missing(t, "%s (bash testdata/fleet/build.sh)", dir)
	}
	rules, err := scan.LoadRules(filepath.Join(dir, "rules.yar"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, rules
}
