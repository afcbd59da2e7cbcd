package dirty

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/xfs"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// xfsFS is the dirty view of an XFS volume: its inode chunks (from the
// inode B+trees) are the inode tables, the data and attribute forks'
// extents and B+tree blocks the block → owner index (a reflinked block has several
// owners), the internal log is the journal.
//
// XFS inode numbers (AG number above the AG inode bits) are used as they
// are, and FS keeps 32-bit inode numbers: this view opens a volume only
// while every allocated inode's number fits 32 bits (always below about
// 2 TiB; on a larger volume, as long as the kernel's inode32 mount option,
// or chance, kept the inodes low); else it is refused with
// ErrUnsupportedFS naming the first inode that does not fit.
type xfsFS struct {
	fs     *xfs.FS
	bs     int64
	blocks uint64
	isz    int64
	ipb    uint64
	root   uint32
	chunks []xfs.Chunk
	tables []InodeTable
	skip   map[uint64]bool // realtime bitmap/summary and quota inodes
	log    rangeset.Set
}

func newXFSFS(v *fsparse.Volume, f *xfs.FS) (*xfsFS, error) {
	sb := f.Super()
	if sb.RootIno > math.MaxUint32 {
		return nil, fmt.Errorf("dirty: volume %s: XFS root inode %d does not fit 32 bits: %w", v.ID, sb.RootIno, ErrUnsupportedFS)
	}
	if sb.InoPerBlock > 64 {
		return nil, fmt.Errorf("dirty: volume %s: XFS inode chunks smaller than a block (%d inodes per block): %w", v.ID, sb.InoPerBlock, ErrUnsupportedFS)
	}
	chunks, err := f.Chunks()
	if err != nil {
		return nil, err
	}
	g := &xfsFS{fs: f, bs: f.BlockSize(), blocks: sb.DBlocks, isz: int64(sb.InodeSize), ipb: uint64(sb.InoPerBlock),
		root: uint32(sb.RootIno), chunks: chunks, skip: map[uint64]bool{}}
	for i, c := range chunks {
		if ino, ok := beyond32(c); ok {
			return nil, fmt.Errorf("dirty: volume %s: XFS inode %d (inode chunk at block %d of AG %d) does not fit 32 bits: %w", v.ID, ino, c.Block, c.AG, ErrUnsupportedFS)
		}
		if uint64(c.Count)%g.ipb != 0 || (c.First&(1<<(sb.AGBlkLog+sb.InoPBLog)-1))%g.ipb != 0 {
			return nil, fmt.Errorf("dirty: volume %s: XFS inode chunk at inode %d does not fill whole blocks: %w", v.ID, c.First, ErrUnsupportedFS)
		}
		g.tables = append(g.tables, InodeTable{Start: c.Block, Len: c.Blocks, Group: uint32(i), Used: c.Count})
	}
	for _, ino := range []uint64{sb.RbmIno, sb.RsumIno, sb.UQuotIno, sb.GQuotIno, sb.PQuotIno} {
		g.skip[ino] = true
	}
	if sb.LogStart != 0 {
		if start, ok := f.Linear(sb.LogStart); ok {
			g.log.Add(int64(start), int64(start)+int64(sb.LogBlocks))
		}
	}
	return g, nil
}

// beyond32 returns the first allocated inode of chunk c whose number does
// not fit 32 bits.
func beyond32(c xfs.Chunk) (uint64, bool) {
	for i := range uint64(min(c.Count, 64)) {
		if ino := c.First + i; ino > math.MaxUint32 && c.Free&(1<<i) == 0 {
			return ino, true
		}
	}
	return 0, false
}

func (g *xfsFS) BlockSize() int64          { return g.bs }
func (g *xfsFS) Blocks() uint64            { return g.blocks }
func (g *xfsFS) SlotSize() int64           { return g.isz }
func (g *xfsFS) InodeTables() []InodeTable { return g.tables }
func (g *xfsFS) Journal() rangeset.Set     { return g.log }
func (g *xfsFS) RootIno() uint32           { return g.root }

// SlotsIn returns the inodes of block blk of chunk run t: consecutive
// numbers from the run's first.
func (g *xfsFS) SlotsIn(t InodeTable, blk uint64) (lo, hi uint32) {
	c := g.chunks[t.Group]
	first := c.First + (blk-t.Start)*g.ipb
	return uint32(first), uint32(min(first+g.ipb, c.First+uint64(c.Count)))
}

// SlotInUse: an inode core ("IN") with a mode.
func (g *xfsFS) SlotInUse(raw []byte) bool {
	return binary.BigEndian.Uint16(raw) == 0x494e && binary.BigEndian.Uint16(raw[2:]) != 0
}

func (g *xfsFS) Tracked(ino uint32) bool { return ino != 0 && !g.skip[uint64(ino)] }

func (g *xfsFS) ReadDir(ino uint32) ([]DirEntry, error) {
	ents, err := g.fs.ReadDirInode(uint64(ino))
	if err != nil {
		return nil, err
	}
	out := make([]DirEntry, 0, len(ents))
	for _, e := range ents {
		if e.Ino > math.MaxUint32 {
			return nil, fmt.Errorf("dirty: xfs directory %d: entry %q names inode %d: %w", ino, e.Name, e.Ino, ErrUnsupportedFS)
		}
		out = append(out, DirEntry{Name: e.Name, Ino: uint32(e.Ino)})
	}
	return out, nil
}

// Record reads inode ino with the runs it owns: data (or directory)
// extents, and its fork's B+tree blocks.
func (g *xfsFS) Record(ino uint32) (*FileRec, error) {
	in, err := g.fs.Inode(uint64(ino))
	if err != nil {
		return nil, err
	}
	if in.Mode == 0 || in.Nlink == 0 {
		return nil, nil
	}
	r := &FileRec{
		Ino: ino, Mode: in.FileMode(), Uid: in.Uid, Gid: in.Gid, Size: in.Size, Links: uint16(min(in.Nlink, math.MaxUint16)),
		Flags: uint32(in.Flags), Gen: in.Generation, Atime: in.Atime.UnixNano(), Mtime: in.Mtime.UnixNano(),
		Ctime: in.Ctime.UnixNano(), Inline: in.Format == 1,
	}
	if in.HasCrtime {
		r.Crtime = in.Crtime.UnixNano()
	}
	if in.IsSymlink() {
		if t, err := g.fs.Readlink(in); err == nil {
			r.Target = t
		} else {
			r.ReadErr = err.Error()
		}
	}
	aext, ameta, err := g.fs.AttrBlockMap(in)
	if err != nil {
		r.ReadErr = err.Error()
		return r, nil
	}
	var ext []xfs.Extent
	var meta []uint64
	if in.Format == 2 || in.Format == 3 { // local and device forks own no blocks
		ext, meta, err = g.fs.BlockMap(in)
		if err != nil {
			r.ReadErr = err.Error()
			return r, nil
		}
	}
	ms := newMapSum()
	kind := KindData
	if in.IsDir() {
		kind = KindDir
	}
	for _, e := range ext {
		ms.extent(r, e.Logical, e.Physical, e.Len, unwritten(e.Unwritten), kind)
	}
	for _, e := range aext {
		ms.extent(r, e.Logical, e.Physical, e.Len, extentAttrFork, KindXattr)
	}
	for _, m := range append(meta, ameta...) {
		ms.meta(r, m)
	}
	r.Extents = ms.h.Sum64()
	return r, nil
}
