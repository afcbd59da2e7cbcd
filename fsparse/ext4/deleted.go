package ext4

import (
	"fmt"
	"io/fs"
	"slices"
)

// Deleted files. A delete leaves traces the live view does not show:
//   - the directory record of a removed name is merged into the record
//     before it (whose rec_len grows over it), so its bytes stay in that
//     record's slack until the space is reused; when the removed record is
//     the first of a block its inode field is cleared instead;
//   - the inode is freed in the bitmap, but its fields (mode, times, and
//     for debugfs and older kernels its block map) stay until it is reused.
// Everything found here is guest-controlled garbage by nature: each
// candidate record is validated (inode in range, name length, rec_len,
// name bytes, file type) and every scan is bounded by the block.

// DirSlot is a directory record found by ScanDir: a live entry, or a
// deleted one.
type DirSlot struct {
	Name string
	Ino  uint32 // 0 when the delete cleared it
	// Type is the record's file type (type bits only); TypeKnown is false
	// when the record has none (no filetype feature, or an unknown value).
	Type      fs.FileMode
	TypeKnown bool
	// Offset is the record's byte offset in the filesystem (-1 in an
	// inline directory's system.data).
	Offset int64
	// Deleted: found in the unused space of a record (Slack), or a record
	// whose inode was cleared, or any record of a deleted directory.
	Deleted bool
	Slack   bool
}

// ideal is the size a record of name length nl needs.
func ideal(nl int) int { return (8 + nl + 3) &^ 3 }

// validName reports whether a candidate name can be a name: not empty, no
// NUL, no '/', not "." or "..".
func validName(n []byte) bool {
	if len(n) == 0 || (len(n) == 1 && n[0] == '.') || (len(n) == 2 && n[0] == '.' && n[1] == '.') {
		return false
	}
	for _, c := range n {
		if c == 0 || c == '/' {
			return false
		}
	}
	return true
}

// SlackRecord is one deleted record found in slack by ScanSlack: its
// offset in the scanned buffer, inode, file type byte and name.
type SlackRecord struct {
	Off   int
	Ino   uint32
	Ftype uint8
	Name  []byte
}

// ScanSlack finds the deleted directory records in b[from:to], the unused
// tail of a record in a directory block b (bs is the block size, for
// rec_len decoding). A candidate is taken only when its inode is in
// 1..inodes, its name length is 1..255 and fits before to, its rec_len is
// 4-aligned, at least what the name needs and ends inside b, its file type
// is known (with filetype), and its name is a valid name. After a
// candidate the scan goes on after its name (its own slack may hold older
// records); else 4 bytes on. At most (to-from)/4 positions are tried.
func ScanSlack(b []byte, from, to, bs int, inodes uint32, filetype bool, fn func(SlackRecord)) {
	if from < 0 {
		from = 0
	}
	from = (from + 3) &^ 3
	if to > len(b) {
		to = len(b)
	}
	for pos := from; pos+12 <= to; {
		ino := le32(b, pos)
		if ino == 0 || ino > inodes {
			// Not a record here. Most slack is zeros: skip them 8 bytes
			// (two positions) at a time.
			if ino == 0 && le32(b, pos+4) == 0 {
				pos += 8
			} else {
				pos += 4
			}
			continue
		}
		rl := recLen(le16(b, pos+4), bs)
		var nl int
		var ft uint8
		if filetype {
			nl, ft = int(b[pos+6]), b[pos+7]
		} else {
			nl = int(le16(b, pos+6))
		}
		ok := ino >= 1 && ino <= inodes && nl >= 1 && nl <= 255 && pos+8+nl <= to &&
			rl&3 == 0 && rl >= ideal(nl) && pos+rl <= len(b) && (!filetype || (ft >= 1 && ft <= 7))
		if ok && validName(b[pos+8:pos+8+nl]) {
			fn(SlackRecord{Off: pos, Ino: ino, Ftype: ft, Name: b[pos+8 : pos+8+nl]})
			pos += ideal(nl)
			continue
		}
		pos += 4
	}
}

