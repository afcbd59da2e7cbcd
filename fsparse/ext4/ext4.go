// Package ext4 is a read-only parser for ext2, ext3 and ext4 filesystems,
// written for forensic use on untrusted disk images.
//
// Scope: the superblock and group descriptors (32- and 64-byte, meta_bg,
// flex_bg), inodes of 128 bytes and more (nanosecond and crtime fields when
// the extra size covers them), extent trees of any depth up to 5, legacy
// direct/indirect/double/triple block maps, sparse files and unwritten
// extents (read as zeros), inline data (files, directories and symlinks),
// fast and slow symlinks, linear and htree directories (htree directories are
// read linearly, as debugfs lists them) and the metadata_csum dirent tail.
// Checksums are never required and not verified. The journal is not replayed:
// the parser shows the on-disk state (needs_recovery is accepted).
//
// Invariants:
//   - Nothing is ever written: the image is only read through the io.ReaderAt
//     given to Open.
//   - Every count, offset and length read from the image is bounded before it
//     is used: inode numbers are within 1..InodesCount, block numbers below
//     BlocksCount, extent trees at most 5 deep with checked headers, each
//     metadata block visited at most once per file, directory records
//     checked (rec_len >= 12, 4-aligned, inside the block, name_len fits),
//     file sizes within what the mapping scheme can address. No allocation is
//     sized by an untrusted field without a cap, and no loop is unbounded.
//   - Structural errors wrap ErrCorrupt and name the structure, the inode and
//     the block; a bad superblock magic is ErrNotExt; an INCOMPAT feature
//     that changes the on-disk format and is not understood is
//     ErrUnsupported. One bad file does not stop reading the others.
//   - An *FS is immutable after Open and safe for concurrent use; a *File's
//     ReadAt is safe for concurrent use, its Read/Seek/ReadDir are not.
//
// *FS implements fs.FS, fs.ReadDirFS, fs.StatFS and fs.ReadLinkFS. Open and
// Stat follow no symlinks, not even at the last path element: Stat is the
// same as Lstat, and opening a symlink yields a file whose content is the
// link target. That is what a forensic tool wants (a link inside an image
// must never be resolved against anything but the image, and the link itself
// is the evidence). FileInfo.Sys returns the *Inode.
package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/vmscope/vmscope/vmerr"
	"io"
	"time"
)

// Error categories. Every error returned by this package for a structural
// problem wraps one of them.
var (
	ErrNotExt      = errors.New("ext4: not an ext2/3/4 filesystem")
	ErrCorrupt     = vmerr.New("ext4: corrupt filesystem", vmerr.ErrCorrupt)
	ErrUnsupported = vmerr.New("ext4: unsupported feature", vmerr.ErrUnsupported)
	// ErrNotDir is returned (inside an *fs.PathError) when a path element
	// that must be a directory is not one.
	ErrNotDir = errors.New("ext4: not a directory")
)

const (
	superOffset = 1024
	superMagic  = 0xEF53

	rootIno = 2

	// maxExtents caps the number of extents of one file's block map (32 bytes
	// each): a hostile tree can not make us allocate more than 128 MiB.
	maxExtents = 1 << 22
	// maxGroups caps the group-descriptor table in memory.
	maxGroups = 1 << 24
)

// Feature bits.
const (
	compatHasJournal = 0x4

	incompatCompression = 0x1
	incompatFiletype    = 0x2
	incompatRecover     = 0x4
	incompatJournalDev  = 0x8
	incompatMetaBG      = 0x10
	incompatExtents     = 0x40
	incompat64bit       = 0x80
	incompatMMP         = 0x100
	incompatFlexBG      = 0x200
	incompatEAInode     = 0x400
	incompatDirdata     = 0x1000
	incompatCsumSeed    = 0x2000
	incompatLargedir    = 0x4000
	incompatInlineData  = 0x8000
	incompatEncrypt     = 0x10000
	incompatCasefold    = 0x20000

	rocompatSparseSuper  = 0x1
	rocompatLargeFile    = 0x2
	rocompatBtreeDir     = 0x4
	rocompatHugeFile     = 0x8
	rocompatBigalloc     = 0x200
	rocompatGdtCsum      = 0x10
	rocompatMetadataCsum = 0x400

	// bgInodeUninit: the group's inode table was never initialised.
	bgInodeUninit = 0x1

	// incompatSupported are the INCOMPAT features this reader understands.
	// encrypt and casefold do not change how blocks are found: encrypted
	// files read as their ciphertext and casefolded names are matched
	// exactly.
	incompatSupported = incompatFiletype | incompatRecover | incompatMetaBG |
		incompatExtents | incompat64bit | incompatMMP | incompatFlexBG |
		incompatEAInode | incompatCsumSeed | incompatLargedir |
		incompatInlineData | incompatEncrypt | incompatCasefold
)

