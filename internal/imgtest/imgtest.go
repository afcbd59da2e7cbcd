// Package imgtest holds what the tests of the image formats under disk
// share: the fixtures of testdata/formats/build.sh and the invariants a
// fuzz target asserts on any input.
package imgtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/disktest"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// Dir is the folder testdata/formats/build.sh builds into:
// $VMSCOPE_FORMATS, else testdata/out-formats.
func Dir() string {
	if d := os.Getenv("VMSCOPE_FORMATS"); d != "" {
		return d
	}
	return filepath.Join(fixture.Root(), "testdata", "out-formats")
}

// Path returns fixture name of testdata/formats/build.sh, or skips the
// test (fails it under CI) when it has not been built.
func Path(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(Dir(), name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (bash testdata/formats/build.sh)", p)
	}
	return p
}

// Categorized reports whether err wraps one of disk's sentinels.
func Categorized(err error) bool {
	return errors.Is(err, disk.ErrCorrupt) || errors.Is(err, disk.ErrUnsupported) || errors.Is(err, disk.ErrChain)
}

// CheckError fails t unless err is a categorized *disk.Error that names a
// structure.
func CheckError(t testing.TB, what string, err error) {
	t.Helper()
	var e *disk.Error
	if !errors.As(err, &e) || !Categorized(err) || e.What == "" {
		t.Fatalf("%s: error is not a categorized *disk.Error naming a structure: %T %v", what, err, err)
	}
}

// CheckOpen opens the image at path (disk.Open) and checks it as
// CheckImage does.
func CheckOpen(t testing.TB, path string) {
	t.Helper()
	CheckImage(t, func() (*disk.Image, error) { return disk.Open(path, disk.WithMaxChainDepth(4)) })
}

// Mem is a set of files in memory, by absolute name, for fuzzing without
// temporary files.
type Mem map[string][]byte

// Open opens the image top of m with disk.New, its other files through
// an Opener over m (names resolved as disk.Open resolves them; a missing
// file is fs.ErrNotExist).
func (m Mem) Open(top string) (*disk.Image, error) {
	opener := func(from, ref string) (disk.Source, error) {
		p, err := disk.ResolveBacking(from, ref)
		if err != nil {
			return disk.Source{}, err
		}
		b, ok := m[p]
		if !ok {
			return disk.Source{}, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
		}
		return disk.Source{R: bytes.NewReader(b), Size: int64(len(b)), Name: p}, nil
	}
	b := m[top]
	return disk.New(bytes.NewReader(b), int64(len(b)), opener, disk.WithName(top), disk.WithMaxChainDepth(4))
}

// CheckImage opens an image with open and exercises every entry point: an
// error must be a categorized *disk.Error that names a structure; an
// opened image must keep its reads and allocation in bounds, and its
// errors categorized and named. It must never panic or hang, whatever the
// files hold.
func CheckImage(t testing.TB, open func() (*disk.Image, error)) {
	t.Helper()
	im, err := open()
	if err != nil {
		CheckError(t, "Open", err)
		return
	}
	defer im.Close()
	size := im.Size()
	if size < 0 {
		t.Fatalf("Size = %d", size)
	}
	buf := make([]byte, 64<<10)
	for off := int64(0); off < min(size, 1<<20); off += int64(len(buf)) {
		n, err := im.ReadAt(buf, off)
		if n < 0 || n > len(buf) {
			t.Fatalf("ReadAt n = %d", n)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			CheckError(t, "ReadAt", err)
		}
	}
	for _, off := range []int64{size - 1, size / 2, size - 70000} {
		if off >= 0 {
			if _, err := im.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
				CheckError(t, "ReadAt", err)
			}
		}
	}
	for _, l := range im.Layers() {
		s, err := l.Allocated(context.Background())
		if err != nil {
			CheckError(t, "Allocated", err)
			continue
		}
		if r := s.Ranges(); len(r) > 0 && (r[0].Start < 0 || r[len(r)-1].End > l.Size()) {
			t.Fatalf("Allocated %v outside [0,%d)", s, l.Size())
		}
	}
	if _, err := im.DataRanges(context.Background()); err != nil {
		CheckError(t, "DataRanges", err)
	}
}