// htreeIndex returns the logical blocks of an indexed directory that hold
// its htree index (the root, block 0, and the index nodes it points at):
// they are not lists of records. Bounded: at most 3 levels below the
// root, each node's count checked against its limit and the block size.
func (f *FS) htreeIndex(in *Inode, m *blockMap) map[uint64]bool {
	idx := map[uint64]bool{0: true}
	if in.Flags&flagIndex == 0 {
		return nil
	}
	bs := int(f.bs)
	read := func(lb uint64) []byte {
		pb, ok := m.phys(lb)
		if !ok {
			return nil
		}
		b := make([]byte, bs)
		if f.readBlocks(b, pb) != nil {
			return nil
		}
		return b
	}
	root := read(0)
	if len(root) < 0x28 {
		return idx
	}
	levels := int(root[0x1e])
	if levels > 3 {
		levels = 3
	}
	// entries returns the block numbers of a dx entry array at off.
	entries := func(b []byte, off int) []uint64 {
		limit, count := int(le16(b, off)), int(le16(b, off+2))
		max := (len(b) - off) / 8
		if count > limit || count > max {
			count = min(limit, max)
		}
		var out []uint64
		for i := 0; i < count; i++ {
			out = append(out, uint64(le32(b, off+4+8*i)&0x0fffffff))
		}
		return out
	}
	level := entries(root, 0x20)
	for l := 0; l < levels; l++ {
		var next []uint64
		for _, lb := range level {
			if idx[lb] || uint64(len(idx)) > in.Size/f.bs+1 {
				continue
			}
			idx[lb] = true
			if b := read(lb); b != nil && l+1 < levels {
				next = append(next, entries(b, 8)...)
			}
		}
		level = next
	}
	return idx
}

// phys maps a logical block through the map.
func (m *blockMap) phys(lb uint64) (uint64, bool) {
	for _, e := range m.ext {
		if lb >= e.Logical && lb < e.Logical+e.Len {
			if e.Unwritten {
				return 0, false
			}
			return e.Physical + lb - e.Logical, true
		}
	}
	return 0, false
}

// scanChunk lists the records of one directory block: the live chain, the
// records whose inode was cleared (deleted in place) and the deleted ones
// in each record's slack. allDeleted marks every record deleted (the
// block of a deleted directory). A broken chain ends the chain walk of
// the block; what lies past the break is scanned as slack.
func (f *FS) scanChunk(b []byte, base int64, first, allDeleted bool, fn func(*DirSlot, []byte)) {
	filetype := f.sb.FeatureIncompat&incompatFiletype != 0
	at := func(off int) int64 {
		if base < 0 {
			return -1
		}
		return base + int64(off)
	}
	// One slot for the block: fn may use it during the call only.
	var slot DirSlot
	emit := func(name []byte, ino uint32, ft uint8, off int, deleted, slack bool) {
		t, ok := direntType(ft)
		if !filetype {
			ok = false
		}
		slot = DirSlot{Ino: ino, Type: t, TypeKnown: ok, Offset: at(off), Deleted: deleted, Slack: slack}
		fn(&slot, name)
	}
	slack := func(from, to int) {
		ScanSlack(b, from, to, len(b), f.sb.InodesCount, filetype, func(r SlackRecord) {
			emit(r.Name, r.Ino, r.Ftype, r.Off, true, true)
		})
	}
	off := 0
	for slot := 0; off < len(b); slot++ {
		if len(b)-off < 12 {
			return
		}
		ino := le32(b, off)
		rl := recLen(le16(b, off+4), len(b))
		var nl int
		var ft uint8
		if filetype {
			nl, ft = int(b[off+6]), b[off+7]
		} else {
			nl = int(le16(b, off+6))
		}
		if rl < 12 || rl&3 != 0 || rl > len(b)-off || nl+8 > rl || nl > 255 || ino > f.sb.InodesCount {
			slack(off, len(b))
			return
		}
		name := b[off+8 : off+8+nl]
		dot := first && ((slot == 0 && nl == 1 && name[0] == '.') || (slot == 1 && nl == 2 && name[0] == '.' && name[1] == '.'))
		switch {
		case dot:
		case ino != 0 && validName(name):
			emit(name, ino, ft, off, allDeleted, false)
		case ino == 0 && validName(name) && (!filetype || ft <= 7):
			emit(name, 0, ft, off, true, false)
		}
		slack(off+ideal(nl), off+rl)
		off += rl
	}
}

