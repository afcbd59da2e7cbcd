package xfs

import (
	"fmt"
	"io/fs"
	"time"

	"github.com/vmscope/vmscope/vmerr"
)

const (
	inodeMagic = 0x494e // "IN"

	fmtDev     = 0
	fmtLocal   = 1
	fmtExtents = 2
	fmtBtree   = 3

	flagRealtime = 0x1
	flag2Reflink = 0x2
	flag2Bigtime = 0x8
	flag2Nrext64 = 0x10

	bmbtMagicV4 = 0x424d4150 // "BMAP"
	bmbtMagicV5 = 0x424d4133 // "BMA3"
)

// Inode is a decoded inode core with its data fork.
type Inode struct {
	Ino        uint64
	Mode       uint16
	Version    uint8
	Format     uint8
	Uid, Gid   uint32
	Nlink      uint32
	ProjID     uint32
	Atime      time.Time
	Mtime      time.Time
	Ctime      time.Time
	Crtime     time.Time
	HasCrtime  bool
	Size       uint64
	NBlocks    uint64
	NExtents   uint64 // data fork extents
	ANExtents  uint64 // attribute fork extents
	ForkOff    uint8
	AFormat    uint8
	Flags      uint16
	Flags2     uint64
	Generation uint32
	Rdev       uint32 // device number of a device file (format dev)

	// data is the data fork's bytes inside the inode (the literal area up
	// to the attribute fork); attr the attribute fork's (nil without one).
	data []byte
	attr []byte
	// off is the inode's byte offset on the volume.
	off int64
}

// FileMode converts the inode's mode to an fs.FileMode.
func (in *Inode) FileMode() fs.FileMode {
	m := fs.FileMode(in.Mode & 0o777)
	if in.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if in.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if in.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch in.Mode & 0o170000 {
	case 0o040000:
		m |= fs.ModeDir
	case 0o120000:
		m |= fs.ModeSymlink
	case 0o020000:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case 0o060000:
		m |= fs.ModeDevice
	case 0o010000:
		m |= fs.ModeNamedPipe
	case 0o140000:
		m |= fs.ModeSocket
	}
	return m
}

// IsDir, IsRegular and IsSymlink tell the file type.
func (in *Inode) IsDir() bool     { return in.Mode&0o170000 == 0o040000 }
func (in *Inode) IsRegular() bool { return in.Mode&0o170000 == 0o100000 }
func (in *Inode) IsSymlink() bool { return in.Mode&0o170000 == 0o120000 }

// Realtime reports a file whose data lives on the realtime device.
func (in *Inode) Realtime() bool { return in.Flags&flagRealtime != 0 }

// Reflink reports a file that may share blocks with others.
func (in *Inode) Reflink() bool { return in.Flags2&flag2Reflink != 0 }

// bigtimeOffset is the seconds from the bigtime epoch (the lowest 32-bit
// time, 1901-12-13T20:45:52Z) to the Unix epoch.
const bigtimeOffset = 1 << 31

func (f *FS) timestamp(b []byte, big bool) time.Time {
	if big {
		ns := be64(b, 0)
		return time.Unix(int64(ns/1e9)-bigtimeOffset, int64(ns%1e9)).UTC()
	}
	return time.Unix(int64(int32(be32(b, 0))), int64(be32(b, 4))).UTC()
}

// InodeOffset returns the byte offset of inode ino on the volume, or false
// when ino cannot be an inode of this filesystem.
func (f *FS) InodeOffset(ino uint64) (int64, bool) {
	ag := ino >> f.inoBits
	agino := ino & (1<<f.inoBits - 1)
	agbno := agino >> f.sb.InoPBLog
	if ag >= uint64(f.sb.AGCount) || agbno >= f.agLen(uint32(ag)) || agino == 0 && ag == 0 {
		return 0, false
	}
	slot := agino & (1<<f.sb.InoPBLog - 1)
	return (int64(ag)*int64(f.sb.AGBlocks)+int64(agbno))*f.bs + int64(slot)*int64(f.sb.InodeSize), true
}

// InodeNumber returns the inode number of the slot at byte offset off of
// the volume (the inverse of InodeOffset).
func (f *FS) InodeNumber(off int64) uint64 {
	blk := uint64(off / f.bs)
	ag := blk / uint64(f.sb.AGBlocks)
	agbno := blk % uint64(f.sb.AGBlocks)
	slot := uint64(off%f.bs) / uint64(f.sb.InodeSize)
	return ag<<f.inoBits | agbno<<f.sb.InoPBLog | slot
}