// Superblock is the decoded primary superblock.
type Superblock struct {
	BlockSize        int
	InodesCount      uint32
	BlocksCount      uint64
	ReservedBlocks   uint64
	FreeBlocks       uint64
	FreeInodes       uint32
	FirstDataBlock   uint32
	InodeSize        int
	BlocksPerGroup   uint32
	InodesPerGroup   uint32
	ClustersPerGrp   uint32
	Label            string
	UUID             [16]byte
	LastMounted      string
	FeatureCompat    uint32
	FeatureIncompat  uint32
	FeatureROCompat  uint32
	Rev              uint32
	MinorRev         uint16
	FirstIno         uint32
	State            uint16
	Errors           uint16
	CreatorOS        uint32
	MountCount       uint16
	MaxMountCount    uint16
	DescSize         int // group descriptor size in bytes: 32, or s_desc_size with 64bit
	FirstMetaBG      uint32
	LogGroupsPerFlex uint8
	JournalInum      uint32
	JournalUUID      [16]byte
	LastOrphan       uint32
	MinExtraIsize    uint16
	WantExtraIsize   uint16
	DefHashVersion   uint8
	HashSeed         [16]byte
	BackupBGs        [2]uint32 // sparse_super2: the groups holding backups
	// Times; the zero time.Time when the on-disk field is 0.
	Mtime     time.Time // last mount
	Wtime     time.Time // last write
	MkfsTime  time.Time
	LastCheck time.Time
}

func le16(b []byte, off int) uint16 { return binary.LittleEndian.Uint16(b[off:]) }
func le32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func sbTime(lo uint32, hi uint8) time.Time {
	if lo == 0 && hi == 0 {
		return time.Time{}
	}
	return time.Unix(int64(lo)|int64(hi)<<32, 0).UTC()
}