// ScanDir lists every record of directory inode ino, live and deleted, in
// on-disk order; "." and ".." in their slots are left out, and so are the
// htree index blocks of an indexed directory. deleted says the directory
// itself is deleted: every record is then marked deleted, and its block
// map is the stale one its freed inode still holds. Blocks that cannot be
// read are skipped; an error means the directory cannot be read at all.
func (f *FS) ScanDir(ino uint32, deleted bool) ([]DirSlot, error) {
	var out []DirSlot
	err := f.ScanDirFunc(ino, deleted, func(s *DirSlot, name []byte) {
		s.Name = string(name)
		out = append(out, *s)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ScanDirFunc is ScanDir without the list: fn gets each record in turn,
// with s.Name empty and name its bytes (both valid during the call only).
// The directory's blocks are read in runs of up to 256 KiB.
func (f *FS) ScanDirFunc(ino uint32, deleted bool, fn func(s *DirSlot, name []byte)) error {
	in, err := f.Inode(ino)
	if err != nil {
		return err
	}
	if !in.IsDir() {
		return fmt.Errorf("ext4: inode %d: %w", ino, ErrNotDir)
	}
	if in.HasInlineData() {
		base := int64(-1)
		if o, ok := f.inodeByte(ino); ok {
			base = o + 40 + 4
		}
		f.scanChunk(in.block[4:], base, false, deleted, fn)
		if val, ok, err := in.findXattr(7, "data"); err == nil && ok && len(val) > 0 {
			f.scanChunk(val, -1, false, deleted, fn)
		}
		return nil
	}
	if err := f.checkSize(in); err != nil {
		return err
	}
	m, err := f.mapInode(in)
	if err != nil {
		return err
	}
	index := f.htreeIndex(in, m)
	bs := f.bs
	return f.dirRuns(in, m, func(b []byte, lb0, pb0 uint64, readErr error) (bool, error) {
		for j := uint64(0); j < uint64(len(b))/bs; j++ {
			lb, pb := lb0+j, pb0+j
			if index[lb] {
				// The htree root ("." and "..", whose record covers the
				// index) and index nodes: no other records.
				continue
			}
			blk := b[j*bs : (j+1)*bs]
			// A run that cannot be read whole is read block by block,
			// so only its unreadable blocks are skipped.
			if readErr != nil && f.readBlocks(blk, pb) != nil {
				continue
			}
			f.scanChunk(blk, int64(pb*bs), lb == 0, deleted, fn)
		}
		return false, nil
	})
}

// InodeAllocated reports whether inode ino is marked in use in its group's
// inode bitmap (false for a group whose inode table was never
// initialised).
func (f *FS) InodeAllocated(ino uint32) (bool, error) {
	sb := f.sb
	if ino < 1 || ino > sb.InodesCount {
		return false, fmt.Errorf("ext4: inode %d out of range 1..%d: %w", ino, sb.InodesCount, ErrCorrupt)
	}
	g := (ino - 1) / sb.InodesPerGroup
	i := (ino - 1) % sb.InodesPerGroup
	if g >= f.ngroup || f.ibitmap[g] == 0 {
		return false, fmt.Errorf("ext4: inode bitmap of group %d: %w", g, ErrCorrupt)
	}
	if f.bgFlags[g]&bgInodeUninit != 0 && sb.FeatureROCompat&(rocompatGdtCsum|rocompatMetadataCsum) != 0 {
		return false, nil
	}
	if bm := f.inodeBitmap(g); bm != nil {
		return bm[i/8]&(1<<(i%8)) != 0, nil
	}
	var c [1]byte
	if err := f.readAt(c[:], int64(f.ibitmap[g]*f.bs)+int64(i/8)); err != nil {
		return false, fmt.Errorf("ext4: inode bitmap of group %d at block %d: %w", g, f.ibitmap[g], err)
	}
	return c[0]&(1<<(i%8)) != 0, nil
}

// BlockAllocated reports whether block blk is marked in use in its
// group's block bitmap (bigalloc: its cluster). A group whose bitmap was
// never initialised holds only its own metadata: its other blocks are
// free.
func (f *FS) BlockAllocated(blk uint64) (bool, error) {
	sb := f.sb
	if blk >= sb.BlocksCount || blk < uint64(sb.FirstDataBlock) {
		return false, fmt.Errorf("ext4: block %d beyond %d blocks: %w", blk, sb.BlocksCount, ErrCorrupt)
	}
	r := blk - uint64(sb.FirstDataBlock)
	g := r / uint64(sb.BlocksPerGroup)
	bit := r % uint64(sb.BlocksPerGroup)
	if sb.FeatureROCompat&rocompatBigalloc != 0 && sb.ClustersPerGrp != 0 && sb.BlocksPerGroup >= sb.ClustersPerGrp {
		bit /= uint64(sb.BlocksPerGroup / sb.ClustersPerGrp)
	}
	if g >= uint64(f.ngroup) || f.bbitmap[g] == 0 {
		return false, fmt.Errorf("ext4: block bitmap of group %d: %w", g, ErrCorrupt)
	}
	if f.bgFlags[g]&0x2 != 0 && sb.FeatureROCompat&(rocompatGdtCsum|rocompatMetadataCsum) != 0 {
		return false, nil
	}
	var c [1]byte
	if err := f.readAt(c[:], int64(f.bbitmap[g]*f.bs)+int64(bit/8)); err != nil {
		return false, fmt.Errorf("ext4: block bitmap of group %d at block %d: %w", g, f.bbitmap[g], err)
	}
	return c[0]&(1<<(bit%8)) != 0, nil
}

// InodeBitmap returns group g's inode bitmap, InodesPerGroup bits (all
// clear for a group whose inode table was never initialised).
func (f *FS) InodeBitmap(g uint32) ([]byte, error) {
	sb := f.sb
	if g >= f.ngroup || f.ibitmap[g] == 0 {
		return nil, fmt.Errorf("ext4: inode bitmap of group %d: %w", g, ErrCorrupt)
	}
	if bm := f.inodeBitmap(g); bm != nil {
		return slices.Clone(bm), nil
	}
	b := make([]byte, (sb.InodesPerGroup+7)/8)
	if f.bgFlags[g]&bgInodeUninit != 0 && sb.FeatureROCompat&(rocompatGdtCsum|rocompatMetadataCsum) != 0 {
		return b, nil
	}
	if err := f.readAt(b, int64(f.ibitmap[g]*f.bs)); err != nil {
		return nil, fmt.Errorf("ext4: inode bitmap of group %d at block %d: %w", g, f.ibitmap[g], err)
	}
	return b, nil
}

// ScanInodes calls fn for every inode slot of every group that may hold
// an inode (the used part of each table), reading each table in large
// runs: its number, its inode-bitmap bit, its raw i_ctime (0 for a slot
// never used) and its raw bytes (valid during the call only; ParseRaw
// decodes them). A group whose table cannot be read is skipped and its
// error returned at the end.
func (f *FS) ScanInodes(fn func(ino uint32, allocated bool, ctime uint32, raw []byte)) error {
	sb := f.sb
	isz := uint64(sb.InodeSize)
	const run = 1 << 20
	var firstErr error
	buf := make([]byte, run)
	for g := uint32(0); g < f.ngroup; g++ {
		bm, err := f.InodeBitmap(g)
		if err != nil {
			firstErr = cmpOr(firstErr, err)
			continue
		}
		used := uint64(f.itUsed[g])
		mem := f.rawInode(g, 0) != nil
		for i := uint64(0); i < used; {
			n := min(used-i, run/isz)
			b := buf[:n*isz]
			off := int64(f.itable[g]*f.bs + i*isz)
			if mem {
				b = f.tables.table[g][i*isz : (i+n)*isz]
			} else if err := f.readAt(b, off); err != nil {
				firstErr = cmpOr(firstErr, fmt.Errorf("ext4: inode table of group %d at byte %d: %w", g, off, err))
				break
			}
			for j := uint64(0); j < n; j++ {
				ino := uint64(g)*uint64(sb.InodesPerGroup) + i + j + 1
				if ino > uint64(sb.InodesCount) {
					break
				}
				raw := b[j*isz : (j+1)*isz]
				k := i + j
				fn(uint32(ino), bm[k/8]&(1<<(k%8)) != 0, le32(raw, 0xC), raw)
			}
			i += n
		}
	}
	return firstErr
}

// ParseRaw decodes the raw bytes of inode ino (one inode-size slot).
func (f *FS) ParseRaw(ino uint32, raw []byte) (*Inode, error) {
	if len(raw) != f.sb.InodeSize {
		return nil, fmt.Errorf("ext4: inode %d: %d bytes, inode size %d: %w", ino, len(raw), f.sb.InodeSize, ErrCorrupt)
	}
	return f.parseInode(ino, raw)
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// OrphanList follows the superblock's list of inodes deleted while still
// open (s_last_orphan, chained through each inode's dtime field), at most
// InodesCount steps, and returns the inodes on it.
func (f *FS) OrphanList() ([]uint32, error) {
	var out []uint32
	seen := map[uint32]bool{}
	for ino := f.sb.LastOrphan; ino != 0; {
		if seen[ino] || uint32(len(out)) >= f.sb.InodesCount {
			return out, fmt.Errorf("ext4: orphan list loops at inode %d: %w", ino, ErrCorrupt)
		}
		seen[ino] = true
		in, err := f.Inode(ino)
		if err != nil {
			return out, fmt.Errorf("ext4: orphan list: %w", err)
		}
		out = append(out, ino)
		ino = in.Dtime
	}
	return out, nil
}

// OpenDeleted opens the content of a deleted inode as a best effort: its
// block map must still be there (a kernel clears it on delete; debugfs and
// some older kernels do not) and every data block must be free in the
// block bitmap (not reused by another file). The content is what those
// blocks hold now.
func (f *FS) OpenDeleted(ino uint32) (*File, error) {
	in, err := f.Inode(ino)
	if err != nil {
		return nil, err
	}
	if alloc, err := f.InodeAllocated(ino); err != nil {
		return nil, err
	} else if alloc {
		return nil, fmt.Errorf("ext4: inode %d is in use: %w", ino, ErrNotDeleted)
	}
	if !in.IsRegular() {
		return nil, fmt.Errorf("ext4: deleted inode %d is not a regular file: %w", ino, ErrNotRecoverable)
	}
	if in.Size == 0 {
		// A kernel truncates a file it deletes: size 0 and no map.
		return nil, fmt.Errorf("ext4: deleted inode %d: size 0 (truncated on delete): %w", ino, ErrNotRecoverable)
	}
	fl, err := f.openInode(in, "")
	if err != nil {
		return nil, fmt.Errorf("ext4: deleted inode %d: %w: %w", ino, ErrNotRecoverable, err)
	}
	var mapped uint64
	for _, e := range fl.ext {
		mapped += e.Len
		for b := e.Physical; b < e.Physical+e.Len; b++ {
			alloc, err := f.BlockAllocated(b)
			if err != nil {
				return nil, fmt.Errorf("ext4: deleted inode %d: %w: %w", ino, ErrNotRecoverable, err)
			}
			if alloc {
				return nil, fmt.Errorf("ext4: deleted inode %d: block %d is in use again: %w", ino, b, ErrNotRecoverable)
			}
		}
	}
	if !fl.mem && fl.size > 0 && mapped == 0 {
		return nil, fmt.Errorf("ext4: deleted inode %d: its block map was cleared: %w", ino, ErrNotRecoverable)
	}
	return fl, nil
}

// Errors of OpenDeleted.
var (
	ErrNotDeleted     = fmt.Errorf("ext4: not a deleted inode")
	ErrNotRecoverable = fmt.Errorf("ext4: deleted file not recoverable")
)

// inodeExtents is the block map an inode holds now (a freed one's stale
// map included).
func (f *FS) inodeExtents(ino uint32) ([]Extent, error) {
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
