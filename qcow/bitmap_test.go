package qcow

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
)

func runTool(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(fixture.Tool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// roundTo is the reference: the writes rounded out to the granularity and
// clipped to the disk.
func roundTo(writes []rangeset.Range, gran, size int64) rangeset.Set {
	var s rangeset.Set
	for _, w := range writes {
		s.Add(w.Start/gran*gran, min((w.End+gran-1)/gran*gran, size))
	}
	return s
}

// TestBitmapDirtyVsQemuIO makes bitmaps of several granularities with
// qemu-img, writes with qemu-io (which loads the auto bitmaps and records
// the writes, and stores them on close) and checks the dirty ranges equal
// the writes rounded to each granularity.
func TestBitmapDirtyVsQemuIO(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "bm.qcow2")
	const size = 200<<20 + 12345 // not a multiple of any granularity
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, fmt.Sprint(size))
	grans := []int64{512, 4096, 65536, 1 << 20, 1 << 24}
	for _, g := range grans {
		runTool(t, "qemu-img", "bitmap", "--add", "--enable", "-g", fmt.Sprint(g), img, fmt.Sprintf("g%d", g))
	}
	runTool(t, "qemu-img", "bitmap", "--add", "--disable", img, "off")
	writes := []rangeset.Range{
		{Start: 0, End: 512},
		{Start: 100 << 10, End: 100<<10 + 4096},
		{Start: 10 << 20, End: 13 << 20},
		{Start: 64<<20 + 1000, End: 64<<20 + 1001},
		{Start: size - 345, End: size}, // the last, partial granule
	}
	args := []string{"-f", "qcow2"}
	for _, w := range writes {
		args = append(args, "-c", fmt.Sprintf("write -P 0xab %d %d", w.Start, w.Len()))
	}
	// A large dirty area covers whole bitmap data clusters with one bits.
	args = append(args, "-c", fmt.Sprintf("write -z %d %d", 128<<20, 64<<20))
	writes = append(writes, rangeset.Range{Start: 128 << 20, End: 192 << 20})
	runTool(t, "qemu-io", append(args, img)...)

	im, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	l := info(im.Layers()[0])
	if len(l.Bitmaps) != len(grans)+1 {
		t.Fatalf("%d bitmaps", len(l.Bitmaps))
	}
	for _, g := range grans {
		got, err := l.BitmapDirty(context.Background(), fmt.Sprintf("g%d", g))
		if err != nil {
			t.Fatal(err)
		}
		want := roundTo(writes, g, im.Size()) // qemu-img rounds the size up to 512
		if !rangeset.Equal(got, want) {
			t.Errorf("granularity %d: dirty %v, want %v", g, got, want)
		}
	}
	off, err := l.BitmapDirty(context.Background(), "off")
	if err != nil || !off.Empty() {
		t.Errorf("disabled bitmap: %v, %v", off, err)
	}
	if _, err := l.BitmapDirty(context.Background(), "nope"); !errors.Is(err, ErrNoBitmap) {
		t.Errorf("missing bitmap: %v", err)
	}
}

