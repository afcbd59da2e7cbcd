package vmdk_test

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/disktest"
	"github.com/vmscope/vmscope/disk/vmdk"
	"github.com/vmscope/vmscope/internal/imgtest"
	"github.com/vmscope/vmscope/internal/rangeset"
)

func fixtureBytes(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(imgtest.Path(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHostile: loops, overlaps, truncation, out-of-file pointers and
// bounds in descriptors, sparse headers, grain directories and tables,
// stream-optimized markers and delta links give *disk.Error naming the
// structure, with its category.
func TestHostile(t *testing.T) {
	le := binary.LittleEndian
	sparse := fixtureBytes(t, "sparse.vmdk")
	gd := int64(le.Uint64(sparse[56:])) * 512
	flat := fixtureBytes(t, "fuzz/seed-flat-flat.vmdk")
	desc := func(body string) string {
		return "# Disk DescriptorFile\nversion=1\nCID=11111111\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n" + body
	}
	mut := func(b []byte, at int64, v []byte) []byte {
		c := bytes.Clone(b)
		copy(c[at:], v)
		return c
	}
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	for _, c := range []struct {
		name  string
		files imgtest.Mem
		cat   error
		what  string
	}{
		{"extent is the descriptor", imgtest.Mem{"/m/d.vmdk": []byte(desc("RW 1 FLAT \"d.vmdk\" 0\n"))}, disk.ErrChain, "d.vmdk"},
		{"extent missing", imgtest.Mem{"/m/d.vmdk": []byte(desc("RW 1 FLAT \"gone.raw\" 0\n"))}, disk.ErrChain, "gone.raw"},
		{"extent named twice", imgtest.Mem{"/m/d.vmdk": []byte(desc("RW 8 FLAT \"f\" 0\nRW 8 FLAT \"f\" 8\n")), "/m/f": flat}, disk.ErrCorrupt, "descriptor extent"},
		{"flat extent past its file", imgtest.Mem{"/m/d.vmdk": []byte(desc("RW 4096 FLAT \"f\" 1\n")), "/m/f": flat}, disk.ErrCorrupt, "flat extent"},
		{"protocol extent", imgtest.Mem{"/m/d.vmdk": []byte(desc("RW 8 FLAT \"nbd:host:1\" 0\n"))}, disk.ErrUnsupported, "backing file name"},
		{"NOACCESS extent", imgtest.Mem{"/m/d.vmdk": []byte(desc("NOACCESS 8 FLAT \"f\" 0\n")), "/m/f": flat}, disk.ErrUnsupported, "descriptor extent"},
		{"VMFSSPARSE extent", imgtest.Mem{"/m/d.vmdk": []byte(desc("RW 8 VMFSSPARSE \"f\"\n")), "/m/f": flat}, disk.ErrUnsupported, "descriptor extent"},
		{"huge extent", imgtest.Mem{"/m/d.vmdk": []byte(desc("RW 99999999999999999 ZERO\n"))}, disk.ErrCorrupt, "descriptor extent"},
		{"disk past the bound", imgtest.Mem{"/m/d.vmdk": []byte(desc(strings.Repeat("RW 8000000000000000 ZERO\n", 3)))}, disk.ErrCorrupt, "descriptor extent"},
		{"too many lines", imgtest.Mem{"/m/d.vmdk": []byte(desc(strings.Repeat("#\n", 20001)))}, disk.ErrCorrupt, "descriptor"},
		{"line too long", imgtest.Mem{"/m/d.vmdk": []byte(desc("ddb.x = \"" + strings.Repeat("a", 5000) + "\"\n"))}, disk.ErrCorrupt, "descriptor line"},
		{"no CID", imgtest.Mem{"/m/d.vmdk": []byte("# Disk DescriptorFile\nRW 8 ZERO\n")}, disk.ErrCorrupt, "descriptor"},
		{"sparse extent not KDMV", imgtest.Mem{"/m/d.vmdk": []byte(desc("RW 8 SPARSE \"f\"\n")), "/m/f": flat}, disk.ErrCorrupt, "sparse header"},
		{"COWD", imgtest.Mem{"/m/c.vmdk": append([]byte("COWD"), make([]byte, 2044)...)}, disk.ErrUnsupported, "sparse header"},
		{"grain size not a power of two", imgtest.Mem{"/m/s.vmdk": mut(sparse, 20, u32(100))}, disk.ErrCorrupt, "grain size"},
		{"numGTEsPerGT zero", imgtest.Mem{"/m/s.vmdk": mut(sparse, 44, u32(0))}, disk.ErrCorrupt, "numGTEsPerGT"},
		{"capacity huge", imgtest.Mem{"/m/s.vmdk": mut(sparse, 12, []byte{0, 0, 0, 0, 0, 0, 0, 0x10})}, disk.ErrCorrupt, "capacity"},
		{"grain directory past the file", imgtest.Mem{"/m/s.vmdk": mut(sparse, 56, le.AppendUint64(nil, 1<<30))}, disk.ErrCorrupt, "grain directory"},
		{"grain table past the file", imgtest.Mem{"/m/s.vmdk": mut(sparse, gd, u32(1<<30))}, disk.ErrCorrupt, "grain directory entry"},
		{"grain tables overlap", imgtest.Mem{"/m/s.vmdk": mut(sparse, gd+4, sparse[gd:gd+4])}, disk.ErrCorrupt, "grain directory entry"},
		{"grain table dropped", imgtest.Mem{"/m/s.vmdk": mut(sparse, gd, u32(0))}, nil, ""},
		{"truncated sparse file", imgtest.Mem{"/m/s.vmdk": sparse[:len(sparse)/2]}, disk.ErrCorrupt, ""},
		{"embedded descriptor past the file", imgtest.Mem{"/m/s.vmdk": mut(sparse, 28, le.AppendUint64(nil, 1<<40))}, disk.ErrCorrupt, "embedded descriptor"},
	} {
		t.Run(c.name, func(t *testing.T) {
			top := ""
			for k := range c.files {
				if strings.HasPrefix(filepath.Base(k), "d.") || strings.HasPrefix(filepath.Base(k), "s.") || strings.HasPrefix(filepath.Base(k), "c.") {
					top = k
				}
			}
			if c.cat == nil {
				imgtest.CheckImage(t, func() (*disk.Image, error) { return c.files.Open(top) })
				return
			}
			imgtest.CheckRefused(t, c.name, c.files, top, c.cat, c.what)
		})
	}
	// A grain table entry pointing past the file: an error when read.
	gt := int64(le.Uint32(sparse[gd:])) * 512
	bad := mut(sparse, gt, u32(1<<30))
	imgtest.CheckRefused(t, "grain past the file", imgtest.Mem{"/m/s.vmdk": bad}, "/m/s.vmdk", disk.ErrCorrupt, "grain table entry")
}

// streamWithFooter turns qemu-img's stream-optimized file (its header
// holds the grain directory's offset) into the layout VMware writes: the
// header says "directory at the end" (GD_AT_END) and a footer marker, a
// copy of the header with the real offset, and the end-of-stream marker
// close the file.
func streamWithFooter(t *testing.T, b []byte) []byte {
	t.Helper()
	if !bytes.Equal(b[len(b)-512:], make([]byte, 512)) {
		t.Fatal("stream fixture does not end with an end-of-stream marker")
	}
	le := binary.LittleEndian
	hdr := bytes.Clone(b[:512])
	c := bytes.Clone(b[:len(b)-512])
	le.PutUint64(c[56:], ^uint64(0))
	marker := make([]byte, 512)
	le.PutUint64(marker, 1)
	le.PutUint32(marker[12:], 3)
	return append(append(append(c, marker...), hdr...), make([]byte, 512)...)
}

// TestStreamFooter: a stream-optimized file with its grain directory at
// the end (the footer) reads as qemu-img convert and allocates as
// qemu-img map.
func TestStreamFooter(t *testing.T) {
	p := filepath.Join(t.TempDir(), "footer.vmdk")
	if err := os.WriteFile(p, streamWithFooter(t, fixtureBytes(t, "stream.vmdk")), 0o444); err != nil {
		t.Fatal(err)
	}
	im, err := disk.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	disktest.Check(t, im)
}

// TestHostileStream: a stream-optimized file cut inside its footer, a
// grain marker with another grain's LBA or a huge size, and compressed
// data that does not inflate are corrupt, naming the structure.
func TestHostileStream(t *testing.T) {
	le := binary.LittleEndian
	b := streamWithFooter(t, fixtureBytes(t, "stream.vmdk"))
	imgtest.CheckRefused(t, "cut footer", imgtest.Mem{"/m/s.vmdk": b[:len(b)-700]}, "/m/s.vmdk", disk.ErrCorrupt, "footer")
	foot := b[len(b)-1024:]
	gd := int64(le.Uint64(foot[56:])) * 512
	gt := int64(le.Uint32(b[gd:])) * 512
	grain := int64(le.Uint32(b[gt:])) * 512
	if grain == 0 {
		t.Fatal("first grain of the stream fixture unallocated")
	}
	lba := bytes.Clone(b)
	le.PutUint64(lba[grain:], 999)
	imgtest.CheckRefused(t, "marker LBA", imgtest.Mem{"/m/s.vmdk": lba}, "/m/s.vmdk", disk.ErrCorrupt, "grain marker")
	junk := bytes.Clone(b)
	copy(junk[grain+12:], "not deflate at all")
	imgtest.CheckRefused(t, "bad deflate", imgtest.Mem{"/m/s.vmdk": junk}, "/m/s.vmdk", disk.ErrCorrupt, "compressed grain")
	size := bytes.Clone(b)
	le.PutUint32(size[grain+8:], 1<<30)
	imgtest.CheckRefused(t, "marker size", imgtest.Mem{"/m/s.vmdk": size}, "/m/s.vmdk", disk.ErrCorrupt, "grain marker")

	// A valid zlib stream of less than a grain, read whole (inflated in
	// place) and in part (through the cache of inflated grains).
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(make([]byte, 1000))
	zw.Close()
	short := bytes.Clone(b)
	le.PutUint32(short[grain+8:], uint32(z.Len()))
	copy(short[grain+12:], z.Bytes())
	grainBytes := int64(le.Uint64(b[20:])) * 512
	for _, r := range [][2]int64{{0, grainBytes}, {grainBytes - 512, 512}} {
		im, err := imgtest.Mem{"/m/s.vmdk": short}.Open("/m/s.vmdk")
		if err != nil {
			t.Fatal(err)
		}
		_, err = im.Top().ReadAt(make([]byte, r[1]), r[0])
		im.Close()
		var e *disk.Error
		if !errors.As(err, &e) || !errors.Is(err, disk.ErrCorrupt) || e.What != "compressed grain" || !strings.Contains(err.Error(), "inflates to") {
			t.Errorf("short grain, %d bytes at %d: %v", r[1], r[0], err)
		}
	}
}

// TestDeltaLinks: a delta whose parent has another CID, or that names
// itself or a missing parent, is a chain error; through disk.Open the
// loop is also found by file identity (a second name of the same file).
func TestDeltaLinks(t *testing.T) {
	dir := t.TempDir()
	base := fixtureBytes(t, "base.vmdk")
	delta := fixtureBytes(t, "delta.vmdk")
	le := binary.LittleEndian
	descAt := int64(le.Uint64(delta[28:])) * 512
	text := string(bytes.TrimRight(delta[descAt:descAt+int64(le.Uint64(delta[36:]))*512], "\x00"))
	withText := func(s string) []byte {
		c := bytes.Clone(delta)
		if len(s) > len(text) {
			t.Fatalf("descriptor grows")
		}
		copy(c[descAt:], s+strings.Repeat("\x00", len(text)-len(s)))
		return c
	}
	var parentCID string
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, "parentCID="); ok {
			parentCID = v
		}
	}
	other := withText(strings.Replace(text, "parentCID="+parentCID, "parentCID=0badc1d0", 1))
	imgtest.CheckRefused(t, "parent CID", imgtest.Mem{"/m/delta.vmdk": other, "/m/base.vmdk": base}, "/m/delta.vmdk", disk.ErrChain, "parentCID")
	self := withText(strings.Replace(text, `parentFileNameHint="base.vmdk"`, `parentFileNameHint="d.vmdk"`, 1))
	imgtest.CheckRefused(t, "self", imgtest.Mem{"/m/d.vmdk": self}, "/m/d.vmdk", disk.ErrChain, "d.vmdk")
	imgtest.CheckRefused(t, "missing", imgtest.Mem{"/m/delta.vmdk": delta}, "/m/delta.vmdk", disk.ErrChain, "base.vmdk")
	// A loop by file identity: a.vmdk's parent is b.vmdk, a hard link to a.vmdk.
	a := withText(strings.Replace(text, `parentFileNameHint="base.vmdk"`, `parentFileNameHint="b.vmdk"`, 1))
	if err := os.WriteFile(filepath.Join(dir, "a.vmdk"), a, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "a.vmdk"), filepath.Join(dir, "b.vmdk")); err != nil {
		t.Fatal(err)
	}
	_, err := disk.Open(filepath.Join(dir, "a.vmdk"))
	imgtest.CheckError(t, "identity loop", err)
	if !errors.Is(err, disk.ErrChain) || !strings.Contains(err.Error(), "loop") {
		t.Fatalf("identity loop: %v", err)
	}
	// An extent that is the descriptor under a second name, and two
	// extents that are one file under two names.
	d := filepath.Join(dir, "d.vmdk")
	os.WriteFile(filepath.Join(dir, "f.raw"), make([]byte, 1<<20), 0o444)
	os.Link(filepath.Join(dir, "f.raw"), filepath.Join(dir, "g.raw"))
	for _, body := range []string{"RW 1 FLAT \"e.vmdk\" 0\n", "RW 8 FLAT \"f.raw\" 0\nRW 8 FLAT \"g.raw\" 0\n"} {
		os.Remove(d)
		os.Remove(filepath.Join(dir, "e.vmdk"))
		os.WriteFile(d, []byte("# Disk DescriptorFile\nCID=1\nparentCID=ffffffff\n"+body), 0o444)
		os.Link(d, filepath.Join(dir, "e.vmdk"))
		_, err = disk.Open(d)
		imgtest.CheckError(t, "extent identity", err)
		if !errors.Is(err, disk.ErrChain) || !strings.Contains(err.Error(), "loop") {
			t.Fatalf("extent identity (%q): %v", body, err)
		}
	}
}

