package ext4

import (
	"fmt"
)

// Extent maps Len file blocks starting at file block Logical to fs blocks
// starting at Physical. Unwritten extents are allocated but read as zeros.
type Extent struct {
	Logical   uint64
	Physical  uint64
	Len       uint64
	Unwritten bool
}

const (
	extentMagic    = 0xF30A
	maxExtentDepth = 5
	maxLogical     = 1 << 32 // logical block numbers are 32-bit
)

// blockMap is the decoded data map of one inode.
type blockMap struct {
	ext  []Extent
	meta []uint64 // tree / indirect blocks, in visiting order
}

func (m *blockMap) add(e Extent, f *FS, ino uint32) error {
	if n := len(m.ext); n > 0 {
		p := &m.ext[n-1]
		if p.Logical+p.Len == e.Logical && p.Physical+p.Len == e.Physical && p.Unwritten == e.Unwritten {
			p.Len += e.Len
			return nil
		}
	}
	if len(m.ext) >= maxExtents {
		return fmt.Errorf("ext4: block map of inode %d: more than %d extents: %w", ino, maxExtents, ErrCorrupt)
	}
	m.ext = append(m.ext, e)
	return nil
}

// Extents returns the data block map of inode ino, sorted by Logical and
// coalesced, for extent-mapped and block-mapped inodes alike. It is empty
// for inline-data inodes and fast symlinks.
func (f *FS) Extents(ino uint32) ([]Extent, error) {
	in, err := f.Inode(ino)
	if err != nil {
		return nil, err
	}
	m, err := f.mapInode(in)
	if err != nil {
		return nil, err
	}
	return m.ext, nil
}

// MetadataBlocks returns the blocks of inode ino's mapping metadata: the
// extent tree's index and leaf blocks (not the root in the inode), or the
// indirect, double- and triple-indirect blocks of a block-mapped inode.
func (f *FS) MetadataBlocks(ino uint32) ([]uint64, error) {
	in, err := f.Inode(ino)
	if err != nil {
		return nil, err
	}
	m, err := f.mapInode(in)
	if err != nil {
		return nil, err
	}
	return m.meta, nil
}

// InlineData reports whether inode ino keeps its data inside the inode.
func (f *FS) InlineData(ino uint32) (bool, error) {
	in, err := f.Inode(ino)
	if err != nil {
		return false, err
	}
	return in.HasInlineData(), nil
}

// hasBlockMap reports whether i_block is a block map or extent root (as
// opposed to inline data, a fast symlink target or a device number).
func (f *FS) hasBlockMap(in *Inode) bool {
	if in.HasInlineData() || f.isFastSymlink(in) {
		return false
	}
	switch in.Mode & sIFMT {
	case sIFREG, sIFDIR, sIFLNK:
		return true
	}
	return false
}

// maxSize is the largest i_size the inode's mapping can address.
func (f *FS) checkSize(in *Inode) error {
	var maxBlocks uint64 = maxLogical
	if !in.IsExtentMapped() {
		apb := f.bs / 4
		maxBlocks = min(maxBlocks, 12+apb+apb*apb+apb*apb*apb)
	}
	if in.Size > maxBlocks*f.bs {
		return fmt.Errorf("ext4: inode %d: size %d beyond the %d blocks its map can address: %w", in.Ino, in.Size, maxBlocks, ErrCorrupt)
	}
	return nil
}

func (f *FS) mapInode(in *Inode) (*blockMap, error) {
	m := &blockMap{}
	if !f.hasBlockMap(in) {
		return m, nil
	}
	if err := f.checkSize(in); err != nil {
		return nil, err
	}
	if in.IsExtentMapped() {
		w := extentWalk{f: f, ino: in.Ino, m: m}
		if err := w.node(in.block[:], 0, -1, 0, maxLogical); err != nil {
			return nil, err
		}
		return m, nil
	}
	w := indirectWalk{f: f, ino: in.Ino, m: m}
	w.limit = (in.Size + f.bs - 1) / f.bs
	if err := w.run(in); err != nil {
		return nil, err
	}
	return m, nil
}