func inoErr(ino uint64, off int64, format string, args ...any) error {
	return vmerr.Corrupt(ErrCorrupt, fmt.Sprintf("xfs inode %d", ino), off, format, args...)
}

// Inode reads and checks inode ino.
func (f *FS) Inode(ino uint64) (*Inode, error) {
	off, ok := f.InodeOffset(ino)
	if !ok {
		return nil, inoErr(ino, -1, "no such inode number")
	}
	b := make([]byte, f.sb.InodeSize)
	if err := f.readAt(b, off); err != nil {
		return nil, err
	}
	return f.parseInode(ino, off, b)
}

// RawInode returns the bytes of inode ino's slot.
func (f *FS) RawInode(ino uint64) ([]byte, error) {
	off, ok := f.InodeOffset(ino)
	if !ok {
		return nil, inoErr(ino, -1, "no such inode number")
	}
	b := make([]byte, f.sb.InodeSize)
	return b, f.readAt(b, off)
}

// ParseInode decodes the raw slot b of inode ino (as RawInode returns it).
func (f *FS) ParseInode(ino uint64, b []byte) (*Inode, error) {
	off, _ := f.InodeOffset(ino)
	return f.parseInode(ino, off, b)
}

func (f *FS) parseInode(ino uint64, off int64, b []byte) (*Inode, error) {
	if len(b) < int(f.sb.InodeSize) {
		return nil, inoErr(ino, off, "short slot of %d bytes", len(b))
	}
	b = b[:f.sb.InodeSize]
	if be16(b, 0) != inodeMagic {
		return nil, inoErr(ino, off, "bad magic %#x", be16(b, 0))
	}
	in := &Inode{Ino: ino, off: off, Mode: be16(b, 2), Version: b[4], Format: b[5],
		Uid: be32(b, 8), Gid: be32(b, 12), Nlink: be32(b, 16),
		ProjID: uint32(be16(b, 20)) | uint32(be16(b, 22))<<16,
		Size:   be64(b, 56), NBlocks: be64(b, 64), ForkOff: b[82], AFormat: b[83],
		Flags: be16(b, 90), Generation: be32(b, 92)}
	switch {
	case f.sb.CRC() && in.Version != 3:
		return nil, inoErr(ino, off, "version %d on a v5 filesystem", in.Version)
	case in.Version == 1:
		in.Nlink = uint32(be16(b, 6))
	case in.Version != 2 && in.Version != 3:
		return nil, inoErr(ino, off, "version %d", in.Version)
	}
	if in.Version == 3 {
		if !crcOK(b, 100) {
			return nil, inoErr(ino, off, "CRC mismatch")
		}
		if got := be64(b, 152); got != ino {
			return nil, inoErr(ino, off, "records inode number %d", got)
		}
		in.Flags2 = be64(b, 120)
	}
	big := in.Flags2&flag2Bigtime != 0
	in.Atime, in.Mtime, in.Ctime = f.timestamp(b[32:], big), f.timestamp(b[40:], big), f.timestamp(b[48:], big)
	if in.Version == 3 {
		in.Crtime, in.HasCrtime = f.timestamp(b[144:], big), true
	}
	if in.Flags2&flag2Nrext64 != 0 {
		in.NExtents, in.ANExtents = be64(b, 24), uint64(be32(b, 76))
	} else {
		in.NExtents, in.ANExtents = uint64(be32(b, 76)), uint64(be16(b, 80))
	}
	core := 100
	if in.Version == 3 {
		core = 176
	}
	lit := b[core:]
	if in.ForkOff != 0 {
		fo := int(in.ForkOff) * 8
		if fo >= len(lit) {
			return nil, inoErr(ino, off+82, "attribute fork offset %d past the %d-byte literal area", fo, len(lit))
		}
		in.attr = lit[fo:]
		lit = lit[:fo]
	}
	in.data = lit
	if in.Mode == 0 {
		return in, nil // a free slot
	}
	switch in.Format {
	case fmtDev:
		if len(lit) >= 4 {
			in.Rdev = be32(lit, 0)
		}
	case fmtLocal:
		if in.Size > uint64(len(lit)) {
			return nil, inoErr(ino, off+56, "local fork of %d bytes holds only %d", in.Size, len(lit))
		}
	case fmtExtents:
		if in.NExtents > uint64(len(lit))/16 {
			return nil, inoErr(ino, off+76, "%d extents do not fit the %d-byte fork", in.NExtents, len(lit))
		}
	case fmtBtree:
	default:
		return nil, vmerr.Corrupt(ErrUnsupported, fmt.Sprintf("xfs inode %d", ino), off+5, "data fork format %d", in.Format)
	}
	return in, nil
}

