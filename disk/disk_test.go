package disk_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/disktest"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/qcow"
)

// The repository's disk fixtures (testdata/fixtures.sh): raw, zlib and
// zstd compressed qcow2, a three-layer chain, overlays on raw and on
// qcow2. (qcow's own tests run the kit on its small v2, v3, extended L2,
// bitmap and grown-overlay fixtures too.)
var images = []string{
	"ext4-frag.img", "gpt-zlib.qcow2", "gpt-zstd.qcow2",
	"chain-top.qcow2", "overlay-raw.qcow2", "scan-overlay.qcow2",
}

func TestConformance(t *testing.T) {
	for _, name := range images {
		t.Run(name, func(t *testing.T) {
			im, err := disk.Open(fixture.Path(t, name))
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			disktest.Check(t, im)
		})
	}
}

// sectionOpener opens backing files as plain io.ReaderAt (not *os.File),
// resolving names as disk.Open does: New must not depend on files.
func sectionOpener(t *testing.T) disk.Opener {
	return func(from, ref string) (disk.Source, error) {
		p, err := disk.ResolveBacking(from, ref)
		if err != nil {
			return disk.Source{}, err
		}
		f, err := os.Open(p)
		if err != nil {
			return disk.Source{}, err
		}
		t.Cleanup(func() { f.Close() })
		st, err := f.Stat()
		if err != nil {
			return disk.Source{}, err
		}
		return disk.Source{R: io.NewSectionReader(f, 0, st.Size()), Size: st.Size(), Name: p}, nil
	}
}

// TestNew opens the chain and the overlay on raw with New, from readers
// that are not files, and checks them with the kit.
func TestNew(t *testing.T) {
	for _, name := range []string{"chain-top.qcow2", "overlay-raw.qcow2", "gpt-zstd.qcow2"} {
		t.Run(name, func(t *testing.T) {
			path := fixture.Path(t, name)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			im, err := disk.New(bytes.NewReader(b), int64(len(b)), sectionOpener(t), disk.WithName(path))
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			want, err := disk.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer want.Close()
			if len(im.Layers()) != len(want.Layers()) {
				t.Fatalf("New: %s; Open: %s", im, want)
			}
			disktest.Check(t, im)
		})
	}
}

// TestNewChainErrors: without an opener a backing file is a chain error
// naming the overlay; a chain that names itself is a loop; the depth cap
// holds.
func TestNewChainErrors(t *testing.T) {
	path := fixture.Path(t, "chain-top.qcow2")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var e *disk.Error
	if _, err := disk.New(bytes.NewReader(b), int64(len(b)), nil, disk.WithName(path)); !errors.Is(err, disk.ErrChain) || !errors.As(err, &e) || e.Path != path {
		t.Errorf("no opener: %v, want ErrChain naming %s", err, path)
	}
	self := func(from, ref string) (disk.Source, error) {
		return disk.Source{R: bytes.NewReader(b), Size: int64(len(b)), Name: path}, nil
	}
	if _, err := disk.New(bytes.NewReader(b), int64(len(b)), self, disk.WithName(path)); !errors.Is(err, disk.ErrChain) {
		t.Errorf("loop: %v, want ErrChain", err)
	}
	if _, err := disk.Open(path, disk.WithMaxChainDepth(2)); !errors.Is(err, disk.ErrChain) {
		t.Errorf("depth 2: %v, want ErrChain", err)
	}
	if im, err := disk.Open(path, disk.WithMaxChainDepth(3)); err != nil {
		t.Errorf("depth 3: %v", err)
	} else {
		im.Close()
	}
}