// TestBitmapInUse kills qemu-io while it has the image open: the bitmap is
// left with in_use set, and must be refused.
func TestBitmapInUse(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "bm.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "16M")
	runTool(t, "qemu-img", "bitmap", "--add", "--enable", img, "b")
	cmd := exec.Command(fixture.Tool(t, "qemu-io"), "-c", "write 0 64k", "-c", "sleep 20000", img)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until QEMU has flagged the bitmap, then crash it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		im, err := Open(img)
		if err == nil {
			b, _ := info(im.Layers()[0]).Bitmap("b")
			im.Close()
			if b.InUse {
				break
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("bitmap never flagged in_use")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	im, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	_, err = info(im.Layers()[0]).BitmapDirty(context.Background(), "b")
	if !errors.Is(err, ErrBitmapInUse) {
		t.Fatalf("err = %v, want ErrBitmapInUse", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Path == "" {
		t.Fatalf("not an *Error naming the file: %v", err)
	}
}

// bitmapFile builds a tiny "file": a table of entries at cluster 1 and
// data clusters after it, for the table parser.
func bitmapFile(cs int64, entries []uint64, data map[int64][]byte) []byte {
	n := int64(2 + len(data))
	for off := range data {
		n = max(n, off/cs+1)
	}
	f := make([]byte, n*cs)
	for i, e := range entries {
		binary.BigEndian.PutUint64(f[cs+int64(i)*8:], e)
	}
	for off, d := range data {
		copy(f[off:], d)
	}
	return f
}

type bytesAt []byte

func (b bytesAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(b)) {
		return 0, fmt.Errorf("offset %d: %w", off, os.ErrInvalid)
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, fmt.Errorf("short read at %d", off)
	}
	return n, nil
}

func TestBitmapTableEntries(t *testing.T) {
	const cs = 512
	gran := int64(512)
	perEntry := int64(cs * 8 * 512) // 2 MiB of guest per entry
	size := 3*perEntry + 1000
	data := make([]byte, cs)
	data[0] = 0x05    // granules 0 and 2
	data[cs-1] = 0x80 // last granule of the entry
	f := bitmapFile(cs, []uint64{bmtAllOnes, 0, 2 * cs, bmtAllOnes}, map[int64][]byte{2 * cs: data})
	b := BitmapInfo{Name: "t", Granularity: gran, Type: 1, TableOffset: cs, TableSize: 4}
	got, err := readBitmap(context.Background(), "t", bytesAt(f), int64(len(f)), cs, size, b)
	if err != nil {
		t.Fatal(err)
	}
	want := rangeset.Of(
		rangeset.Range{Start: 0, End: perEntry},
		rangeset.Range{Start: 2 * perEntry, End: 2*perEntry + 512},
		rangeset.Range{Start: 2*perEntry + 1024, End: 2*perEntry + 1536},
		rangeset.Range{Start: 3*perEntry - 512, End: size},
	)
	if !rangeset.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	bad := []struct {
		name string
		e    []uint64
		n    uint32
	}{
		{"reserved", []uint64{1 << 60, 0, 0, 0}, 4},
		{"unaligned", []uint64{cs + 8, 0, 0, 0}, 4},
		{"past end", []uint64{100 * cs, 0, 0, 0}, 4},
		{"ones with offset", []uint64{2*cs | 1, 0, 0, 0}, 4},
		{"size", []uint64{0, 0, 0}, 3},
	}
	for _, c := range bad {
		f := bitmapFile(cs, c.e, map[int64][]byte{2 * cs: data})
		b.TableSize = c.n
		if _, err := readBitmap(context.Background(), "t", bytesAt(f), int64(len(f)), cs, size, b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", c.name, err)
		}
	}
}

// FuzzBitmapTable feeds arbitrary files to the table reader: it must not
// panic, must return categorised errors, and its ranges must be granule
// aligned (but at the disk end) and inside the disk.
func FuzzBitmapTable(f *testing.F) {
	const cs = 512
	data := make([]byte, cs)
	data[0], data[7] = 0x05, 0xff
	f.Add(bitmapFile(cs, []uint64{bmtAllOnes, 0, 2 * cs}, map[int64][]byte{2 * cs: data}), uint8(9), uint32(3), int64(3*cs*8*512-7))
	f.Add(bitmapFile(cs, []uint64{2 * cs}, map[int64][]byte{2 * cs: data}), uint8(12), uint32(1), int64(1<<20))
	f.Fuzz(func(t *testing.T, file []byte, granBits uint8, n uint32, size int64) {
		if granBits < minGranularity || granBits > maxGranularity || size < 0 || size > 1<<40 {
			return
		}
		gran := int64(1) << granBits
		b := BitmapInfo{Name: "f", Granularity: gran, Type: 1, TableOffset: cs, TableSize: n}
		got, err := readBitmap(context.Background(), "f", bytesAt(file), int64(len(file)), cs, size, b)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error is not an *Error: %v", err)
			}
			return
		}
		for _, r := range got.Ranges() {
			if r.Start < 0 || r.End > size || r.Start%gran != 0 || (r.End%gran != 0 && r.End != size) {
				t.Fatalf("range %v for granularity %d, size %d", r, gran, size)
			}
		}
	})
}
