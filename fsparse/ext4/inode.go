package ext4

import (
	"fmt"
	"io/fs"
	"time"
)

// Inode flags.
const (
	flagIndex      = 0x1000
	flagHugeFile   = 0x40000
	flagExtents    = 0x80000
	flagEAInode    = 0x200000
	flagInlineData = 0x10000000
)

// Mode type bits.
const (
	sIFMT   = 0xF000
	sIFIFO  = 0x1000
	sIFCHR  = 0x2000
	sIFDIR  = 0x4000
	sIFBLK  = 0x6000
	sIFREG  = 0x8000
	sIFLNK  = 0xA000
	sIFSOCK = 0xC000
)

// Inode is a decoded on-disk inode.
type Inode struct {
	Ino        uint32
	Mode       uint16
	Uid, Gid   uint32
	Size       uint64
	Links      uint16
	Flags      uint32
	Generation uint32
	Atime      time.Time
	Mtime      time.Time
	Ctime      time.Time
	Crtime     time.Time
	HasCrtime  bool
	Dtime      uint32
	// Blocks is the number of 512-byte units the inode holds (data,
	// metadata and xattr block), converted from fs blocks for huge_file
	// inodes.
	Blocks     uint64
	XattrBlock uint64 // i_file_acl: the external xattr block, 0 if none
	ExtraIsize uint16 // i_extra_isize, 0 for 128-byte inodes

	block [60]byte // i_block
	// xattr is the in-inode extended attribute area (after the extra
	// fields), nil when there is none.
	xattr []byte
}

// Inode reads inode ino (1 ≤ ino ≤ InodesCount) with one small read, or
// from memory in a view made by WithInodeTables.
func (f *FS) Inode(ino uint32) (*Inode, error) {
	in := new(Inode)
	if err := f.InodeInto(ino, in); err != nil {
		return nil, err
	}
	return in, nil
}

// InodeInto is Inode decoding into *in (all of it overwritten), for a
// caller that reads many inodes and keeps none: from the memory of a view
// made by WithInodeTables it allocates nothing (but a copy of an in-inode
// xattr area). On error *in is left unspecified.
func (f *FS) InodeInto(ino uint32, in *Inode) error {
	sb := f.sb
	if ino < 1 || ino > sb.InodesCount {
		return fmt.Errorf("ext4: inode %d out of range 1..%d: %w", ino, sb.InodesCount, ErrCorrupt)
	}
	g := (ino - 1) / sb.InodesPerGroup
	idx := (ino - 1) % sb.InodesPerGroup
	if g >= f.ngroup {
		return fmt.Errorf("ext4: inode %d in group %d of %d: %w", ino, g, f.ngroup, ErrCorrupt)
	}
	if raw := f.rawInode(g, idx); raw != nil {
		return f.parseInodeInto(in, ino, raw)
	}
	off := f.itable[g]*f.bs + uint64(idx)*uint64(sb.InodeSize)
	raw := make([]byte, sb.InodeSize)
	if err := f.readAt(raw, int64(off)); err != nil {
		return fmt.Errorf("ext4: inode %d at byte %d: %w", ino, off, err)
	}
	return f.parseInodeInto(in, ino, raw)
}

func decodeTime(sec uint32, extra uint32, hasExtra bool) time.Time {
	s := int64(int32(sec))
	if !hasExtra {
		return time.Unix(s, 0)
	}
	s += int64(extra&3) << 32
	ns := int64(extra >> 2)
	if ns > 999999999 {
		ns = 999999999
	}
	return time.Unix(s, ns)
}

// parseInode decodes a raw inode of the filesystem's inode size. It keeps
// no reference to raw.
func (f *FS) parseInode(ino uint32, raw []byte) (*Inode, error) {
	in := new(Inode)
	if err := f.parseInodeInto(in, ino, raw); err != nil {
		return nil, err
	}
	return in, nil
}

// parseInodeInto is parseInode decoding into *in.
func (f *FS) parseInodeInto(in *Inode, ino uint32, raw []byte) error {
	sb := f.sb
	*in = Inode{
		Ino:        ino,
		Mode:       le16(raw, 0x0),
		Uid:        uint32(le16(raw, 0x2)) | uint32(le16(raw, 0x78))<<16,
		Size:       uint64(le32(raw, 0x4)) | uint64(le32(raw, 0x6C))<<32,
		Dtime:      le32(raw, 0x14),
		Gid:        uint32(le16(raw, 0x18)) | uint32(le16(raw, 0x7A))<<16,
		Links:      le16(raw, 0x1A),
		Flags:      le32(raw, 0x20),
		Generation: le32(raw, 0x64),
		XattrBlock: uint64(le32(raw, 0x68)) | uint64(le16(raw, 0x76))<<32,
	}
	copy(in.block[:], raw[0x28:0x64])
	blocks := uint64(le32(raw, 0x1C))
	if sb.FeatureROCompat&rocompatHugeFile != 0 {
		blocks |= uint64(le16(raw, 0x74)) << 32
		if in.Flags&flagHugeFile != 0 {
			blocks *= f.bs / 512
		}
	}
	in.Blocks = blocks

	var extra [6]uint32 // ctime_extra, mtime_extra, atime_extra, crtime, crtime_extra (index by offset)
	fits := func(end int) bool { return false }
	if len(raw) > 128 {
		ei := int(le16(raw, 0x80))
		if ei&3 != 0 || 128+ei > len(raw) {
			return fmt.Errorf("ext4: inode %d: extra isize %d: %w", ino, ei, ErrCorrupt)
		}
		in.ExtraIsize = uint16(ei)
		fits = func(end int) bool { return end <= 128+ei }
		for i, off := range []int{0x84, 0x88, 0x8C, 0x90, 0x94} {
			if fits(off + 4) {
				extra[i] = le32(raw, off)
			}
		}
		if x := raw[128+ei:]; len(x) >= 4 && le32(x, 0) == xattrMagic {
			in.xattr = append([]byte(nil), x...)
		}
	}
	in.Ctime = decodeTime(le32(raw, 0xC), extra[0], fits(0x88))
	in.Mtime = decodeTime(le32(raw, 0x10), extra[1], fits(0x8C))
	in.Atime = decodeTime(le32(raw, 0x8), extra[2], fits(0x90))
	if fits(0x94) {
		in.HasCrtime = true
		in.Crtime = decodeTime(extra[3], extra[4], fits(0x98))
	}
	return nil
}

