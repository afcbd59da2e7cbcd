package xfs

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"strings"
	"testing"
)

// patched is a volume with some blocks replaced.
type patched struct {
	base  io.ReaderAt
	bs    int64
	block map[int64][]byte
}

func (p *patched) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.base.ReadAt(b, off)
	for blk, data := range p.block {
		lo, hi := max(off, blk*p.bs), min(off+int64(len(b)), (blk+1)*p.bs)
		if lo < hi {
			copy(b[lo-off:hi-off], data[lo-blk*p.bs:])
		}
	}
	return n, err
}

// target is a structure of the fixture the fuzzer corrupts: the block
// holding it, and where its CRC lies in the block (-1: none).
type target struct {
	name   string
	blk    int64
	crcOff int
	crcLen int
}

// fuzzTargets finds the metadata of xfs.img worth corrupting: the
// superblock, AGI, a B+tree inode, a B+tree block, a directory block, a
// shortform directory inode, a remote symlink block, an inode B+tree block.
func fuzzTargets(t testing.TB, f *FS) []target {
	t.Helper()
	ino := func(name string) *Inode {
		i, err := f.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		in, err := f.Inode(i)
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	isz := int(f.sb.InodeSize)
	inodeT := func(name string) target {
		in := ino(name)
		blk := in.off / f.bs
		return target{name, blk, int(in.off%f.bs) + 100, isz}
	}
	out := []target{{"superblock", 0, 224, int(f.sb.SectSize)}}
	out = append(out, inodeT("x/btree"), inodeT("x/dirs/sf"), inodeT("x/dirs/node"), inodeT("x/sym-remote"), inodeT("x/unwritten"))
	_, meta, err := f.BlockMap(ino("x/btree"))
	if err != nil || len(meta) < 2 {
		t.Fatalf("btree: %v meta, %v", meta, err)
	}
	out = append(out, target{"bmbt node", int64(meta[0]), 64, int(f.bs)}, target{"bmbt leaf", int64(meta[1]), 64, int(f.bs)})
	ext, _ := f.Extents(ino("x/dirs/node").Ino)
	out = append(out, target{"dir data block", int64(ext[0].Physical), 4, int(f.dirBlk)})
	ext, _ = f.Extents(ino("x/dirs/block").Ino)
	out = append(out, target{"dir block", int64(ext[0].Physical), 4, int(f.dirBlk)})
	ext, _ = f.Extents(ino("x/sym-remote").Ino)
	out = append(out, target{"symlink block", int64(ext[0].Physical), 12, int(f.bs)})
	return out
}

// FuzzCorruptMetadata overwrites bytes of one metadata structure of
// xfs.img (recomputing its CRC when fix is set, so the parser behind the
// check is reached) and walks the whole filesystem: every directory
// listed, every file read. It must end with errors, never a panic or a
// hang, and every error must say which structure failed.
func FuzzCorruptMetadata(fz *testing.F) {
	p := fixturePath(fz, "xfs.img")
	fh, err := os.Open(p)
	if err != nil {
		fz.Fatal(err)
	}
	defer fh.Close()
	st, _ := fh.Stat()
	clean, err := Open(fh, st.Size())
	if err != nil {
		fz.Fatal(err)
	}
	targets := fuzzTargets(fz, clean)
	for i := range targets {
		fz.Add(uint8(i), uint16(4+i*8), []byte{0xff, 0x7f, 0, 1}, i%3 != 0)
	}
	fz.Fuzz(func(t *testing.T, which uint8, pos uint16, data []byte, fix bool) {
		tg := targets[int(which)%len(targets)]
		blkBytes := int(clean.bs)
		if tg.crcLen > blkBytes {
			blkBytes = tg.crcLen
		}
		b := make([]byte, blkBytes)
		if _, err := fh.ReadAt(b, tg.blk*clean.bs); err != nil {
			t.Fatal(err)
		}
		at := int(pos) % len(b)
		copy(b[at:], data)
		if fix {
			start := 0
			if tg.crcLen < int(clean.bs) { // an inode or a sector: its own range in the block
				start = tg.crcOff - 100
				if tg.name == "superblock" {
					start = 0
				}
			}
			end := start + tg.crcLen
			c := tg.crcOff - start
			seg := b[start:end]
			binary.LittleEndian.PutUint32(seg[c:], 0)
			binary.LittleEndian.PutUint32(seg[c:], crc32.Checksum(seg, castagnoli))
		}
		pv := &patched{base: fh, bs: clean.bs, block: map[int64][]byte{}}
		for k := 0; k*int(clean.bs) < len(b); k++ {
			pv.block[tg.blk+int64(k)] = b[k*int(clean.bs) : (k+1)*int(clean.bs)]
		}
		walkHostile(t, pv, st.Size())
	})
}

// walkHostile opens and walks a (possibly corrupt) filesystem, checking
// that every failure is an error naming its structure.
func walkHostile(t *testing.T, r io.ReaderAt, size int64) {
	f, err := Open(r, size)
	if err != nil {
		checkErr(t, err)
		return
	}
	f.LogState()
	f.Chunks()
	seen := map[uint64]bool{}
	var walk func(ino uint64, depth int)
	walk = func(ino uint64, depth int) {
		if seen[ino] || depth > 100 {
			return
		}
		seen[ino] = true
		ents, err := f.ReadDirInode(ino)
		if err != nil {
			checkErr(t, err)
			return
		}
		for _, e := range ents {
			if depth == 0 && e.Name == "tree" {
				continue // the copy of the source tree: ordinary files, slow to walk per input
			}
			in, err := f.Inode(e.Ino)
			if err != nil {
				checkErr(t, err)
				continue
			}
			switch {
			case in.IsDir():
				walk(e.Ino, depth+1)
			case in.IsSymlink():
				if _, err := f.Readlink(in); err != nil {
					checkErr(t, err)
				}
			case in.IsRegular():
				fl, err := f.openInode(in, e.Name)
				if err != nil {
					checkErr(t, err)
					continue
				}
				buf := make([]byte, 64<<10)
				for off := int64(0); off < min(fl.Size(), 1<<20); off += int64(len(buf)) {
					if _, err := fl.ReadAt(buf, off); err != nil && err != io.EOF {
						checkErr(t, err)
						break
					}
				}
			}
		}
	}
	walk(f.sb.RootIno, 0)
}

func checkErr(t *testing.T, err error) {
	t.Helper()
	if errors.Is(err, ErrNotXFS) {
		return
	}
	if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrNotDir) {
		t.Errorf("error of no category: %v", err)
	}
	if !strings.Contains(err.Error(), "xfs") {
		t.Errorf("error names no structure: %v", err)
	}
}

