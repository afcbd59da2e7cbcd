package ntfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/vmscope/vmscope/vmerr"
)

var (
	imgOnce sync.Once
	imgRaw  []byte
)

// fixtureBytes is ntfs.img in memory (read once), for the fuzz targets.
func fixtureBytes(t testing.TB) []byte {
	p := ntfsFixture(t, "ntfs.img")
	imgOnce.Do(func() { imgRaw, _ = os.ReadFile(p) })
	if imgRaw == nil {
		t.Fatalf("reading %s", p)
	}
	return imgRaw
}

// patched reads base with data over [off, off+len(data)).
type patched struct {
	base []byte
	off  int64
	data []byte
}

func (o *patched) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(o.base)) {
		return 0, io.EOF
	}
	n := copy(p, o.base[off:])
	lo, hi := max(off, o.off), min(off+int64(n), o.off+int64(len(o.data)))
	if lo < hi {
		copy(p[lo-off:hi-off], o.data[lo-o.off:hi-o.off])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// checkErr: every error is one of the package's categories, and a
// corruption names the structure (an MFT record, INDX block or the boot
// sector).
func checkErr(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotExist) && !errors.Is(err, ErrFreeSlot) && !errors.Is(err, io.EOF) {
		var pe interface{ Timeout() bool }
		_ = pe
		if !strings.Contains(err.Error(), "not a directory") && !strings.Contains(err.Error(), "file does not exist") && !strings.Contains(err.Error(), "is a directory") {
			t.Fatalf("error outside the categories: %v", err)
		}
		return
	}
	if errors.Is(err, ErrCorrupt) {
		var fe *vmerr.FormatError
		if !errors.As(err, &fe) || !(strings.Contains(fe.Struct, "MFT record") || strings.Contains(fe.Struct, "boot sector")) {
			t.Fatalf("corruption without its MFT record: %v", err)
		}
	}
}

// fuzzPaths are the fuzzed records of the fixture: the root, a big
// directory (index root and INDX blocks), a compressed file, a sparse
// file, a file with streams, hard links, a file with an attribute list, a
// reparse point; plus $MFT (0) and $Volume (3).
var fuzzPaths = []string{".", "big", "zip/text.txt", "sparse/holes.bin", "hello.txt", "docs", "links/orig.txt", "manylinks/orig", "reparse-link"}

func fuzzRecords(t testing.TB, f *FS) []uint64 {
	recs := []uint64{0, 3}
	for _, p := range fuzzPaths {
		e, err := f.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, e.Ino)
	}
	return recs
}

// exercise opens the volume and reads everything reachable from record
// rec: its entry, listing (and its children's), every stream (1 MiB at
// most each), and the root's listing.
func exercise(t *testing.T, dev io.ReaderAt, size int64, rec uint64) {
	f, err := Open(dev, size)
	checkErr(t, err)
	if err != nil {
		return
	}
	e, err := f.StatInode("/x", rec)
	checkErr(t, err)
	if err == nil && e.Size < 0 {
		t.Fatalf("record %d: size %d", rec, e.Size)
	}
	if ents, err := f.ListInode(rec, "/x", ""); err == nil {
		for _, c := range ents {
			checkErr(t, c.Err)
		}
	} else {
		checkErr(t, err)
	}
	if x, err := f.File(rec); err == nil {
		buf := make([]byte, 1<<16)
		for _, s := range x.Streams() {
			r, err := f.OpenStream(rec, s.Name)
			checkErr(t, err)
			if err != nil {
				continue
			}
			for off := int64(0); off < min(r.Size(), 1<<20); off += int64(len(buf)) {
				n, err := r.ReadAt(buf, off)
				if n < 0 || n > len(buf) {
					t.Fatalf("ReadAt returned %d", n)
				}
				if err != nil && err != io.EOF {
					checkErr(t, err)
					break
				}
			}
		}
	} else {
		checkErr(t, err)
	}
	_, err = f.ListInode(RootRecord, "/", "")
	checkErr(t, err)
}

// FuzzRecord overwrites one MFT record of the fixture (fixups intact in
// the seeds) and reads what it reaches.
func FuzzRecord(f *testing.F) {
	raw := fixtureBytes(f)
	fs, err := Open(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		f.Fatal(err)
	}
	recs := fuzzRecords(f, fs)
	for i, rec := range recs {
		off, _ := fs.RecordOffset(rec)
		f.Add(uint8(i), raw[off:off+fs.RecordSize])
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		rec := recs[int(which)%len(recs)]
		off, _ := fs.RecordOffset(rec)
		if int64(len(data)) > fs.RecordSize {
			data = data[:fs.RecordSize]
		}
		exercise(t, &patched{base: raw, off: off, data: data}, int64(len(raw)), rec)
	})
}

