package fleet

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/dirty/state"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/scan"
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
	dir := filepath.Join(fixture.Root(), "testdata", "out-fleet")
	if _, err := os.Stat(filepath.Join(dir, ".done")); err != nil {
		fixture.Missing(t, "%s (bash testdata/fleet/build.sh)", dir)
	}
	ctx := context.Background()
	rules, err := scan.LoadRules(filepath.Join(dir, "rules.yar"))
	if err != nil {
		t.Fatal(err)
	}
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
