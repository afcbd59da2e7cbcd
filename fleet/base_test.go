package fleet

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
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