// TestDetect: registered formats by content, well-known others refused,
// the rest raw; a backing file recorded as qcow2 without its header is
// corrupt, never read as raw.
func TestDetect(t *testing.T) {
	if got := disk.Formats(); len(got) < 2 || got[len(got)-1] != disk.RawFormat || got[0] != qcow.Qcow2 {
		t.Errorf("Formats = %v", got)
	}
	cases := []struct {
		head string
		want string
		err  error
	}{
		{"QFI\xfb\x00\x00\x00\x03", "qcow2", nil},
		{"KDMV", "", disk.ErrUnsupported},
		{"vhdxfile", "", disk.ErrUnsupported},
		{"conectix", "", disk.ErrUnsupported},
		{"LUKS\xba\xbe", disk.RawFormat, nil}, // the volume itself: fsparse reports it
		{"hello", disk.RawFormat, nil},
		{"", disk.RawFormat, nil},
	}
	for _, c := range cases {
		b := make([]byte, 4096)
		copy(b, c.head)
		got, err := disk.Detect(bytes.NewReader(b), int64(len(b)))
		if got != c.want || !errors.Is(err, c.err) {
			t.Errorf("Detect(%q) = %q, %v; want %q, %v", c.head, got, err, c.want, c.err)
		}
	}
	// A fixed VHD: the footer only.
	b := make([]byte, 4096)
	copy(b[len(b)-512:], "conectix")
	if _, err := disk.Detect(bytes.NewReader(b), int64(len(b))); !errors.Is(err, disk.ErrUnsupported) {
		t.Errorf("fixed vhd footer: %v", err)
	}
	// An overlay on raw records "raw": the base is read raw whatever it
	// holds; a base recorded as qcow2 must have a qcow2 header.
	raw := filepath.Join(t.TempDir(), "base")
	if err := os.WriteFile(raw, b, 0o644); err != nil {
		t.Fatal(err)
	}
	ov, err := os.ReadFile(fixture.Path(t, "chain-top.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	op := func(from, ref string) (disk.Source, error) {
		return disk.Source{R: bytes.NewReader(b), Size: int64(len(b)), Name: raw}, nil
	}
	if _, err := disk.New(bytes.NewReader(ov), int64(len(ov)), op, disk.WithName("top")); !errors.Is(err, disk.ErrCorrupt) {
		t.Errorf("qcow2-recorded base without a header: %v, want ErrCorrupt", err)
	}
}

// FuzzNew hands New arbitrary bytes (seeded with the qcow2 fuzz seeds and
// foreign magics) without an opener: it must fail with a categorized
// *Error, or give an image whose reads stay in bounds and fail only with a
// category; a raw image reads back the bytes it was given.
func FuzzNew(f *testing.F) {
	for _, s := range []string{"small.qcow2", "small-zstd.qcow2", "small-v2-zlib.qcow2"} {
		b, err := os.ReadFile(filepath.Join("..", "qcow", "testdata", "fuzz", s))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("KDMV"))
	f.Add([]byte("hello, raw"))
	f.Fuzz(func(t *testing.T, b []byte) {
		im, err := disk.New(bytes.NewReader(b), int64(len(b)), nil, disk.WithName("fuzz"))
		categorized := func(err error) bool {
			return errors.Is(err, disk.ErrCorrupt) || errors.Is(err, disk.ErrUnsupported) || errors.Is(err, disk.ErrChain)
		}
		if err != nil {
			var e *disk.Error
			if !categorized(err) || !errors.As(err, &e) {
				t.Fatalf("New: %v is not a categorized *Error", err)
			}
			return
		}
		defer im.Close()
		buf := make([]byte, 64<<10)
		var got []byte
		for off := int64(0); off < min(im.Size(), 1<<20); off += int64(len(buf)) {
			n, err := im.ReadAt(buf, off)
			if n < 0 || n > len(buf) || (err != nil && !errors.Is(err, io.EOF) && !categorized(err)) {
				t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
			}
			got = append(got, buf[:n]...)
		}
		if im.Format() == disk.RawFormat && !bytes.Equal(got, b[:min(len(b), 1<<20)]) {
			t.Fatal("a raw image does not read back its bytes")
		}
	})
}

// TestReadAtDirect: ReadAtDirect reads the same bytes and the same end of
// the disk (io.EOF past Size) as ReadAt, on a raw image (where it skips
// the cache) and on qcow2 images (where it is ReadAt), at offsets that
// cross cache units; on a closed image it fails as ReadAt does.
func TestReadAtDirect(t *testing.T) {
	for _, name := range images {
		t.Run(name, func(t *testing.T) {
			im, err := disk.Open(fixture.Path(t, name))
			if err != nil {
				t.Fatal(err)
			}
			size := im.Size()
			for _, c := range []struct{ off, n int64 }{{0, 512}, {65536 - 100, 300}, {1 << 20, 4096}, {size - 4096, 4096}, {size - 100, 4096}, {size, 10}} {
				a, b := make([]byte, c.n), make([]byte, c.n)
				na, ea := im.ReadAt(a, c.off)
				nb, eb := im.ReadAtDirect(b, c.off)
				if na != nb || !bytes.Equal(a, b) || !errors.Is(eb, ea) && (ea == nil || eb == nil || ea.Error() != eb.Error()) {
					t.Fatalf("at %d+%d: ReadAt %d, %v; ReadAtDirect %d, %v", c.off, c.n, na, ea, nb, eb)
				}
			}
			im.Close()
			if _, err := im.ReadAtDirect(make([]byte, 10), 0); !errors.Is(err, os.ErrClosed) {
				t.Fatalf("closed: %v", err)
			}
		})
	}
}