// parseSuperblock decodes and checks a 1024-byte superblock.
func parseSuperblock(b []byte) (*Superblock, error) {
	if len(b) < 1024 {
		return nil, fmt.Errorf("ext4: superblock short: %w", ErrNotExt)
	}
	if le16(b, 0x38) != superMagic {
		return nil, fmt.Errorf("ext4: superblock magic %#04x at byte %d: %w", le16(b, 0x38), superOffset+0x38, ErrNotExt)
	}
	s := &Superblock{
		InodesCount:      le32(b, 0x0),
		BlocksCount:      uint64(le32(b, 0x4)),
		ReservedBlocks:   uint64(le32(b, 0x8)),
		FreeBlocks:       uint64(le32(b, 0xC)),
		FreeInodes:       le32(b, 0x10),
		FirstDataBlock:   le32(b, 0x14),
		BlocksPerGroup:   le32(b, 0x20),
		ClustersPerGrp:   le32(b, 0x24),
		InodesPerGroup:   le32(b, 0x28),
		MountCount:       le16(b, 0x34),
		MaxMountCount:    le16(b, 0x36),
		State:            le16(b, 0x3A),
		Errors:           le16(b, 0x3C),
		MinorRev:         le16(b, 0x3E),
		CreatorOS:        le32(b, 0x48),
		Rev:              le32(b, 0x4C),
		FeatureCompat:    le32(b, 0x5C),
		FeatureIncompat:  le32(b, 0x60),
		FeatureROCompat:  le32(b, 0x64),
		Label:            cstring(b[0x78:0x88]),
		LastMounted:      cstring(b[0x88:0xC8]),
		JournalInum:      le32(b, 0xE0),
		LastOrphan:       le32(b, 0xE8),
		DefHashVersion:   b[0xFC],
		FirstMetaBG:      le32(b, 0x104),
		MinExtraIsize:    le16(b, 0x15C),
		WantExtraIsize:   le16(b, 0x15E),
		LogGroupsPerFlex: b[0x174],
		Mtime:            sbTime(le32(b, 0x2C), b[0x275]),
		Wtime:            sbTime(le32(b, 0x30), b[0x274]),
		LastCheck:        sbTime(le32(b, 0x40), b[0x277]),
		MkfsTime:         sbTime(le32(b, 0x108), b[0x276]),
	}
	copy(s.UUID[:], b[0x68:0x78])
	copy(s.JournalUUID[:], b[0xD0:0xE0])
	copy(s.HashSeed[:], b[0xEC:0xFC])
	s.BackupBGs = [2]uint32{le32(b, 0x24C), le32(b, 0x250)}

	logBS := le32(b, 0x18)
	if logBS > 6 {
		return nil, fmt.Errorf("ext4: superblock: log block size %d (max 64 KiB): %w", logBS, ErrCorrupt)
	}
	s.BlockSize = 1024 << logBS
	if s.FeatureIncompat&incompat64bit != 0 {
		s.BlocksCount |= uint64(le32(b, 0x150)) << 32
		s.ReservedBlocks |= uint64(le32(b, 0x154)) << 32
		s.FreeBlocks |= uint64(le32(b, 0x158)) << 32
		ds := int(le16(b, 0xFE))
		if ds < 64 || ds > 1024 || ds&(ds-1) != 0 || ds > s.BlockSize {
			return nil, fmt.Errorf("ext4: superblock: group descriptor size %d: %w", ds, ErrCorrupt)
		}
		s.DescSize = ds
	} else {
		s.DescSize = 32
	}
	if s.Rev == 0 {
		s.InodeSize = 128
		s.FirstIno = 11
	} else {
		s.InodeSize = int(le16(b, 0x58))
		s.FirstIno = le32(b, 0x54)
		if s.InodeSize < 128 || s.InodeSize > s.BlockSize || s.InodeSize&(s.InodeSize-1) != 0 {
			return nil, fmt.Errorf("ext4: superblock: inode size %d: %w", s.InodeSize, ErrCorrupt)
		}
	}
	if unk := s.FeatureIncompat &^ incompatSupported; unk != 0 {
		return nil, fmt.Errorf("ext4: superblock: incompat features %v (%#x): %w",
			featureNames(1, unk), unk, ErrUnsupported)
	}
	switch {
	case s.BlocksCount == 0:
		return nil, fmt.Errorf("ext4: superblock: zero blocks: %w", ErrCorrupt)
	case s.InodesCount < rootIno:
		return nil, fmt.Errorf("ext4: superblock: %d inodes: %w", s.InodesCount, ErrCorrupt)
	case s.InodesPerGroup == 0 || s.InodesPerGroup > uint32(8*s.BlockSize):
		return nil, fmt.Errorf("ext4: superblock: %d inodes per group: %w", s.InodesPerGroup, ErrCorrupt)
	case s.BlocksPerGroup == 0:
		return nil, fmt.Errorf("ext4: superblock: %d blocks per group: %w", s.BlocksPerGroup, ErrCorrupt)
	case s.FeatureROCompat&rocompatBigalloc == 0 && s.BlocksPerGroup > uint32(8*s.BlockSize):
		return nil, fmt.Errorf("ext4: superblock: %d blocks per group: %w", s.BlocksPerGroup, ErrCorrupt)
	case uint64(s.FirstDataBlock) >= s.BlocksCount || s.FirstDataBlock > 1:
		return nil, fmt.Errorf("ext4: superblock: first data block %d: %w", s.FirstDataBlock, ErrCorrupt)
	case s.BlocksCount > 1<<48:
		return nil, fmt.Errorf("ext4: superblock: %d blocks: %w", s.BlocksCount, ErrCorrupt)
	}
	return s, nil
}

