package qcow

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/disktest"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// reference converts an image with qemu-img convert -O raw (cached).
var (
	refMu    sync.Mutex
	refCache = map[string]string{}
)

func reference(t testing.TB, img string) string {
	t.Helper()
	refMu.Lock()
	defer refMu.Unlock()
	if r, ok := refCache[img]; ok {
		return r
	}
	out := img + ".ref.raw"
	run(t, "qemu-img", "convert", "-O", "raw", img, out)
	refCache[img] = out
	return out
}

// info is what the tests look at in a layer: a qcow2 layer's fields, or
// for a raw layer its name and sizes (the file is the disk).
func info(l disk.Layer) *Layer {
	if q, ok := l.(*Layer); ok {
		return q
	}
	return &Layer{Path: l.Name(), VirtualSize: l.Size(), FileSize: l.Size()}
}

func mustOpen(t testing.TB, path string, opts ...Option) *Image {
	t.Helper()
	im, err := Open(path, opts...)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

func TestConformance(t *testing.T) {
	d := fixtures(t)
	for _, name := range goodImages {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(d, name)
			ref := reference(t, path)
			im := mustOpen(t, path)
			want, err := os.ReadFile(ref)
			if err != nil {
				t.Fatal(err)
			}
			if im.Size() != int64(len(want)) {
				t.Fatalf("Size = %d, qemu-img convert gives %d bytes", im.Size(), len(want))
			}
			// Whole disk in 1 MiB chunks, compared by hash.
			buf := make([]byte, 1<<20)
			for off := int64(0); off < im.Size(); off += int64(len(buf)) {
				n, err := im.ReadAt(buf, off)
				if err != nil && !(errors.Is(err, io.EOF) && off+int64(n) == im.Size()) {
					t.Fatalf("ReadAt(%d): n=%d %v", off, n, err)
				}
				end := min(off+int64(len(buf)), im.Size())
				if sha256.Sum256(buf[:n]) != sha256.Sum256(want[off:end]) {
					t.Fatalf("chunk at %d differs from qemu-img convert", off)
				}
			}
			// Unaligned reads across cluster boundaries and the end.
			rng := rand.New(rand.NewPCG(1, uint64(len(name))))
			for range 200 {
				off := rng.Int64N(im.Size())
				n := rng.IntN(300 << 10)
				p := make([]byte, n)
				got, err := im.ReadAt(p, off)
				wantN := int(min(int64(n), im.Size()-off))
				if got != wantN || (wantN < n) != errors.Is(err, io.EOF) || (err != nil && !errors.Is(err, io.EOF)) {
					t.Fatalf("ReadAt(len %d, %d) = %d, %v; want %d", n, off, got, err, wantN)
				}
				if !bytes.Equal(p[:got], want[off:off+int64(got)]) {
					t.Fatalf("ReadAt(len %d, %d) differs", n, off)
				}
			}
			if n, err := im.ReadAt(make([]byte, 10), im.Size()); n != 0 || err != io.EOF {
				t.Fatalf("ReadAt at Size = %d, %v; want 0, EOF", n, err)
			}
			if _, err := im.ReadAt(make([]byte, 10), -1); err == nil {
				t.Fatal("ReadAt(-1) succeeded")
			}
		})
	}
}

func TestAllocatedMatchesQemuImgMap(t *testing.T) {
	d := fixtures(t)
	for _, name := range goodImages {
		t.Run(name, func(t *testing.T) {
			im := mustOpen(t, filepath.Join(d, name))
			for i, l := range im.Layers() {
				got, err := l.Allocated(context.Background())
				if err != nil {
					t.Fatalf("layer %d %s: Allocated: %v", i, l.Name(), err)
				}
				want := qemuMap(t, l.Name())
				if !rangeset.Equal(got, want) {
					t.Errorf("layer %d %s: Allocated\n got  %v\n want %v (qemu-img map depth 0 present)", i, l.Name(), got, want)
				}
			}
		})
	}
}