// FileMode maps the mode to io/fs: type bits, permissions, setuid, setgid
// and sticky. An unknown type is fs.ModeIrregular.
func (i *Inode) FileMode() fs.FileMode {
	m := fs.FileMode(i.Mode & 0777)
	switch i.Mode & sIFMT {
	case sIFREG:
	case sIFDIR:
		m |= fs.ModeDir
	case sIFLNK:
		m |= fs.ModeSymlink
	case sIFIFO:
		m |= fs.ModeNamedPipe
	case sIFSOCK:
		m |= fs.ModeSocket
	case sIFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case sIFBLK:
		m |= fs.ModeDevice
	default:
		m |= fs.ModeIrregular
	}
	if i.Mode&04000 != 0 {
		m |= fs.ModeSetuid
	}
	if i.Mode&02000 != 0 {
		m |= fs.ModeSetgid
	}
	if i.Mode&01000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// IsDir reports whether the inode is a directory.
func (i *Inode) IsDir() bool { return i.Mode&sIFMT == sIFDIR }

// IsRegular reports whether the inode is a regular file.
func (i *Inode) IsRegular() bool { return i.Mode&sIFMT == sIFREG }

// IsSymlink reports whether the inode is a symbolic link.
func (i *Inode) IsSymlink() bool { return i.Mode&sIFMT == sIFLNK }

// HasInlineData reports whether the inode's data lives in the inode.
func (i *Inode) HasInlineData() bool { return i.Flags&flagInlineData != 0 }

// IsExtentMapped reports whether i_block holds an extent tree.
func (i *Inode) IsExtentMapped() bool { return i.Flags&flagExtents != 0 }

// isFastSymlink follows the kernel: a symlink without inline data whose
// blocks (minus an xattr block) are zero keeps its target in i_block.
func (f *FS) isFastSymlink(in *Inode) bool {
	if !in.IsSymlink() || in.HasInlineData() {
		return false
	}
	if in.Flags&flagEAInode != 0 {
		return in.Size > 0 && in.Size < 60
	}
	b := in.Blocks
	if in.XattrBlock != 0 {
		cl := f.bs / 512
		if b >= cl {
			b -= cl
		}
	}
	return b == 0 && in.Size < 60
}

const xattrMagic = 0xEA020000

// inlineData returns the bytes of an inline-data inode: i_block then the
// value of the "system.data" in-inode xattr, cut to i_size.
func (f *FS) inlineData(in *Inode) ([]byte, error) {
	size := in.Size
	if size > uint64(60+len(in.xattr)) {
		return nil, fmt.Errorf("ext4: inline data of inode %d: size %d larger than the inode: %w", in.Ino, size, ErrCorrupt)
	}
	out := make([]byte, 0, size)
	n := min(size, 60)
	out = append(out, in.block[:n]...)
	if size <= 60 {
		return out, nil
	}
	val, ok, err := in.findXattr(7, "data")
	if err != nil {
		return nil, err
	}
	if !ok || uint64(len(val)) < size-60 {
		return nil, fmt.Errorf("ext4: inline data of inode %d: system.data holds %d of %d bytes: %w", in.Ino, len(val), size-60, ErrCorrupt)
	}
	return append(out, val[:size-60]...), nil
}

// findXattr looks an attribute up in the in-inode xattr area.
func (in *Inode) findXattr(index uint8, name string) ([]byte, bool, error) {
	x := in.xattr
	if len(x) < 4 {
		return nil, false, nil
	}
	ents := x[4:]
	off := 0
	// Each entry is at least 16 bytes: the loop ends within len/16 steps.
	for off+16 <= len(ents) && le32(ents, off) != 0 {
		nl := int(ents[off])
		idx := ents[off+1]
		voff := int(le16(ents, off+2))
		vinum := le32(ents, off+4)
		vsize := le32(ents, off+8)
		if off+16+nl > len(ents) {
			return nil, false, fmt.Errorf("ext4: in-inode xattr of inode %d at offset %d: name past end: %w", in.Ino, off, ErrCorrupt)
		}
		if idx == index && string(ents[off+16:off+16+nl]) == name {
			if vinum != 0 {
				return nil, false, fmt.Errorf("ext4: in-inode xattr of inode %d: value in inode %d: %w", in.Ino, vinum, ErrUnsupported)
			}
			if uint64(voff)+uint64(vsize) > uint64(len(ents)) {
				return nil, false, fmt.Errorf("ext4: in-inode xattr of inode %d: value %d+%d past end: %w", in.Ino, voff, vsize, ErrCorrupt)
			}
			return ents[voff : voff+int(vsize)], true, nil
		}
		off += (16 + nl + 3) &^ 3
	}
	return nil, false, nil
}