// FuzzIndexBlock overwrites the first INDX block of the big directory.
func FuzzIndexBlock(f *testing.F) {
	raw := fixtureBytes(f)
	fs, err := Open(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		f.Fatal(err)
	}
	big, err := fs.Lstat("big")
	if err != nil {
		f.Fatal(err)
	}
	x, err := fs.File(big.Ino)
	if err != nil {
		f.Fatal(err)
	}
	alloc := x.streamOf(attrIndexAlloc, "$I30")
	if alloc == nil || len(alloc.runs) == 0 {
		f.Fatal("big directory without index allocation")
	}
	off := int64(alloc.runs[0].LCN) * fs.ClusterSize
	f.Add(raw[off : off+4096])
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			data = data[:4096]
		}
		exercise(t, &patched{base: raw, off: off, data: data}, int64(len(raw)), big.Ino)
	})
}

// FuzzBoot overwrites the boot sector.
func FuzzBoot(f *testing.F) {
	raw := fixtureBytes(f)
	f.Add(raw[:512])
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 512 {
			data = data[:512]
		}
		exercise(t, &patched{base: raw, off: 0, data: data}, int64(len(raw)), RootRecord)
	})
}

// FuzzRuns decodes a mapping pairs array: the runs cover exactly the
// attribute's VCNs, lie in the volume and do not overlap.
func FuzzRuns(f *testing.F) {
	f.Add([]byte{0x31, 0x10, 0x00, 0x01, 0x00}, uint64(15))
	f.Add([]byte{0x11, 0x04, 0x20, 0x01, 0x04, 0x11, 0x04, 0x10, 0x00}, uint64(11))
	f.Fuzz(func(t *testing.T, b []byte, last uint64) {
		const clusters = 1 << 20
		runs, err := decodeRuns(b, 0, last, clusters)
		if err != nil {
			return
		}
		vcn := uint64(0)
		for _, r := range runs {
			if r.VCN != vcn || r.Len == 0 || !r.Sparse && r.LCN+r.Len > clusters {
				t.Fatalf("run %+v (at VCN %d)", r, vcn)
			}
			vcn += r.Len
		}
		if len(runs) > 0 && vcn != last+1 {
			t.Fatalf("runs end at %d, last %d", vcn, last)
		}
		if checkOverlap(runs) != nil {
			t.Fatal("overlap accepted")
		}
	})
}

// FuzzLZNT1 decompresses random bytes into a compression unit: never past
// it, never a panic.
func FuzzLZNT1(f *testing.F) {
	f.Add([]byte{0x05, 0xB0, 0x00, 'a', 'b', 'c', 'd', 'e', 0x00, 0x00})
	f.Add([]byte{0x03, 0x30, 'a', 'b', 'c', 'd', 0x00, 0x00})
	f.Fuzz(func(t *testing.T, src []byte) {
		dst := make([]byte, 16*4096)
		n, _ := decompressLZNT1(dst, src)
		if n < 0 || n > len(dst) {
			t.Fatalf("wrote %d of %d", n, len(dst))
		}
	})
}

// TestTornRecord: a record whose update sequence does not match is an
// error naming the record and the sector's offset.
func TestTornRecord(t *testing.T) {
	raw := fixtureBytes(t)
	fs, err := Open(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	hello, _ := fs.Lstat("hello.txt")
	off, _ := fs.RecordOffset(hello.Ino)
	rec := bytes.Clone(raw[off : off+fs.RecordSize])
	rec[510] ^= 0xFF
	bad, err := Open(&patched{base: raw, off: off, data: rec}, int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = bad.Lstat("hello.txt")
	var fe *vmerr.FormatError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &fe) || fe.Struct != fmt.Sprintf("MFT record %d", hello.Ino) || fe.Offset != off+510 {
		t.Fatalf("torn record: %v (%+v)", err, fe)
	}
}

// TestOverlappingRuns: two runs of one attribute on the same clusters.
func TestOverlappingRuns(t *testing.T) {
	// 16 clusters at LCN 256, then 16 at LCN 256+8.
	b := []byte{0x21, 0x10, 0x00, 0x01, 0x11, 0x10, 0x08, 0x00}
	if _, err := decodeRuns(b, 0, 31, 1<<20); err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Fatalf("overlapping runs: %v", err)
	}
	// A run past the end of the volume.
	if _, err := decodeRuns([]byte{0x21, 0x10, 0x00, 0x10, 0x00}, 0, 15, 100); err == nil {
		t.Fatal("run outside the volume accepted")
	}
}