func TestChain(t *testing.T) {
	d := fixtures(t)
	im := mustOpen(t, filepath.Join(d, "chain/top/top.qcow2"))
	var ls []*Layer
	for _, l := range im.Layers() {
		ls = append(ls, info(l))
	}
	if len(ls) != 3 {
		t.Fatalf("%d layers, want 3", len(ls))
	}
	wantPaths := []string{"chain/top/top.qcow2", "chain/mid.qcow2", "chain/base/base.qcow2"}
	for i, l := range ls {
		if l.Path != filepath.Join(d, wantPaths[i]) || l.Format() != Qcow2 || l.Version != 3 {
			t.Errorf("layer %d = %s %s v%d", i, l.Path, l.Format(), l.Version)
		}
	}
	if ls[0].BackingRef != filepath.Join(d, "chain/mid.qcow2") || ls[1].BackingRef != "base/base.qcow2" {
		t.Errorf("backing refs %q %q", ls[0].BackingRef, ls[1].BackingRef)
	}
	if ls[1].ClusterSize != 16<<10 || ls[0].VirtualSize != 20<<20 || ls[2].VirtualSize != 16<<20 {
		t.Errorf("cluster size %d, sizes %d %d", ls[1].ClusterSize, ls[0].VirtualSize, ls[2].VirtualSize)
	}
	if _, err := Open(filepath.Join(d, "chain/top/top.qcow2"), WithMaxChainDepth(2)); !errors.Is(err, ErrChain) {
		t.Errorf("depth 2: err = %v, want ErrChain", err)
	}

	ov := mustOpen(t, filepath.Join(d, "ovraw.qcow2"))
	if l := ov.Layers(); len(l) != 2 || l[1].Format() != Raw || info(l[0]).BackingFormat != "raw" {
		t.Errorf("ovraw layers: %+v", l)
	}
}

func TestLayerInfo(t *testing.T) {
	d := fixtures(t)
	cases := []struct {
		name        string
		version     int
		compression string
		format      Format
	}{
		{"raw.img", 0, "", Raw},
		{"v2.qcow2", 2, "zlib", Qcow2},
		{"zlib.qcow2", 3, "zlib", Qcow2},
		{"zstd.qcow2", 3, "zstd", Qcow2},
	}
	for _, c := range cases {
		im := mustOpen(t, filepath.Join(d, c.name))
		l := info(im.Layers()[0])
		if l.Version != c.version || l.Compression != c.compression || im.Layers()[0].Format() != c.format || im.Format() != c.format {
			t.Errorf("%s: version %d compression %q format %s", c.name, l.Version, l.Compression, im.Layers()[0].Format())
		}
		st, _ := os.Stat(filepath.Join(d, c.name))
		if l.FileSize != st.Size() {
			t.Errorf("%s: FileSize %d, want %d", c.name, l.FileSize, st.Size())
		}
	}
	if l := info(mustOpen(t, filepath.Join(d, "dirty.qcow2")).Layers()[0]); !l.Dirty || l.Corrupt {
		t.Errorf("dirty.qcow2: Dirty=%v Corrupt=%v", l.Dirty, l.Corrupt)
	}
	if l := info(mustOpen(t, filepath.Join(d, "extl2.qcow2")).Layers()[0]); !l.ExtendedL2 {
		t.Errorf("extl2.qcow2: ExtendedL2 false")
	}
	bm := info(mustOpen(t, filepath.Join(d, "bitmaps.qcow2")).Layers()[0]).Bitmaps
	if len(bm) != 2 || bm[0].Name != "b0" || bm[0].Granularity != 64<<10 || !bm[0].Enabled || bm[0].InUse ||
		bm[1].Name != "cold" || bm[1].Granularity != 1<<20 || bm[1].Enabled || bm[1].Type != 1 {
		t.Errorf("bitmaps = %+v", bm)
	}
}

