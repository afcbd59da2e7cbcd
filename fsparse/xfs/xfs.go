// Package xfs reads XFS filesystems: the v5 format (metadata CRCs checked)
// and, best-effort, v4. It follows inode forks in local, extent and B+tree
// format, lists shortform, block, leaf and node directories, reads
// symlinks, bigtime timestamps and large extent counts (nrext64), and
// gives each file's block map (the dirty-file mapper's inverse index).
// Realtime files are reported unsupported; a log that needs recovery is
// reported by LogDirty. Every structure read from the disk is bounded: tree
// depths, record counts, extents per file and directory sizes.
//
// Reference: the kernel's fs/xfs/libxfs/xfs_format.h and xfs_da_format.h,
// and the XFS Algorithms & Data Structures document.
package xfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"sync"

	"github.com/vmscope/vmscope/vmerr"
)

// Error categories: every structural error of this package wraps one.
var (
	ErrNotXFS      = errors.New("xfs: not an XFS filesystem")
	ErrCorrupt     = vmerr.New("xfs: corrupt filesystem", vmerr.ErrCorrupt)
	ErrUnsupported = vmerr.New("xfs: unsupported feature", vmerr.ErrUnsupported)
	// ErrNotDir is returned (inside an *fs.PathError) when a path element
	// that must be a directory is not one.
	ErrNotDir = errors.New("xfs: not a directory")
)

const (
	sbMagic  = 0x58465342 // "XFSB"
	agfMagic = 0x58414746 // "XAGF"
	agiMagic = 0x58414749 // "XAGI"

	// maxExtents caps one fork's extent list (24 bytes each in memory).
	maxExtents = 1 << 22
	// maxLevels caps a B+tree's height (the kernel's bmbt maximum is 9 for
	// 2^64 extents with the smallest blocks).
	maxLevels = 12
)