// FuzzSuperblock decodes arbitrary superblock sectors: no panic, and a
// superblock accepted has a consistent geometry.
func FuzzSuperblock(fz *testing.F) {
	for _, img := range []string{"xfs.img", "xfs-v4.img", "xfs-rt.img"} {
		if b, err := readHead(fixtureDir() + "/" + img); err == nil {
			fz.Add(b)
		}
	}
	fz.Add(append([]byte("XFSB"), make([]byte, 508)...))
	fz.Fuzz(func(t *testing.T, b []byte) {
		sb, err := parseSuperblock(b, 1<<40)
		if err != nil {
			return
		}
		if sb.BlockSize != 1<<sb.BlockLog || sb.InoPerBlock != 1<<sb.InoPBLog || sb.AGCount == 0 ||
			sb.DBlocks > uint64(sb.AGCount)*uint64(sb.AGBlocks) {
			t.Errorf("accepted an inconsistent superblock: %+v", sb)
		}
	})
}

func readHead(p string) ([]byte, error) {
	fh, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b := make([]byte, 512)
	_, err = io.ReadFull(fh, b)
	return b, err
}

// TestHostileStructures pins errors for hand-made corruptions: a B+tree
// block pointing at itself (a loop), an extent count the fork cannot hold,
// a directory entry overrunning its block, a truncated volume. Each names
// the structure and its offset.
func TestHostileStructures(t *testing.T) {
	p := fixturePath(t, "xfs.img")
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	st, _ := fh.Stat()
	clean, err := Open(fh, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	bs := clean.bs
	read := func(blk int64) []byte {
		b := make([]byte, bs)
		fh.ReadAt(b, blk*bs)
		return b
	}
	fixCRC := func(b []byte, off int) {
		binary.LittleEndian.PutUint32(b[off:], 0)
		binary.LittleEndian.PutUint32(b[off:], crc32.Checksum(b, castagnoli))
	}
	bt, _ := clean.Lookup("x/btree")
	in, _ := clean.Inode(bt)
	_, meta, _ := clean.BlockMap(in)
	node := int64(meta[0])

	// A loop: the level-1 node's first pointer points back at itself.
	b := read(node)
	maxr := (int(bs) - 72) / 16
	self := uint64(node/int64(clean.sb.AGBlocks))<<clean.sb.AGBlkLog | uint64(node%int64(clean.sb.AGBlocks))
	binary.BigEndian.PutUint64(b[72+maxr*8:], self)
	binary.BigEndian.PutUint16(b[4:], 1)
	fixCRC(b, 64)
	f, _ := Open(&patched{fh, bs, map[int64][]byte{node: b}}, st.Size())
	_, err = f.Extents(bt)
	wantErr(t, "loop", err, "B+tree block", "inode")

	// An extent count the inode's fork cannot hold.
	sym, _ := clean.Lookup("x/unwritten")
	in, _ = clean.Inode(sym)
	blk := in.off / bs
	b = read(blk)
	o := int(in.off % bs)
	binary.BigEndian.PutUint64(b[o+24:], 1<<40) // nrext64: the big extent count
	ib := b[o : o+int(clean.sb.InodeSize)]
	fixCRC(ib, 100)
	f, _ = Open(&patched{fh, bs, map[int64][]byte{blk: b}}, st.Size())
	_, err = f.Inode(sym)
	wantErr(t, "extent count", err, "xfs inode", "offset")

	// A directory entry whose name runs past its block.
	d, _ := clean.Lookup("x/dirs/block")
	ext, _ := clean.Extents(d)
	db := int64(ext[0].Physical)
	b = read(db)
	b[64+8] = 255 // the first entry's name length
	fixCRC(b, 4)
	f, _ = Open(&patched{fh, bs, map[int64][]byte{db: b}}, st.Size())
	_, err = f.ReadDirInode(d)
	wantErr(t, "dir entry", err, "directory block", "offset")

	// A truncated volume.
	_, err = Open(io.NewSectionReader(fh, 0, 1<<20), 1<<20)
	wantErr(t, "truncated", err, "superblock", "offset")
}

func wantErr(t *testing.T, what string, err error, words ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", what)
		return
	}
	checkErr(t, err)
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: %v: does not say %q", what, err, w)
		}
	}
	t.Logf("%s: %v", what, err)
}

