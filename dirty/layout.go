package dirty

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"

	"github.com/vmscope/vmscope/fsparse/ext4"
)

// geometry is where an ext filesystem keeps its inode tables, read from the
// superblock and the group descriptors. fsparse/ext4 keeps the same table
// unexported; this is a second, bounded reading of it (see the package doc).
type geometry struct {
	bs      int64
	blocks  uint64
	ipg     uint32
	isz     int64
	ninodes uint32
	first   uint32 // first non-reserved inode
	journal uint32 // journal inode, 0 if none
	tblocks uint64 // blocks of one inode table
	itable  []uint64
	used    []uint32 // inode slots of each group that may be in use
}

// Group descriptor fields and flags.
const (
	bgInodeUninit = 0x1
	roGdtCsum     = 0x10
	roMetaCsum    = 0x400
	incMetaBG     = 0x10
	compatSparse2 = 0x200
	roSparseSuper = 0x1
	maxGroups     = 1 << 24
)

func readGeometry(dev io.ReaderAt, fs *ext4.FS) (*geometry, error) {
	sb := fs.Super()
	g := &geometry{
		bs: int64(sb.BlockSize), blocks: sb.BlocksCount, ipg: sb.InodesPerGroup,
		isz: int64(sb.InodeSize), ninodes: sb.InodesCount, first: sb.FirstIno,
	}
	if sb.FeatureCompat&0x4 != 0 {
		g.journal = sb.JournalInum
	}
	ng := (sb.BlocksCount - uint64(sb.FirstDataBlock) + uint64(sb.BlocksPerGroup) - 1) / uint64(sb.BlocksPerGroup)
	if ng == 0 || ng > maxGroups {
		return nil, fmt.Errorf("dirty: ext4 superblock: %d groups: %w", ng, ext4.ErrCorrupt)
	}
	g.tblocks = (uint64(g.ipg)*uint64(g.isz) + uint64(g.bs) - 1) / uint64(g.bs)
	ds := uint64(sb.DescSize)
	perBlock := uint64(g.bs) / ds
	nblocks := (ng + perBlock - 1) / perBlock
	csum := sb.FeatureROCompat&(roGdtCsum|roMetaCsum) != 0
	buf := make([]byte, g.bs)
	g.itable = make([]uint64, ng)
	g.used = make([]uint32, ng)
	var grp uint64
	for i := uint64(0); i < nblocks; i++ {
		blk := descBlock(sb, i, perBlock)
		if blk >= sb.BlocksCount {
			return nil, fmt.Errorf("dirty: ext4 group descriptor block %d at block %d: %w", i, blk, ext4.ErrCorrupt)
		}
		if n, err := dev.ReadAt(buf, int64(blk)*g.bs); n < len(buf) {
			return nil, fmt.Errorf("dirty: ext4 group descriptor block %d at block %d: %v: %w", i, blk, err, ext4.ErrCorrupt)
		}
		for j := uint64(0); j < perBlock && grp < ng; j, grp = j+1, grp+1 {
			d := buf[j*ds : (j+1)*ds]
			it := uint64(binary.LittleEndian.Uint32(d[0x8:]))
			unused := uint32(binary.LittleEndian.Uint16(d[0x1C:]))
			if ds >= 64 {
				it |= uint64(binary.LittleEndian.Uint32(d[0x28:])) << 32
				unused |= uint32(binary.LittleEndian.Uint16(d[0x32:])) << 16
			}
			if it == 0 || it >= sb.BlocksCount || g.tblocks > sb.BlocksCount-it {
				return nil, fmt.Errorf("dirty: ext4 group descriptor %d: inode table at block %d: %w", grp, it, ext4.ErrCorrupt)
			}
			g.itable[grp] = it
			g.used[grp] = g.ipg
			if csum {
				flags := binary.LittleEndian.Uint16(d[0x12:])
				switch {
				case flags&bgInodeUninit != 0:
					g.used[grp] = 0
				case unused <= g.ipg:
					g.used[grp] = g.ipg - unused
				}
			}
		}
	}
	return g, nil
}

func descBlock(sb *ext4.Superblock, i, perBlock uint64) uint64 {
	first := uint64(sb.FirstDataBlock)
	if sb.FeatureIncompat&incMetaBG == 0 || i < uint64(sb.FirstMetaBG) {
		return first + 1 + i
	}
	g := perBlock * i
	blk := first + g*uint64(sb.BlocksPerGroup)
	if groupHasSuper(sb, g) {
		blk++
	}
	return blk
}

func groupHasSuper(sb *ext4.Superblock, g uint64) bool {
	if g == 0 {
		return true
	}
	if sb.FeatureCompat&compatSparse2 != 0 {
		return g == uint64(sb.BackupBGs[0]) || g == uint64(sb.BackupBGs[1])
	}
	if sb.FeatureROCompat&roSparseSuper == 0 || g <= 1 {
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

// itableRun is the inode table of one group: blocks [start, start+n).
type itableRun struct {
	start, n uint64
	group    uint32
}

// itableRuns returns the inode tables sorted by block.
func (g *geometry) itableRuns() []itableRun {
	out := make([]itableRun, len(g.itable))
	for i, b := range g.itable {
		out[i] = itableRun{b, g.tblocks, uint32(i)}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start < out[j].start })
	return out
}

// inodesInBlock returns the inode numbers [lo, hi) stored in block blk of
// group grp's inode table.
func (g *geometry) inodesInBlock(grp uint32, blk uint64) (lo, hi uint32) {
	per := uint64(g.bs / g.isz)
	idx := (blk - g.itable[grp]) * per
	lo = uint32(uint64(grp)*uint64(g.ipg) + idx + 1)
	hi = uint32(min(uint64(grp)*uint64(g.ipg)+idx+per, uint64(grp+1)*uint64(g.ipg), uint64(g.ninodes)) + 1)
	return lo, hi
}

// rawInUse tells from the raw bytes of an inode slot whether it holds a
// live inode: a mode and at least one link.
func rawInUse(raw []byte) bool {
	return binary.LittleEndian.Uint16(raw[0:]) != 0 && binary.LittleEndian.Uint16(raw[0x1A:]) != 0
}