// Extent is one mapping of a file's data fork: Len blocks from file block
// Logical at volume block Physical (linear: byte offset / block size).
type Extent struct {
	Logical   uint64
	Physical  uint64
	Len       uint64
	Unwritten bool
}

// decodeRec decodes a 16-byte bmbt record.
func decodeRec(b []byte) (off, fsb, n uint64, unwritten bool) {
	l0, l1 := be64(b, 0), be64(b, 8)
	unwritten = l0>>63 != 0
	off = (l0 & (1<<63 - 1)) >> 9
	fsb = (l0&(1<<9-1))<<43 | l1>>21
	n = l1 & (1<<21 - 1)
	return
}

// forkMap is a fork's extents and the B+tree blocks that map them.
type forkMap struct {
	ext  []Extent
	meta []uint64 // B+tree blocks (linear)
}

type bmapWalk struct {
	f     *FS
	ino   uint64
	m     *forkMap
	next  uint64 // the lowest file block the next extent may start at
	seen  map[uint64]bool
	limit uint64
}

// add appends a record, checking order, overlap and bounds.
func (w *bmapWalk) add(b []byte, where string, off int64) error {
	lo, fsb, n, unwritten := decodeRec(b)
	if n == 0 {
		return inoErr(w.ino, off, "%s: empty extent", where)
	}
	if lo < w.next {
		return inoErr(w.ino, off, "%s: extent at file block %d overlaps or is out of order (next free %d)", where, lo, w.next)
	}
	if lo+n > 1<<54 {
		return inoErr(w.ino, off, "%s: extent past the largest file offset", where)
	}
	first, ok1 := w.f.Linear(fsb)
	last, ok2 := w.f.Linear(fsb + n - 1)
	if !ok1 || !ok2 || last-first != n-1 {
		return inoErr(w.ino, off, "%s: extent of %d blocks at block %d is outside the filesystem or crosses an AG", where, n, fsb)
	}
	if uint64(len(w.m.ext)) >= w.limit {
		return inoErr(w.ino, off, "%s: more than %d extents", where, w.limit)
	}
	w.m.ext = append(w.m.ext, Extent{Logical: lo, Physical: first, Len: n, Unwritten: unwritten})
	w.next = lo + n
	return nil
}

// mapFork reads the data fork's extents (extent or B+tree format).
func (f *FS) mapFork(in *Inode) (*forkMap, error) {
	if in.Realtime() {
		return nil, vmerr.Corrupt(ErrUnsupported, fmt.Sprintf("xfs inode %d", in.Ino), in.off+90, "realtime file (data on the realtime device)")
	}
	return f.mapForkBytes(in, in.Format, in.data, in.NExtents, in.off+int64(f.coreSize), "data fork")
}

// mapAttrFork reads the attribute fork's extents (remote attribute
// values and attribute blocks), or nothing for an attribute fork in the
// inode.
func (f *FS) mapAttrFork(in *Inode) (*forkMap, error) {
	if in.attr == nil {
		return &forkMap{}, nil
	}
	lit := in.off + int64(f.coreSize) + int64(in.ForkOff)*8
	return f.mapForkBytes(in, in.AFormat, in.attr, in.ANExtents, lit, "attribute fork")
}

