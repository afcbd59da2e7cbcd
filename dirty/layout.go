package dirty

import (
	"encoding/binary"
	"hash/fnv"
	"sort"

	"github.com/vmscope/vmscope/fsparse/ext4"
)

// geometry is where an ext filesystem keeps its inode tables, from the
// superblock and the group descriptors as fsparse/ext4 read them.
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

func readGeometry(fs *ext4.FS) *geometry {
	sb := fs.Super()
	g := &geometry{
		bs: int64(sb.BlockSize), blocks: sb.BlocksCount, ipg: sb.InodesPerGroup,
		isz: int64(sb.InodeSize), ninodes: sb.InodesCount, first: sb.FirstIno,
	}
	if sb.FeatureCompat&0x4 != 0 { // has_journal
		g.journal = sb.JournalInum
	}
	groups := fs.Groups()
	g.itable = make([]uint64, len(groups))
	g.used = make([]uint32, len(groups))
	for i, gr := range groups {
		g.itable[i], g.used[i], g.tblocks = gr.InodeTable, gr.UsedInodes, gr.InodeTableBlocks
	}
	return g
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

// slotSums digests each inode slot of inode-table block blk of group grp
// (raw: the block's bytes), never 0 (0 means unknown).
func slotSums(g *geometry, grp uint32, blk uint64, raw []byte) []uint64 {
	first, end := g.inodesInBlock(grp, blk)
	out := make([]uint64, end-first)
	for i := range out {
		h := fnv.New64a()
		h.Write(raw[int64(i)*g.isz : int64(i+1)*g.isz])
		out[i] = max(h.Sum64(), 1)
	}
	return out
}

// rawInUse tells from the raw bytes of an inode slot whether it holds a
// live inode: a mode and at least one link.
func rawInUse(raw []byte) bool {
	return binary.LittleEndian.Uint16(raw[0:]) != 0 && binary.LittleEndian.Uint16(raw[0x1A:]) != 0
}