// Kind names the filesystem the way blkid does: "ext4" when any feature
// beyond what ext3 knows is set, else "ext3" with a journal, else "ext2".
func (s *Superblock) Kind() string {
	const ext3Incompat = incompatFiletype | incompatRecover | incompatMetaBG
	const ext3ROCompat = rocompatSparseSuper | rocompatLargeFile | rocompatBtreeDir
	if s.FeatureIncompat&^ext3Incompat != 0 || s.FeatureROCompat&^ext3ROCompat != 0 {
		return "ext4"
	}
	if s.FeatureCompat&compatHasJournal != 0 {
		return "ext3"
	}
	return "ext2"
}

// UUIDString formats the filesystem UUID as 8-4-4-4-12 lowercase hex.
func (s *Superblock) UUIDString() string {
	u := s.UUID
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

var featureTable = [3][32]string{
	{ // compat
		0: "dir_prealloc", 1: "imagic_inodes", 2: "has_journal", 3: "ext_attr",
		4: "resize_inode", 5: "dir_index", 6: "lazy_bg", 7: "snapshot_bitmap",
		8: "exclude_bitmap", 9: "sparse_super2", 10: "fast_commit",
		11: "stable_inodes", 12: "orphan_file",
	},
	{ // incompat
		0: "compression", 1: "filetype", 2: "needs_recovery", 3: "journal_dev",
		4: "meta_bg", 6: "extent", 7: "64bit", 8: "mmp", 9: "flex_bg",
		10: "ea_inode", 12: "dirdata", 13: "metadata_csum_seed",
		14: "large_dir", 15: "inline_data", 16: "encrypt", 17: "casefold",
	},
	{ // ro_compat
		0: "sparse_super", 1: "large_file", 3: "huge_file", 4: "uninit_bg",
		5: "dir_nlink", 6: "extra_isize", 7: "snapshot", 8: "quota",
		9: "bigalloc", 10: "metadata_csum", 11: "replica", 12: "read-only",
		13: "project", 14: "shared_blocks", 15: "verity", 16: "orphan_present",
	},
}

var featurePrefix = [3]string{"FEATURE_C", "FEATURE_I", "FEATURE_R"}

func featureNames(kind int, mask uint32) []string {
	var out []string
	for j := 0; j < 32; j++ {
		if mask&(1<<j) == 0 {
			continue
		}
		if n := featureTable[kind][j]; n != "" {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("%s%d", featurePrefix[kind], j))
		}
	}
	return out
}

// Features lists the feature names as e2fsprogs spells them, in the order
// dumpe2fs prints them: compat, then incompat, then ro_compat features, each
// by ascending bit. Unknown bits print as FEATURE_C12, FEATURE_I31, ...
func (s *Superblock) Features() []string {
	var out []string
	out = append(out, featureNames(0, s.FeatureCompat)...)
	out = append(out, featureNames(1, s.FeatureIncompat)...)
	out = append(out, featureNames(2, s.FeatureROCompat)...)
	return out
}

// FS is an opened filesystem. It is immutable and safe for concurrent use.
type FS struct {
	r      io.ReaderAt
	size   int64
	sb     *Superblock
	bs     uint64
	ngroup uint32
	// itable is the first block of each group's inode table.
	itable []uint64
	// itUsed is the number of inode slots of each group that may hold an
	// inode: all of them, or fewer when the group descriptors' checksums
	// vouch for bg_itable_unused and the INODE_UNINIT flag.
	itUsed []uint32
	// ibitmap and bbitmap are each group's inode and block bitmap blocks
	// (0 when out of range), bgFlags its bg_flags.
	ibitmap, bbitmap []uint64
	bgFlags          []uint16
	// tables, in a view made by WithInodeTables, holds the inode tables
	// and inode bitmaps in memory.
	tables *inodeTables
}