func TestErrors(t *testing.T) {
	d := fixtures(t)
	cases := []struct {
		name string
		want error
	}{
		{"loop-a.qcow2", ErrChain},
		{"loop-self.qcow2", ErrChain},
		{"on-garbage.qcow2", ErrCorrupt},
		{"on-garbage-magic.qcow2", ErrCorrupt},
		{"on-missing.qcow2", ErrChain},
		{"trunc-header.qcow2", ErrCorrupt},
		{"trunc-l1.qcow2", ErrCorrupt},
		{"l1huge.qcow2", ErrCorrupt},
		{"v1.qcow", ErrUnsupported},
		{"disk.vmdk", ErrUnsupported},
		{"disk.vhdx", ErrUnsupported},
		{"disk.vdi", ErrUnsupported},
		{"disk.vhd", ErrUnsupported},
		{"fixed.vhd", ErrUnsupported},
		{"luks.qcow2", ErrUnsupported},
	}
	for _, c := range cases {
		im, err := Open(filepath.Join(d, c.name))
		if err == nil {
			im.Close()
			t.Errorf("%s: Open succeeded, want %v", c.name, c.want)
			continue
		}
		var e *Error
		if !errors.Is(err, c.want) || !errors.As(err, &e) || e.Path == "" {
			t.Errorf("%s: err = %v, want %v with a path", c.name, err, c.want)
		}
	}
	if _, err := Open(filepath.Join(d, "on-missing.qcow2")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing backing: %v is not fs.ErrNotExist", err)
	}
	if _, err := Open(filepath.Join(d, "nothing-here")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}

	// A half-truncated qcow2: Open may succeed (header and L1 are whole), but
	// reading the lost clusters or walking the tables must fail with
	// ErrCorrupt, never panic or return made-up data.
	im, err := Open(filepath.Join(d, "trunc-half.qcow2"))
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("trunc-half: %v", err)
		}
		return
	}
	defer im.Close()
	_, aerr := im.Layers()[0].Allocated(context.Background())
	var rerr error
	buf := make([]byte, 1<<20)
	for off := int64(0); off < im.Size() && rerr == nil; off += int64(len(buf)) {
		_, rerr = im.ReadAt(buf, off)
		if errors.Is(rerr, io.EOF) {
			rerr = nil
		}
	}
	if !errors.Is(rerr, ErrCorrupt) {
		t.Errorf("trunc-half: read err = %v, want ErrCorrupt", rerr)
	}
	if aerr != nil && !errors.Is(aerr, ErrCorrupt) {
		t.Errorf("trunc-half: Allocated err = %v", aerr)
	}
}