// TestRealtimeFlagRefused pins the realtime refusal where TestRealtime
// cannot (Debian's kernels lack CONFIG_XFS_RT, so no realtime file is ever
// written): the fixture's x/btree with its inode's XFS_DIFLAG_REALTIME set
// and its CRC recomputed reads as a realtime file and is refused as
// unsupported, naming the inode.
func TestRealtimeFlagRefused(t *testing.T) {
	p := fixturePath(t, "xfs.img")
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	st, _ := fh.Stat()
	clean, err := Open(fh, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	ino := mustLookup(t, clean, "x/btree")
	off, ok := clean.InodeOffset(ino)
	if !ok {
		t.Fatalf("x/btree: inode %d has no offset", ino)
	}
	bs := clean.bs
	blk := off / bs
	b := make([]byte, bs)
	if _, err := fh.ReadAt(b, blk*bs); err != nil {
		t.Fatal(err)
	}
	in := b[off-blk*bs:][:clean.sb.InodeSize]
	binary.BigEndian.PutUint16(in[90:], binary.BigEndian.Uint16(in[90:])|flagRealtime)
	binary.LittleEndian.PutUint32(in[100:], 0)
	binary.LittleEndian.PutUint32(in[100:], crc32.Checksum(in, castagnoli))
	f, err := Open(&patched{fh, bs, map[int64][]byte{blk: b}}, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.Inode(ino)
	if err != nil || !got.Realtime() {
		t.Fatalf("patched x/btree: %+v, %v: want a realtime inode", got, err)
	}
	_, err = f.OpenInode(ino)
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("opening a realtime file: %v, want ErrUnsupported", err)
	}
	wantErr(t, "realtime", err, "realtime file", "inode")
}