// TestZeroExtent: a descriptor of FLAT, ZERO and SPARSE extents (QEMU
// skips ZERO extents, so the expected bytes are the test's own: the flat
// file, zeros, the sparse fixture's first bytes as qemu-img convert
// gives them) reads and allocates extent by extent.
func TestZeroExtent(t *testing.T) {
	dir := t.TempDir()
	flat := fixtureBytes(t, "fuzz/seed-flat-flat.vmdk") // 2 MiB
	raw := fixtureBytes(t, "fuzz/seed.raw")             // what seed.vmdk holds
	os.WriteFile(filepath.Join(dir, "f.raw"), flat, 0o444)
	os.WriteFile(filepath.Join(dir, "s.vmdk"), fixtureBytes(t, "fuzz/seed.vmdk"), 0o444)
	d := filepath.Join(dir, "d.vmdk")
	os.WriteFile(d, []byte("# Disk DescriptorFile\nversion=1\nCID=22222222\nparentCID=ffffffff\ncreateType=\"custom\"\n"+
		"RW 2048 FLAT \"f.raw\" 2048\nRW 1000 ZERO\nRW 4096 SPARSE \"s.vmdk\"\n"), 0o444)
	im, err := disk.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	want := append(append(bytes.Clone(flat[1<<20:2<<20]), make([]byte, 1000*512)...), raw...)
	got := make([]byte, len(want))
	if n, err := im.ReadAt(got, 0); n != len(want) || (err != nil && !errors.Is(err, io.EOF)) || im.Size() != int64(len(want)) {
		t.Fatalf("ReadAt %d, %v, Size %d; want %d", n, err, im.Size(), len(want))
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes differ from the extents")
	}
	alloc, err := im.Top().Allocated(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// FLAT and ZERO whole, then the sparse grains (64 KiB) holding data.
	wantAlloc := rangeset.Of(rangeset.Range{Start: 0, End: 3048 * 512})
	sp := int64(3048 * 512)
	for g := int64(0); g < 32; g++ {
		if !bytes.Equal(raw[g<<16:(g+1)<<16], make([]byte, 1<<16)) {
			wantAlloc.Add(sp+g<<16, sp+(g+1)<<16)
		}
	}
	if !rangeset.Equal(alloc, wantAlloc) {
		t.Fatalf("Allocated %v; want %v", alloc, wantAlloc)
	}
	if ex := im.Top().(*vmdk.Layer).Extents; len(ex) != 3 || ex[1].Kind != vmdk.KindZero {
		t.Fatalf("extents %v", fmt.Sprint(ex))
	}
}