func TestDetect(t *testing.T) {
	d := fixtures(t)
	for name, want := range map[string]Format{"raw.img": Raw, "v3.qcow2": Qcow2, "v2.qcow2": Qcow2, "garbage.bin": Raw} {
		f, err := os.Open(filepath.Join(d, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := Detect(f)
		f.Close()
		if err != nil || got != want {
			t.Errorf("Detect(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	if f, err := Detect(bytes.NewReader(nil)); f != Raw || err != nil {
		t.Errorf("Detect(empty) = %q, %v", f, err)
	}
}

// TestConcurrentReads reads a chain and a compressed image from many
// goroutines at once (run with -race): large reads, and small reads served
// by the cluster cache, enough of them that clusters are evicted and their
// buffers reused.
func TestConcurrentReads(t *testing.T) {
	d := fixtures(t)
	for _, name := range []string{"chain/top/top.qcow2", "zstd.qcow2", "zlib.qcow2", "extl2.qcow2"} {
		path := filepath.Join(d, name)
		want, err := os.ReadFile(reference(t, path))
		if err != nil {
			t.Fatal(err)
		}
		im := mustOpen(t, path)
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for g := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(g), 7))
				p := make([]byte, 256<<10)
				for i := range 240 {
					q := p
					if i >= 40 {
						q = p[:1+rng.IntN(8192)]
					}
					off := rng.Int64N(im.Size())
					n, err := im.ReadAt(q, off)
					if err != nil && !errors.Is(err, io.EOF) {
						errs <- err
						return
					}
					if !bytes.Equal(q[:n], want[off:off+int64(n)]) {
						errs <- errors.New(name + ": concurrent read differs")
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
}

// TestReadOnly proves that opening, reading and walking every fixture
// leaves every file's bytes and mtime unchanged.
func TestReadOnly(t *testing.T) {
	d := fixtures(t)
	type state struct {
		sum   [32]byte
		mtime time.Time
	}
	snap := func() map[string]state {
		m := map[string]state{}
		filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || filepath.Ext(p) == ".raw" {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := os.Stat(p)
			m[p] = state{sha256.Sum256(b), st.ModTime()}
			return nil
		})
		return m
	}
	before := snap()
	buf := make([]byte, 1<<20)
	for p := range before {
		im, err := Open(p)
		if err != nil {
			continue
		}
		for off := int64(0); off < im.Size(); off += int64(len(buf)) {
			if _, err := im.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
				break
			}
		}
		for _, l := range im.Layers() {
			l.Allocated(context.Background())
		}
		im.Close()
	}
	after := snap()
	for p, s := range before {
		if after[p] != s {
			t.Errorf("%s changed", p)
		}
	}
}

func TestClose(t *testing.T) {
	d := fixtures(t)
	im, err := Open(filepath.Join(d, "chain/top/top.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := im.ReadAt(make([]byte, 10), 0); err == nil {
		t.Error("read after Close succeeded")
	}
}

// TestDataRanges: the disk reads as zeros outside DataRanges, which holds
// every range qemu-img map says has data (at any depth of the chain); for
// a raw file both come from SEEK_DATA, and they are equal.
func TestDataRanges(t *testing.T) {
	d := fixtures(t)
	for _, name := range goodImages {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(d, name)
			im := mustOpen(t, path)
			got, err := im.DataRanges(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			out := run(t, "qemu-img", "map", "--output=json", path)
			var ents []struct {
				Start  int64 `json:"start"`
				Length int64 `json:"length"`
				Data   bool  `json:"data"`
			}
			if err := json.Unmarshal([]byte(out), &ents); err != nil {
				t.Fatal(err)
			}
			var data rangeset.Set
			for _, e := range ents {
				if e.Data {
					data.Add(e.Start, e.Start+e.Length)
				}
			}
			if miss := rangeset.Subtract(data, got); !miss.Empty() {
				t.Errorf("qemu-img map has data outside DataRanges: %v", miss)
			}
			if im.Layers()[0].Format() == Raw && !rangeset.Equal(got, data) {
				t.Errorf("raw: DataRanges %v, qemu-img map data %v", got, data)
			}
			var all rangeset.Set
			all.Add(0, im.Size())
			buf := make([]byte, 1<<20)
			for _, r := range rangeset.Subtract(all, got).Ranges() {
				for off := r.Start; off < r.End; off += int64(len(buf)) {
					p := buf[:min(int64(len(buf)), r.End-off)]
					if _, err := im.ReadAt(p, off); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(p, make([]byte, len(p))) {
						t.Fatalf("non-zero bytes at %d, outside DataRanges", off)
					}
				}
			}
		})
	}
}

// TestLayerConformance runs the disk layer conformance kit on every good
// fixture: each layer's guest view against qemu-img convert, its
// allocation against qemu-img map, from several goroutines.
func TestLayerConformance(t *testing.T) {
	d := fixtures(t)
	for _, name := range goodImages {
		t.Run(name, func(t *testing.T) {
			disktest.Check(t, mustOpen(t, filepath.Join(d, name)))
		})
	}
}