// Open reads the superblock at byte 1024 of r and the group descriptor
// table. size is the byte size of the filesystem's device or partition.
func Open(r io.ReaderAt, size int64) (*FS, error) {
	if size < superOffset+1024 {
		return nil, fmt.Errorf("ext4: device of %d bytes too small: %w", size, ErrNotExt)
	}
	buf := make([]byte, 1024)
	if _, err := r.ReadAt(buf, superOffset); err != nil {
		return nil, fmt.Errorf("ext4: reading superblock: %w", err)
	}
	sb, err := parseSuperblock(buf)
	if err != nil {
		return nil, err
	}
	f := &FS{r: r, size: size, sb: sb, bs: uint64(sb.BlockSize)}
	ng := (sb.BlocksCount - uint64(sb.FirstDataBlock) + uint64(sb.BlocksPerGroup) - 1) / uint64(sb.BlocksPerGroup)
	// The descriptor table must fit on the device: that bounds ng by the
	// device size, whatever the superblock says.
	if ng == 0 || ng > maxGroups || ng*uint64(sb.DescSize) > uint64(size) {
		return nil, fmt.Errorf("ext4: superblock: %d groups for a %d-byte device: %w", ng, size, ErrCorrupt)
	}
	f.ngroup = uint32(ng)
	if uint64(sb.InodesCount) > ng*uint64(sb.InodesPerGroup) {
		return nil, fmt.Errorf("ext4: superblock: %d inodes > %d groups × %d: %w", sb.InodesCount, ng, sb.InodesPerGroup, ErrCorrupt)
	}
	if err := f.loadGroups(); err != nil {
		return nil, err
	}
	return f, nil
}

// Super returns the superblock. The caller must not modify it.
func (f *FS) Super() *Superblock { return f.sb }

// groupHasSuper reports whether group g holds a superblock backup (and so
// the group descriptor table backup), as ext2fs_bg_has_super.
func (f *FS) groupHasSuper(g uint64) bool {
	if g == 0 {
		return true
	}
	if f.sb.FeatureCompat&0x200 != 0 { // sparse_super2: backups in s_backup_bgs only
		return g == uint64(f.sb.BackupBGs[0]) || g == uint64(f.sb.BackupBGs[1])
	}
	if f.sb.FeatureROCompat&rocompatSparseSuper == 0 {
		return true
	}
	if g <= 1 {
		return true
	}
	if g&1 == 0 {
		return false
	}
	for _, p := range []uint64{3, 5, 7} {
		n := g
		for n%p == 0 {
			n /= p
		}
		if n == 1 {
			return true
		}
	}
	return false
}

// descBlock returns the block holding descriptor block i, as
// ext2fs_descriptor_block_loc2 for the primary copy.
func (f *FS) descBlock(i uint64) uint64 {
	first := uint64(f.sb.FirstDataBlock)
	if f.sb.FeatureIncompat&incompatMetaBG == 0 || i < uint64(f.sb.FirstMetaBG) {
		return first + 1 + i
	}
	perBlock := f.bs / uint64(f.sb.DescSize)
	g := perBlock * i
	blk := first + g*uint64(f.sb.BlocksPerGroup)
	if f.groupHasSuper(g) {
		blk++
	}
	return blk
}

func (f *FS) loadGroups() error {
	sb := f.sb
	ds := uint64(sb.DescSize)
	perBlock := f.bs / ds
	nblocks := (uint64(f.ngroup) + perBlock - 1) / perBlock
	f.itable = make([]uint64, f.ngroup)
	f.itUsed = make([]uint32, f.ngroup)
	f.ibitmap = make([]uint64, f.ngroup)
	f.bbitmap = make([]uint64, f.ngroup)
	f.bgFlags = make([]uint16, f.ngroup)
	csum := sb.FeatureROCompat&(rocompatGdtCsum|rocompatMetadataCsum) != 0
	buf := make([]byte, f.bs)
	var g uint64
	for i := uint64(0); i < nblocks; i++ {
		blk := f.descBlock(i)
		if err := f.readBlocks(buf, blk); err != nil {
			return fmt.Errorf("ext4: group descriptor block %d at block %d: %w", i, blk, err)
		}
		for j := uint64(0); j < perBlock && g < uint64(f.ngroup); j, g = j+1, g+1 {
			d := buf[j*ds : (j+1)*ds]
			it := uint64(le32(d, 0x8))
			if ds >= 64 {
				it |= uint64(le32(d, 0x28)) << 32
			}
			// The inode table must lie inside the filesystem.
			tblocks := (uint64(sb.InodesPerGroup)*uint64(sb.InodeSize) + f.bs - 1) / f.bs
			if it == 0 || it >= sb.BlocksCount || tblocks > sb.BlocksCount-it {
				return fmt.Errorf("ext4: group descriptor %d at block %d: inode table at block %d: %w", g, blk, it, ErrCorrupt)
			}
			f.itable[g] = it
			bb, ib := uint64(le32(d, 0x0)), uint64(le32(d, 0x4))
			if ds >= 64 {
				bb |= uint64(le32(d, 0x20)) << 32
				ib |= uint64(le32(d, 0x24)) << 32
			}
			if bb < sb.BlocksCount {
				f.bbitmap[g] = bb
			}
			if ib < sb.BlocksCount {
				f.ibitmap[g] = ib
			}
			f.bgFlags[g] = le16(d, 0x12)
			f.itUsed[g] = sb.InodesPerGroup
			if csum {
				unused := uint32(le16(d, 0x1C))
				if ds >= 64 {
					unused |= uint32(le16(d, 0x32)) << 16
				}
				switch {
				case le16(d, 0x12)&bgInodeUninit != 0:
					f.itUsed[g] = 0
				case unused <= sb.InodesPerGroup:
					f.itUsed[g] = sb.InodesPerGroup - unused
				}
			}
		}
	}
	return nil
}