// Feature bits (xfs_format.h).
const (
	versionNumBits = 0x000f
	versionAttr    = 0x0010
	versionNlink   = 0x0020
	versionQuota   = 0x0040
	versionAlign   = 0x0080
	versionDAlign  = 0x0100
	versionLogV2   = 0x0400
	versionSector  = 0x0800
	versionExtFlg  = 0x1000
	versionDirV2   = 0x2000
	versionBorg    = 0x4000
	versionMore    = 0x8000

	f2LazySB  = 0x0002
	f2Attr2   = 0x0008
	f2Parent  = 0x0010
	f2ProjID  = 0x0080
	f2CRC     = 0x0100
	f2Ftype   = 0x0200
	roFinobt  = 0x1
	roRmapbt  = 0x2
	roReflink = 0x4
	roInobtCn = 0x8

	inFtype      = 0x01
	inSpinodes   = 0x02
	inMetaUUID   = 0x04
	inBigtime    = 0x08
	inNeedsRep   = 0x10
	inNrext64    = 0x20
	inExchange   = 0x40
	inParent     = 0x80
	inMetadir    = 0x100
	inSupportedV = inFtype | inSpinodes | inMetaUUID | inBigtime | inNrext64 | inExchange | inParent
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcOK checks the CRC-32C stored little-endian at off of b, computed with
// that field as zero (xfs_verify_cksum).
func crcOK(b []byte, off int) bool {
	if off+4 > len(b) {
		return false
	}
	want := binary.LittleEndian.Uint32(b[off:])
	h := crc32.Update(0, castagnoli, b[:off])
	h = crc32.Update(h, castagnoli, []byte{0, 0, 0, 0})
	h = crc32.Update(h, castagnoli, b[off+4:])
	return h == want
}

func be16(b []byte, off int) uint16 { return binary.BigEndian.Uint16(b[off:]) }
func be32(b []byte, off int) uint32 { return binary.BigEndian.Uint32(b[off:]) }
func be64(b []byte, off int) uint64 { return binary.BigEndian.Uint64(b[off:]) }

// Superblock is the decoded primary superblock (AG 0, sector 0).
type Superblock struct {
	BlockSize                    uint32
	DBlocks, RBlocks, RExtents   uint64
	UUID, MetaUUID               [16]byte
	LogStart                     uint64
	RootIno, RbmIno, RsumIno     uint64
	AGBlocks, AGCount            uint32
	LogBlocks                    uint32
	VersionNum                   uint16
	SectSize, InodeSize          uint16
	InoPerBlock                  uint16
	Label                        string
	BlockLog, SectLog            uint8
	InodeLog, InoPBLog, AGBlkLog uint8
	InProgress                   uint8
	ICount, IFree, FDBlocks      uint64
	UQuotIno, GQuotIno, PQuotIno uint64
	InoAlignMt                   uint32
	DirBlkLog                    uint8
	LogSectSize                  uint16
	Features2                    uint32
	FeaturesCompat               uint32
	FeaturesROCompat             uint32
	FeaturesIncompat             uint32
	FeaturesLogIncompat          uint32
	SpinoAlign                   uint32
}

// Version is 4 or 5.
func (s *Superblock) Version() int { return int(s.VersionNum & versionNumBits) }

// CRC reports a v5 filesystem (metadata checksums and self-describing
// headers).
func (s *Superblock) CRC() bool { return s.Version() == 5 }

// HasFtype reports whether directory entries carry the file type.
func (s *Superblock) HasFtype() bool {
	if s.CRC() {
		return s.FeaturesIncompat&inFtype != 0
	}
	return s.VersionNum&versionMore != 0 && s.Features2&f2Ftype != 0
}

// Realtime reports a realtime section.
func (s *Superblock) Realtime() bool { return s.RBlocks != 0 }

// UUIDString formats the filesystem UUID as blkid shows it.
func (s *Superblock) UUIDString() string {
	u := s.UUID
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Features names the feature flags as mkfs.xfs -m/-i options and xfs_db's
// version command name them.
func (s *Superblock) Features() []string {
	var f []string
	add := func(ok bool, name string) {
		if ok {
			f = append(f, name)
		}
	}
	add(s.CRC(), "crc")
	add(s.HasFtype(), "ftype")
	add(s.VersionNum&versionLogV2 != 0, "logv2")
	add(s.VersionNum&versionBorg != 0, "ascii-ci")
	add(s.FeaturesROCompat&roFinobt != 0, "finobt")
	add(s.FeaturesROCompat&roRmapbt != 0, "rmapbt")
	add(s.FeaturesROCompat&roReflink != 0, "reflink")
	add(s.FeaturesROCompat&roInobtCn != 0, "inobtcount")
	add(s.FeaturesIncompat&inSpinodes != 0, "sparse")
	add(s.FeaturesIncompat&inMetaUUID != 0, "metauuid")
	add(s.FeaturesIncompat&inBigtime != 0, "bigtime")
	add(s.FeaturesIncompat&inNeedsRep != 0, "needsrepair")
	add(s.FeaturesIncompat&inNrext64 != 0, "nrext64")
	add(s.FeaturesIncompat&inExchange != 0, "exchange")
	add(s.FeaturesIncompat&inParent != 0, "parent")
	add(s.Realtime(), "realtime")
	add(s.LogStart == 0, "external-log")
	return f
}

func sbErr(off int64, format string, args ...any) error {
	return vmerr.Corrupt(ErrCorrupt, "xfs superblock", off, format, args...)
}

// parseSuperblock decodes and checks the superblock sector b.
func parseSuperblock(b []byte, size int64) (*Superblock, error) {
	if len(b) < 512 || be32(b, 0) != sbMagic {
		return nil, ErrNotXFS
	}
	s := &Superblock{
		BlockSize: be32(b, 4), DBlocks: be64(b, 8), RBlocks: be64(b, 16), RExtents: be64(b, 24),
		LogStart: be64(b, 48), RootIno: be64(b, 56), RbmIno: be64(b, 64), RsumIno: be64(b, 72),
		AGBlocks: be32(b, 84), AGCount: be32(b, 88), LogBlocks: be32(b, 96),
		VersionNum: be16(b, 100), SectSize: be16(b, 102), InodeSize: be16(b, 104), InoPerBlock: be16(b, 106),
		BlockLog: b[120], SectLog: b[121], InodeLog: b[122], InoPBLog: b[123], AGBlkLog: b[124],
		InProgress: b[126], ICount: be64(b, 128), IFree: be64(b, 136), FDBlocks: be64(b, 144),
		UQuotIno: be64(b, 160), GQuotIno: be64(b, 168), InoAlignMt: be32(b, 180),
		DirBlkLog: b[192], LogSectSize: be16(b, 194),
	}
	copy(s.UUID[:], b[32:48])
	s.Label = strings.TrimRight(string(b[108:120]), "\x00")
	if s.VersionNum&versionMore != 0 {
		s.Features2 = be32(b, 200)
	}
	v := s.Version()
	if v != 4 && v != 5 {
		return nil, vmerr.Corrupt(ErrUnsupported, "xfs superblock", 100, "version %d", v)
	}
	if v == 5 {
		s.FeaturesCompat, s.FeaturesROCompat = be32(b, 208), be32(b, 212)
		s.FeaturesIncompat, s.FeaturesLogIncompat = be32(b, 216), be32(b, 220)
		s.SpinoAlign, s.PQuotIno = be32(b, 228), be64(b, 232)
		copy(s.MetaUUID[:], b[248:264])
		if s.SectSize < 512 || int(s.SectSize) > len(b) {
			return nil, sbErr(102, "sector size %d", s.SectSize)
		}
		if !crcOK(b[:s.SectSize], 224) {
			return nil, sbErr(224, "CRC mismatch")
		}
		if s.FeaturesIncompat&^inSupportedV != 0 {
			return nil, vmerr.Corrupt(ErrUnsupported, "xfs superblock", 216, "incompatible features %#x", s.FeaturesIncompat&^inSupportedV)
		}
	} else {
		s.MetaUUID = s.UUID
	}
	if s.FeaturesIncompat&inMetaUUID == 0 {
		s.MetaUUID = s.UUID
	}
	// Geometry, as xfs_validate_sb_common checks it.
	switch {
	case s.BlockLog < 9 || s.BlockLog > 16 || s.BlockSize != 1<<s.BlockLog:
		return nil, sbErr(4, "block size %d (log %d)", s.BlockSize, s.BlockLog)
	case s.SectLog < 9 || s.SectLog > 15 || uint32(s.SectSize) != 1<<s.SectLog:
		return nil, sbErr(102, "sector size %d (log %d)", s.SectSize, s.SectLog)
	case s.InodeLog < 8 || s.InodeLog > 11 || uint32(s.InodeSize) != 1<<s.InodeLog || s.InodeLog > s.BlockLog:
		return nil, sbErr(104, "inode size %d (log %d)", s.InodeSize, s.InodeLog)
	case s.InoPBLog != s.BlockLog-s.InodeLog || uint32(s.InoPerBlock) != 1<<s.InoPBLog:
		return nil, sbErr(106, "inodes per block %d (log %d)", s.InoPerBlock, s.InoPBLog)
	case s.AGCount == 0 || s.AGBlocks < 64 || s.AGBlkLog > 31 || uint64(s.AGBlocks) > 1<<s.AGBlkLog || uint64(s.AGBlocks) <= 1<<s.AGBlkLog>>1:
		return nil, sbErr(84, "AG geometry: %d AGs of %d blocks (log %d)", s.AGCount, s.AGBlocks, s.AGBlkLog)
	case s.DBlocks == 0 || s.DBlocks > uint64(s.AGCount)*uint64(s.AGBlocks) || s.DBlocks <= uint64(s.AGCount-1)*uint64(s.AGBlocks):
		return nil, sbErr(8, "%d data blocks in %d AGs of %d blocks", s.DBlocks, s.AGCount, s.AGBlocks)
	case int(s.AGBlkLog)+int(s.InoPBLog) > 32:
		return nil, sbErr(124, "inode number bits %d+%d", s.AGBlkLog, s.InoPBLog)
	case int(s.BlockLog)+int(s.DirBlkLog) > 16:
		return nil, sbErr(192, "directory block log %d", s.DirBlkLog)
	case s.InProgress != 0:
		return nil, sbErr(126, "mkfs did not finish (inprogress set)")
	}
	if size > 0 && s.DBlocks > uint64(size)>>s.BlockLog {
		return nil, sbErr(8, "%d blocks of %d bytes do not fit the %d-byte volume", s.DBlocks, s.BlockSize, size)
	}
	if s.LogStart != 0 {
		ag, bno := s.LogStart>>s.AGBlkLog, s.LogStart&(1<<s.AGBlkLog-1)
		if ag >= uint64(s.AGCount) || bno+uint64(s.LogBlocks) > uint64(s.AGBlocks) || s.LogBlocks == 0 {
			return nil, sbErr(48, "log of %d blocks at block %d", s.LogBlocks, s.LogStart)
		}
	}
	return s, nil
}

// FS is an open XFS filesystem. Its methods are safe for concurrent use.
type FS struct {
	r    io.ReaderAt
	size int64
	sb   *Superblock
	bs   int64
	// dirBlk is the bytes of a directory block.
	dirBlk int64
	// inoBits is the bits of an inode number below the AG number.
	inoBits uint
	// coreSize is the bytes of the inode core (176 for v3, 100 before).
	coreSize int

	cacheMu sync.Mutex
	cache   map[uint64]map[string]uint64 // directory inode → name → inode
	cached  int                          // names in cache
}

// Open reads the XFS filesystem of size bytes on r: the primary superblock
// and every AG's headers.
func Open(r io.ReaderAt, size int64) (*FS, error) {
	b := make([]byte, 4096)
	n, err := r.ReadAt(b, 0)
	if n < 512 {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("xfs: reading the superblock: %w", err)
	}
	sb, err := parseSuperblock(b[:n], size)
	if err != nil {
		return nil, err
	}
	f := &FS{r: r, size: size, sb: sb, bs: int64(sb.BlockSize)}
	f.dirBlk = f.bs << sb.DirBlkLog
	f.inoBits = uint(sb.AGBlkLog) + uint(sb.InoPBLog)
	f.coreSize = 100
	if sb.CRC() {
		f.coreSize = 176
	}
	if err := f.checkAGs(); err != nil {
		return nil, err
	}
	return f, nil
}

// Super returns the primary superblock. The caller must not modify it.
func (f *FS) Super() *Superblock { return f.sb }

// BlockSize is the bytes of a filesystem block.
func (f *FS) BlockSize() int64 { return f.bs }

// agLen is the blocks of AG ag (the last one may be short).
func (f *FS) agLen(ag uint32) uint64 {
	if ag == f.sb.AGCount-1 {
		return f.sb.DBlocks - uint64(ag)*uint64(f.sb.AGBlocks)
	}
	return uint64(f.sb.AGBlocks)
}

// checkAGs reads the AGF and AGI of every AG: magic, sequence number,
// length and (v5) CRC.
func (f *FS) checkAGs() error {
	ss := int64(f.sb.SectSize)
	b := make([]byte, ss)
	for ag := uint32(0); ag < f.sb.AGCount; ag++ {
		base := int64(ag) * int64(f.sb.AGBlocks) * f.bs
		for _, h := range []struct {
			name   string
			magic  uint32
			sector int64
			crcOff int
		}{{"AGF", agfMagic, 1, 216}, {"AGI", agiMagic, 2, 312}} {
			off := base + h.sector*ss
			if err := f.readAt(b, off); err != nil {
				return err
			}
			where := fmt.Sprintf("xfs %s of AG %d", h.name, ag)
			if be32(b, 0) != h.magic {
				return vmerr.Corrupt(ErrCorrupt, where, off, "bad magic %#x", be32(b, 0))
			}
			if be32(b, 8) != ag || uint64(be32(b, 12)) != f.agLen(ag) {
				return vmerr.Corrupt(ErrCorrupt, where, off, "sequence %d, length %d (want %d, %d)", be32(b, 8), be32(b, 12), ag, f.agLen(ag))
			}
			if f.sb.CRC() && !crcOK(b, h.crcOff) {
				return vmerr.Corrupt(ErrCorrupt, where, off, "CRC mismatch")
			}
		}
	}
	return nil
}

// readAt reads len(p) bytes at off of the volume, or fails naming where.
func (f *FS) readAt(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > f.size {
		return vmerr.Corrupt(ErrCorrupt, "xfs read", off, "%d bytes past the end of the %d-byte volume", len(p), f.size)
	}
	n, err := f.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("xfs: reading %d bytes at offset %d: %w", len(p), off, err)
}

// Linear turns an AG-encoded filesystem block number (agno << agblklog |
// agbno, as forks and directories store them) into the block's index on
// the volume (its byte offset divided by the block size).
func (f *FS) Linear(fsb uint64) (uint64, bool) {
	ag := fsb >> f.sb.AGBlkLog
	bno := fsb & (1<<f.sb.AGBlkLog - 1)
	if ag >= uint64(f.sb.AGCount) || bno >= f.agLen(uint32(ag)) {
		return 0, false
	}
	return ag*uint64(f.sb.AGBlocks) + bno, true
}