type extentWalk struct {
	f       *FS
	ino     uint32
	m       *blockMap
	seen    map[uint64]bool
	next    uint64 // next logical block allowed (extents sorted, no overlap)
	nblocks uint64 // mapped blocks so far
	buf     [][]byte
}

// node walks one extent-tree node. b is the node (i_block or a tree block),
// blk its block number (0 for the root), wantDepth the depth the parent says
// it has (-1 for the root); lo..hi is the logical range the parent gives it.
func (w *extentWalk) node(b []byte, blk uint64, wantDepth int, lo, hi uint64) error {
	f := w.f
	where := func() string {
		if blk == 0 {
			return fmt.Sprintf("ext4: extent header of inode %d in the inode", w.ino)
		}
		return fmt.Sprintf("ext4: extent header of inode %d at block %d", w.ino, blk)
	}
	if len(b) < 12 || le16(b, 0) != extentMagic {
		return fmt.Errorf("%s: bad magic: %w", where(), ErrCorrupt)
	}
	entries := int(le16(b, 2))
	max := int(le16(b, 4))
	depth := int(le16(b, 6))
	if max > (len(b)-12)/12 || entries > max {
		return fmt.Errorf("%s: %d entries, max %d: %w", where(), entries, max, ErrCorrupt)
	}
	if depth > maxExtentDepth || (wantDepth >= 0 && depth != wantDepth) {
		return fmt.Errorf("%s: depth %d (want %d): %w", where(), depth, wantDepth, ErrCorrupt)
	}
	if depth == 0 {
		for i := 0; i < entries; i++ {
			e := b[12+12*i:]
			lb := uint64(le32(e, 0))
			l := uint64(le16(e, 4))
			unwritten := false
			if l > 32768 {
				l -= 32768
				unwritten = true
			}
			pb := uint64(le16(e, 6))<<32 | uint64(le32(e, 8))
			if l == 0 || lb < w.next || lb+l > hi || lb+l > maxLogical {
				return fmt.Errorf("%s: extent %d (logical %d len %d) out of order or range: %w", where(), i, lb, l, ErrCorrupt)
			}
			if pb < uint64(f.sb.FirstDataBlock) || pb == 0 || pb >= f.sb.BlocksCount || l > f.sb.BlocksCount-pb {
				return fmt.Errorf("%s: extent %d: physical block %d+%d outside %d blocks: %w", where(), i, pb, l, f.sb.BlocksCount, ErrCorrupt)
			}
			w.next = lb + l
			w.nblocks += l
			if w.nblocks > f.sb.BlocksCount {
				return fmt.Errorf("%s: more blocks mapped than the filesystem has: %w", where(), ErrCorrupt)
			}
			if err := w.m.add(Extent{Logical: lb, Physical: pb, Len: l, Unwritten: unwritten}, f, w.ino); err != nil {
				return err
			}
		}
		return nil
	}
	if entries == 0 {
		return fmt.Errorf("%s: index node with no entries: %w", where(), ErrCorrupt)
	}
	// One buffer per level, reused across siblings.
	level := depth - 1
	for len(w.buf) <= level {
		w.buf = append(w.buf, nil)
	}
	if w.buf[level] == nil {
		w.buf[level] = make([]byte, f.bs)
	}
	cb := w.buf[level]
	for i := 0; i < entries; i++ {
		e := b[12+12*i:]
		lb := uint64(le32(e, 0))
		child := uint64(le16(e, 8))<<32 | uint64(le32(e, 4))
		end := hi
		if i+1 < entries {
			end = uint64(le32(b[12+12*(i+1):], 0))
		}
		if lb < lo && i > 0 || end <= lb && i+1 < entries {
			return fmt.Errorf("%s: index %d (logical %d) out of order: %w", where(), i, lb, ErrCorrupt)
		}
		if child < uint64(f.sb.FirstDataBlock) || child == 0 || child >= f.sb.BlocksCount {
			return fmt.Errorf("%s: index %d: child block %d outside %d blocks: %w", where(), i, child, f.sb.BlocksCount, ErrCorrupt)
		}
		if w.seen == nil {
			w.seen = make(map[uint64]bool)
		}
		if w.seen[child] {
			return fmt.Errorf("%s: index %d: block %d referenced twice: %w", where(), i, child, ErrCorrupt)
		}
		w.seen[child] = true
		w.m.meta = append(w.m.meta, child)
		if err := f.readBlocks(cb, child); err != nil {
			return fmt.Errorf("ext4: extent block of inode %d at block %d: %w", w.ino, child, err)
		}
		if err := w.node(cb, child, level, lb, end); err != nil {
			return err
		}
	}
	return nil
}