// Seed returns the bytes of fuzz seed name (testdata/formats/build.sh
// fuzz/), or skips (fails under CI).
func Seed(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(Path(t, filepath.Join("fuzz", name)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// WriteTemp writes b into a file name in a new temporary folder.
func WriteTemp(t testing.TB, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// CheckLarge is the conformance check of a large, mostly empty image (the
// 2 GiB-split VMDKs), within a test's time budget: its one layer's
// Allocated equals `qemu-img map` (disktest.QemuMap); its bytes equal
// `qemu-img convert -O raw` (disktest.Reference, a sparse file) over every
// data range of the reference (SEEK_DATA), read in 1 MiB pieces that are
// not aligned to the extents, and are zeros everywhere else; a read at
// Size gives io.EOF.
func CheckLarge(t *testing.T, im *disk.Image) {
	t.Helper()
	if len(im.Layers()) != 1 {
		t.Fatalf("CheckLarge: %d layers", len(im.Layers()))
	}
	l := im.Top()
	got, err := l.Allocated(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := disktest.QemuMap(t, l.Name(), l.Format()); !rangeset.Equal(got, want) {
		t.Errorf("Allocated\n got  %v\n want %v (qemu-img map)", got, want)
	}
	refPath := disktest.Reference(t, l)
	ref, err := os.Open(refPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	raw := disk.NewRaw(disk.Source{R: ref, Size: l.Size(), Name: refPath})
	if st, err := ref.Stat(); err != nil || st.Size() != l.Size() {
		t.Fatalf("Size %d, qemu-img convert gives %v (%v)", l.Size(), st.Size(), err)
	}
	data, err := raw.DataRanges(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	const piece = 1<<20 + 4097
	a, b := make([]byte, piece), make([]byte, piece)
	for _, r := range data.Ranges() {
		for off := r.Start; off < r.End; off += piece {
			n := min(piece, r.End-off)
			if k, err := im.ReadAt(a[:n], off); k != int(n) || (err != nil && !errors.Is(err, io.EOF)) {
				t.Fatalf("ReadAt(%d, %d) = %d, %v", n, off, k, err)
			}
			if _, err := ref.ReadAt(b[:n], off); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if !bytes.Equal(a[:n], b[:n]) {
				t.Fatalf("bytes at %d differ from qemu-img convert", off)
			}
		}
	}
	zero := make([]byte, piece)
	holes := rangeset.Subtract(rangeset.Of(rangeset.Range{Start: 0, End: l.Size()}), data)
	for _, r := range holes.Ranges() {
		for off := r.Start; off < r.End; off += piece {
			n := min(piece, r.End-off)
			if k, err := l.ReadAt(a[:n], off); k != int(n) || (err != nil && !errors.Is(err, io.EOF)) {
				t.Fatalf("ReadAt(%d, %d) = %d, %v", n, off, k, err)
			}
			if !bytes.Equal(a[:n], zero[:n]) {
				t.Fatalf("bytes at %d are not zero as in qemu-img convert", off)
			}
		}
	}
	if n, err := im.ReadAt(a[:10], l.Size()); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt at Size = %d, %v", n, err)
	}
}

// SleuthKit checks im's guest bytes against a second reader: The Sleuth
// Kit's img_cat -i typ (libvmdk, libvhdi), when this build of it lists
// typ in `mmls -i list`; else the test is skipped (failed under CI).
func SleuthKit(t *testing.T, im *disk.Image, typ string) {
	t.Helper()
	mmls := fixture.Tool(t, "mmls")
	imgCat := fixture.Tool(t, "img_cat")
	list, _ := exec.Command(mmls, "-i", "list").CombinedOutput()
	if !bytes.Contains(list, []byte("\t"+typ+" ")) {
		fixture.Missing(t, "this Sleuth Kit has no %s image type", typ)
	}
	cmd := exec.Command(imgCat, "-i", typ, im.Top().Name())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ref := sha256.New()
	n, err := io.Copy(ref, out)
	if werr := cmd.Wait(); err != nil || werr != nil {
		t.Fatalf("img_cat -i %s: %v %v", typ, err, werr)
	}
	got := sha256.New()
	if _, err := io.Copy(got, io.NewSectionReader(im, 0, im.Size())); err != nil {
		t.Fatal(err)
	}
	if n != im.Size() || !bytes.Equal(got.Sum(nil), ref.Sum(nil)) {
		t.Fatalf("%s: %d bytes differ from img_cat -i %s's %d", im.Top().Name(), im.Size(), typ, n)
	}
}
