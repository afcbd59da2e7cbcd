package dirty

import (
	"encoding/binary"
	"sort"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/ext4"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// ext4FS is the dirty view of an ext2/3/4 volume: the inode tables of its
// groups from the superblock and the group descriptors as fsparse/ext4 read
// them, inode records from fsparse/ext4's inodes and block maps.
type ext4FS struct {
	fs      *ext4.FS
	bs      int64
	blocks  uint64
	ipg     uint32
	isz     int64
	ninodes uint32
	first   uint32 // first non-reserved inode
	journal uint32 // journal inode, 0 if none
	tables  []InodeTable
}

func newExt4FS(v *fsparse.Volume) *ext4FS {
	fs := v.Ext4()
	sb := fs.Super()
	g := &ext4FS{
		fs: fs, bs: int64(sb.BlockSize), blocks: sb.BlocksCount, ipg: sb.InodesPerGroup,
		isz: int64(sb.InodeSize), ninodes: sb.InodesCount, first: sb.FirstIno,
	}
	if sb.FeatureCompat&0x4 != 0 { // has_journal
		g.journal = sb.JournalInum
	}
	for i, gr := range fs.Groups() {
		g.tables = append(g.tables, InodeTable{Start: gr.InodeTable, Len: gr.InodeTableBlocks, Group: uint32(i), Used: gr.UsedInodes})
	}
	sort.SliceStable(g.tables, func(i, j int) bool { return g.tables[i].Start < g.tables[j].Start })
	return g
}

func (g *ext4FS) BlockSize() int64          { return g.bs }
func (g *ext4FS) Blocks() uint64            { return g.blocks }
func (g *ext4FS) SlotSize() int64           { return g.isz }
func (g *ext4FS) InodeTables() []InodeTable { return g.tables }

// SlotsIn returns the inode numbers [lo, hi) stored in block blk of the
// inode table of group t.Group.
func (g *ext4FS) SlotsIn(t InodeTable, blk uint64) (lo, hi uint32) {
	per := uint64(g.bs / g.isz)
	grp := uint64(t.Group)
	idx := (blk - t.Start) * per
	lo = uint32(grp*uint64(g.ipg) + idx + 1)
	hi = uint32(min(grp*uint64(g.ipg)+idx+per, (grp+1)*uint64(g.ipg), uint64(g.ninodes)) + 1)
	return lo, hi
}

// SlotInUse tells from the raw bytes of an inode slot whether it holds a
// live inode: a mode and at least one link.
func (g *ext4FS) SlotInUse(raw []byte) bool {
	return binary.LittleEndian.Uint16(raw[0:]) != 0 && binary.LittleEndian.Uint16(raw[0x1A:]) != 0
}

// Tracked: the root and every inode from the first non-reserved one (the
// journal, resize and other reserved inodes are not files).
func (g *ext4FS) Tracked(ino uint32) bool {
	return ino == rootIno || (ino >= g.first && ino != g.journal)
}

func (g *ext4FS) ReadDir(ino uint32) ([]DirEntry, error) {
	ents, err := g.fs.ReadDirInode(ino)
	if err != nil {
		return nil, err
	}
	out := make([]DirEntry, len(ents))
	for i, e := range ents {
		out[i] = DirEntry{Name: e.Name, Ino: e.Ino}
	}
	return out, nil
}

// Journal returns the blocks of the journal inode.
func (g *ext4FS) Journal() rangeset.Set {
	var j rangeset.Set
	if g.journal == 0 {
		return j
	}
	if ext, err := g.fs.Extents(g.journal); err == nil {
		for _, e := range ext {
			j.Add(int64(e.Physical), int64(e.Physical+e.Len))
		}
	}
	return j
}

// Record reads inode ino into a record, or nil when the slot holds no live
// inode. A block map that cannot be read is noted in ReadErr (one bad file
// does not stop a poll).
func (g *ext4FS) Record(ino uint32) (*FileRec, error) {
	in, err := g.fs.Inode(ino)
	if err != nil {
		return nil, err
	}
	if in.Mode == 0 || in.Links == 0 {
		return nil, nil
	}
	r := &FileRec{
		Ino: ino, Mode: in.FileMode(), Uid: in.Uid, Gid: in.Gid, Size: in.Size, Links: in.Links,
		Flags: in.Flags, Gen: in.Generation, Atime: nanos(in.Atime), Mtime: nanos(in.Mtime),
		Ctime: nanos(in.Ctime), Xattr: in.XattrBlock, Inline: in.HasInlineData(),
	}
	if in.HasCrtime {
		r.Crtime = nanos(in.Crtime)
	}
	if in.IsSymlink() {
		if t, err := g.fs.ReadlinkInode(ino); err == nil {
			r.Target = t
		} else {
			r.ReadErr = err.Error()
		}
	}
	ext, err := g.fs.Extents(ino)
	if err != nil {
		r.ReadErr = err.Error()
		return r, nil
	}
	meta, err := g.fs.MetadataBlocks(ino)
	if err != nil {
		r.ReadErr = err.Error()
		return r, nil
	}
	ms := newMapSum()
	kind := KindData
	if in.IsDir() {
		kind = KindDir
	}
	for _, e := range ext {
		ms.extent(r, e.Logical, e.Physical, e.Len, unwritten(e.Unwritten), kind)
	}
	for _, m := range meta {
		ms.meta(r, m)
	}
	if in.XattrBlock != 0 {
		r.Runs = append(r.Runs, Run{in.XattrBlock, 1, KindXattr})
	}
	r.Extents = ms.h.Sum64()
	return r, nil
}

func nanos(t interface{ UnixNano() int64 }) int64 { return t.UnixNano() }