func (f *FS) mapForkBytes(in *Inode, format uint8, d []byte, next uint64, lit int64, which string) (*forkMap, error) {
	m := &forkMap{}
	w := &bmapWalk{f: f, ino: in.Ino, m: m, limit: min(next, maxExtents)}
	switch format {
	case fmtExtents:
		if next > maxExtents || next*16 > uint64(len(d)) {
			return nil, inoErr(in.Ino, lit, "%s: %d extents in %d bytes", which, next, len(d))
		}
		for i := 0; i < int(next); i++ {
			if err := w.add(d[i*16:], which+" extent list", lit+int64(i*16)); err != nil {
				return nil, err
			}
		}
	case fmtBtree:
		if len(d) < 4 {
			return nil, inoErr(in.Ino, lit, "%s: B+tree root in %d bytes", which, len(d))
		}
		level, nrecs := int(be16(d, 0)), int(be16(d, 2))
		maxr := (len(d) - 4) / 16
		if level == 0 || level > maxLevels || nrecs == 0 || nrecs > maxr {
			return nil, inoErr(in.Ino, lit, "%s: B+tree root: level %d, %d records (at most %d)", which, level, nrecs, maxr)
		}
		if next > maxExtents {
			return nil, inoErr(in.Ino, lit, "%s: %d extents", which, next)
		}
		w.seen = map[uint64]bool{}
		for i := 0; i < nrecs; i++ {
			ptr := be64(d, 4+maxr*8+i*8)
			if err := w.node(ptr, level-1); err != nil {
				return nil, err
			}
		}
		if uint64(len(m.ext)) != next {
			return nil, inoErr(in.Ino, lit, "%s: B+tree holds %d extents, the inode says %d", which, len(m.ext), next)
		}
	}
	return m, nil
}

// node reads B+tree block fsb, which must be at level want.
func (w *bmapWalk) node(fsb uint64, want int) error {
	f := w.f
	lin, ok := f.Linear(fsb)
	if !ok {
		return inoErr(w.ino, -1, "B+tree pointer to block %d outside the filesystem", fsb)
	}
	if w.seen[lin] {
		return inoErr(w.ino, int64(lin)*f.bs, "B+tree block %d reached twice (a loop)", lin)
	}
	w.seen[lin] = true
	w.m.meta = append(w.m.meta, lin)
	b := make([]byte, f.bs)
	off := int64(lin) * f.bs
	if err := f.readAt(b, off); err != nil {
		return err
	}
	hdr := 24
	magic := uint32(bmbtMagicV4)
	if f.sb.CRC() {
		hdr, magic = 72, bmbtMagicV5
	}
	where := fmt.Sprintf("B+tree block %d", lin)
	if be32(b, 0) != magic {
		return inoErr(w.ino, off, "%s: bad magic %#x", where, be32(b, 0))
	}
	if f.sb.CRC() {
		if !crcOK(b, 64) {
			return inoErr(w.ino, off, "%s: CRC mismatch", where)
		}
		if be64(b, 56) != w.ino {
			return inoErr(w.ino, off, "%s: owned by inode %d", where, be64(b, 56))
		}
	}
	level, nrecs := int(be16(b, 4)), int(be16(b, 6))
	if level != want {
		return inoErr(w.ino, off, "%s: level %d, expected %d", where, level, want)
	}
	maxr := (len(b) - hdr) / 16
	if nrecs == 0 || nrecs > maxr {
		return inoErr(w.ino, off, "%s: %d records (at most %d)", where, nrecs, maxr)
	}
	if level == 0 {
		for i := 0; i < nrecs; i++ {
			if err := w.add(b[hdr+i*16:], where, off+int64(hdr+i*16)); err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i < nrecs; i++ {
		ptr := be64(b, hdr+maxr*8+i*8)
		if err := w.node(ptr, level-1); err != nil {
			return err
		}
	}
	return nil
}

// Extents returns the data fork's extents of inode ino (nil for local and
// device forks), in file order.
func (f *FS) Extents(ino uint64) ([]Extent, error) {
	in, err := f.Inode(ino)
	if err != nil {
		return nil, err
	}
	m, err := f.mapFork(in)
	if err != nil {
		return nil, err
	}
	return m.ext, nil
}

// AttrBlockMap returns the attribute fork's extents of in (attribute
// blocks and remote values) and the volume blocks of its B+tree.
func (f *FS) AttrBlockMap(in *Inode) ([]Extent, []uint64, error) {
	m, err := f.mapAttrFork(in)
	if err != nil {
		return nil, nil, err
	}
	return m.ext, m.meta, nil
}

// BlockMap returns the data fork's extents of in and the volume blocks of
// its B+tree (nil for extent format).
func (f *FS) BlockMap(in *Inode) ([]Extent, []uint64, error) {
	m, err := f.mapFork(in)
	if err != nil {
		return nil, nil, err
	}
	return m.ext, m.meta, nil
}