type indirectWalk struct {
	f       *FS
	ino     uint32
	m       *blockMap
	limit   uint64 // logical blocks covered by i_size
	seen    map[uint64]bool
	nblocks uint64
	buf     [3][]byte
}

func (w *indirectWalk) run(in *Inode) error {
	for i := 0; i < 12; i++ {
		if err := w.data(uint64(i), uint64(le32(in.block[:], 4*i))); err != nil {
			return err
		}
	}
	apb := w.f.bs / 4
	start := uint64(12)
	span := uint64(1)
	for level := 1; level <= 3; level++ {
		span *= apb
		p := uint64(le32(in.block[:], 4*(11+level)))
		if start >= w.limit {
			break
		}
		if p != 0 {
			if err := w.indirect(level, p, start); err != nil {
				return err
			}
		}
		start += span
	}
	return nil
}

func (w *indirectWalk) data(lb, pb uint64) error {
	if pb == 0 || lb >= w.limit {
		return nil
	}
	f := w.f
	if pb < uint64(f.sb.FirstDataBlock) || pb >= f.sb.BlocksCount {
		return fmt.Errorf("ext4: block map of inode %d: file block %d at block %d outside %d blocks: %w", w.ino, lb, pb, f.sb.BlocksCount, ErrCorrupt)
	}
	w.nblocks++
	if w.nblocks > f.sb.BlocksCount {
		return fmt.Errorf("ext4: block map of inode %d: more blocks mapped than the filesystem has: %w", w.ino, ErrCorrupt)
	}
	return w.m.add(Extent{Logical: lb, Physical: pb, Len: 1}, f, w.ino)
}

// indirect walks an indirect block of the given level (1 = single) whose
// first entry maps file block start.
func (w *indirectWalk) indirect(level int, blk, start uint64) error {
	f := w.f
	if blk < uint64(f.sb.FirstDataBlock) || blk >= f.sb.BlocksCount {
		return fmt.Errorf("ext4: indirect block (level %d) of inode %d at block %d outside %d blocks: %w", level, w.ino, blk, f.sb.BlocksCount, ErrCorrupt)
	}
	if w.seen == nil {
		w.seen = make(map[uint64]bool)
	}
	if w.seen[blk] {
		return fmt.Errorf("ext4: indirect block of inode %d at block %d referenced twice: %w", w.ino, blk, ErrCorrupt)
	}
	w.seen[blk] = true
	w.m.meta = append(w.m.meta, blk)
	if w.buf[level-1] == nil {
		w.buf[level-1] = make([]byte, f.bs)
	}
	b := w.buf[level-1]
	if err := f.readBlocks(b, blk); err != nil {
		return fmt.Errorf("ext4: indirect block of inode %d at block %d: %w", w.ino, blk, err)
	}
	apb := f.bs / 4
	span := uint64(1)
	for i := 1; i < level; i++ {
		span *= apb
	}
	for i := uint64(0); i < apb; i++ {
		lb := start + i*span
		if lb >= w.limit {
			break
		}
		p := uint64(le32(b, int(4*i)))
		if p == 0 {
			continue
		}
		var err error
		if level == 1 {
			err = w.data(lb, p)
		} else {
			err = w.indirect(level-1, p, lb)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