// Group is where one block group keeps its inodes.
type Group struct {
	InodeTable       uint64 // first block of the inode table
	InodeTableBlocks uint64
	// UsedInodes is how many slots from the start of the table may hold an
	// inode (bg_itable_unused, trusted only under group descriptor
	// checksums); the rest have never been used.
	UsedInodes uint32
}

// Groups describes every block group's inode table, as the group
// descriptors say (each checked to lie inside the filesystem at Open).
func (f *FS) Groups() []Group {
	tblocks := (uint64(f.sb.InodesPerGroup)*uint64(f.sb.InodeSize) + f.bs - 1) / f.bs
	out := make([]Group, len(f.itable))
	for i, it := range f.itable {
		out[i] = Group{InodeTable: it, InodeTableBlocks: tblocks, UsedInodes: f.itUsed[i]}
	}
	return out
}

// readBlocks fills p from the device starting at block blk. The range must
// lie inside the filesystem; a short read is a corrupt (truncated) image.
func (f *FS) readBlocks(p []byte, blk uint64) error {
	n := (uint64(len(p)) + f.bs - 1) / f.bs
	if blk >= f.sb.BlocksCount || n > f.sb.BlocksCount-blk {
		return fmt.Errorf("block %d+%d beyond %d blocks: %w", blk, n, f.sb.BlocksCount, ErrCorrupt)
	}
	return f.readAt(p, int64(blk*f.bs))
}

// directReader is a device that can read past its small-read cache
// (disk.Image.ReadAtDirect).
type directReader interface {
	ReadAtDirect(p []byte, off int64) (int, error)
}

// readAtDirect is readAt for a read made once: through the
// sections the device is made of (io.SectionReader), when it lies whole
// in each, to a directReader below them; else, and below anything else,
// readAt.
func (f *FS) readAtDirect(p []byte, off int64) error {
	r, at := f.r, off
	// Each step unwraps one section: the chain is finite.
	for {
		s, ok := r.(*io.SectionReader)
		if !ok {
			break
		}
		outer, base, n := s.Outer()
		if at < 0 || at > n || int64(len(p)) > n-at {
			return f.readAt(p, off)
		}
		r, at = outer, base+at
	}
	d, ok := r.(directReader)
	if !ok {
		return f.readAt(p, off)
	}
	if n, _ := d.ReadAtDirect(p, at); n == len(p) {
		return nil
	}
	return f.readAt(p, off) // the error as readAt gives it
}

// readBlocksDirect is readBlocks for a read made once (a directory run):
// past the device's small-read cache when it has one (readAtDirect).
func (f *FS) readBlocksDirect(p []byte, blk uint64) error {
	n := (uint64(len(p)) + f.bs - 1) / f.bs
	if blk >= f.sb.BlocksCount || n > f.sb.BlocksCount-blk {
		return f.readBlocks(p, blk) // its error
	}
	return f.readAtDirect(p, int64(blk*f.bs))
}

func (f *FS) readAt(p []byte, off int64) error {
	n, err := f.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("short read of %d bytes at byte %d (truncated image): %w", len(p), off, ErrCorrupt)
	}
	return err
}
