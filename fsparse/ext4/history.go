package ext4

import "fmt"

// Older copies of metadata blocks (from the journal, fsparse/jbd2) are
// decoded here with the filesystem's geometry: what an inode-table block
// held, what a directory block named.

// InodesInCopy decodes the inodes that b, a copy of filesystem block blk,
// holds when blk lies in a group's inode table (in the part that may hold
// inodes); ok is false for any other block. Slots that do not decode are
// left out.
func (f *FS) InodesInCopy(blk uint64, b []byte) (out []*Inode, ok bool) {
	sb := f.sb
	if uint64(len(b)) != f.bs {
		return nil, false
	}
	per := f.bs / uint64(sb.InodeSize)
	tblocks := (uint64(sb.InodesPerGroup)*uint64(sb.InodeSize) + f.bs - 1) / f.bs
	for g := uint32(0); g < f.ngroup; g++ {
		it := f.itable[g]
		if blk < it || blk >= it+tblocks {
			continue
		}
		idx := (blk - it) * per
		for j := uint64(0); j < per; j++ {
			if idx+j >= uint64(f.itUsed[g]) {
				break
			}
			ino := uint64(g)*uint64(sb.InodesPerGroup) + idx + j + 1
			if ino > uint64(sb.InodesCount) {
				break
			}
			raw := b[j*uint64(sb.InodeSize) : (j+1)*uint64(sb.InodeSize)]
			in, err := f.parseInode(uint32(ino), raw)
			if err != nil || in.Mode == 0 {
				continue
			}
			out = append(out, in)
		}
		return out, true
	}
	return nil, false
}

// DirCopy is what a copy of a directory block names.
type DirCopy struct {
	// Self is the directory's own inode when the block is its first
	// (it starts with "." and ".."), else 0.
	Self uint32
	// Entries are its live records (no "." or "..", names valid).
	Entries []DirSlot
}

// DirInCopy decodes b, a copy of a filesystem block, as a directory block
// of this filesystem: ok only when its records chain over the whole block
// (each rec_len 4-aligned, at least 12, inside the block, name fitting,
// inode in range), so that no other kind of block passes by chance.
func (f *FS) DirInCopy(b []byte) (d DirCopy, ok bool) {
	if uint64(len(b)) != f.bs {
		return d, false
	}
	where := func() string { return "ext4: directory block copy" }
	n := 0
	_, err := f.parseDirChunk(b, where, -1, true, func(name []byte, ino uint32, ft uint8, off int64, bad string) bool {
		n++
		if bad != "" {
			return false
		}
		t, known := direntType(ft)
		d.Entries = append(d.Entries, DirSlot{Name: string(name), Ino: ino, Type: t, TypeKnown: known, Offset: -1})
		return false
	})
	if err != nil {
		return DirCopy{}, false
	}
	if len(b) >= 24 && le32(b, 0) != 0 && b[6] == 1 && b[8] == '.' && recLen(le16(b, 4), len(b)) == 12 {
		d.Self = le32(b, 0)
	}
	if n == 0 && d.Self == 0 {
		return DirCopy{}, false
	}
	return d, true
}

// String names a copy's decoded directory for errors and tests.
func (d DirCopy) String() string { return fmt.Sprintf("dir %d: %d entries", d.Self, len(d.Entries)) }