// redoFixups writes the update sequence back into a record whose fixups
// were applied.
func redoFixups(b []byte) {
	usaOff := int(binary.LittleEndian.Uint16(b[4:]))
	for i := 1; i <= len(b)/512; i++ {
		copy(b[usaOff+2*i:usaOff+2*i+2], b[i*512-2:i*512])
		copy(b[i*512-2:i*512], b[usaOff:usaOff+2])
	}
}

// TestIndexLoop: an INDX block whose entries point to the same child
// (a loop in the tree) is an error, not a hang or a double listing.
func TestIndexLoop(t *testing.T) {
	raw := fixtureBytes(t)
	fs, _ := Open(bytes.NewReader(raw), int64(len(raw)))
	big, _ := fs.Lstat("big")
	x, _ := fs.File(big.Ino)
	alloc := x.streamOf(attrIndexAlloc, "$I30")
	// Find an INDX block with two subnode entries (an inner node).
	for _, run := range alloc.runs {
		for c := uint64(0); c < run.Len; c++ {
			off := int64(run.LCN+c) * fs.ClusterSize
			blk := bytes.Clone(raw[off : off+4096])
			if string(blk[:4]) != "INDX" || applyFixups(blk, "INDX", off) != nil {
				continue
			}
			var vcnAt []int
			node := 24
			e := node + int(binary.LittleEndian.Uint32(blk[node:]))
			for e+16 <= len(blk) {
				elen := int(binary.LittleEndian.Uint16(blk[e+8:]))
				flags := binary.LittleEndian.Uint32(blk[e+12:])
				if flags&1 != 0 {
					vcnAt = append(vcnAt, e+elen-8)
				}
				if flags&2 != 0 || elen == 0 {
					break
				}
				e += elen
			}
			if len(vcnAt) < 2 {
				continue
			}
			copy(blk[vcnAt[1]:vcnAt[1]+8], blk[vcnAt[0]:vcnAt[0]+8])
			redoFixups(blk)
			bad, _ := Open(&patched{base: raw, off: off, data: blk}, int64(len(raw)))
			_, err := bad.ReadIndex(big.Ino)
			var fe *vmerr.FormatError
			if !errors.Is(err, ErrCorrupt) || !errors.As(err, &fe) || fe.Struct != fmt.Sprintf("MFT record %d", big.Ino) || !strings.Contains(err.Error(), "loop") {
				t.Fatalf("index loop: %v", err)
			}
			return
		}
	}
	t.Fatal("no inner INDX block in the big directory")
}

// TestEncryptedFlag: a file whose $STANDARD_INFORMATION says encrypted
// (EFS; ntfs-3g cannot make one) is reported so. The record is the
// fixture's, with the flag set in memory.
func TestEncryptedFlag(t *testing.T) {
	raw := fixtureBytes(t)
	fs, _ := Open(bytes.NewReader(raw), int64(len(raw)))
	hello, _ := fs.Lstat("hello.txt")
	off, _ := fs.RecordOffset(hello.Ino)
	rec := bytes.Clone(raw[off : off+fs.RecordSize])
	if err := applyFixups(rec, "record", off); err != nil {
		t.Fatal(err)
	}
	p := int(binary.LittleEndian.Uint16(rec[0x14:]))
	if binary.LittleEndian.Uint32(rec[p:]) != attrStandardInfo {
		t.Fatal("first attribute is not $STANDARD_INFORMATION")
	}
	v := p + int(binary.LittleEndian.Uint16(rec[p+20:]))
	binary.LittleEndian.PutUint32(rec[v+32:], binary.LittleEndian.Uint32(rec[v+32:])|0x4000)
	redoFixups(rec)
	enc, _ := Open(&patched{base: raw, off: off, data: rec}, int64(len(raw)))
	e, err := enc.Lstat("hello.txt")
	if err != nil || !hasAttr(e.Attrs, "encrypted") {
		t.Fatalf("encrypted file: attributes %v (%v)", e.Attrs, err)
	}
	if e, _ := fs.Lstat("hello.txt"); hasAttr(e.Attrs, "encrypted") {
		t.Fatalf("clean file reported encrypted: %v", e.Attrs)
	}
}
