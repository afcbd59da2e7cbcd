package dirty

import (
	"fmt"
	"hash/fnv"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/ntfs"
	"github.com/vmscope/vmscope/fsparse/xfs"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// FS is what the dirty mapping needs from a filesystem: where its inode
// slots live (a dirty inode-table block names the inodes to compare), each
// inode's record with the runs of blocks it owns (the block → owner index is
// made of them), the metadata blocks that are no file, and a directory's
// entries to re-list. ext4 implements it (ext4FS); NTFS (MFT records) and
// XFS (inode chunks) will.
type FS interface {
	// BlockSize is the bytes of a block; Blocks the blocks of the volume.
	BlockSize() int64
	Blocks() uint64
	// InodeTables returns the runs of blocks that hold inode slots,
	// sorted by start.
	InodeTables() []InodeTable
	// SlotSize is the bytes of one inode slot.
	SlotSize() int64
	// SlotsIn returns the inodes [lo, hi) whose slots block blk of table
	// t holds, in order from the block's start.
	SlotsIn(t InodeTable, blk uint64) (lo, hi uint32)
	// SlotInUse tells from a slot's raw bytes whether it holds a live
	// inode.
	SlotInUse(raw []byte) bool
	// Tracked reports whether inode ino is a file of the user's tree (not
	// the journal or another reserved inode).
	Tracked(ino uint32) bool
	// Record reads inode ino into a record with the runs of blocks it
	// owns; nil, nil for a free slot. A block map that cannot be read is
	// noted in the record's ReadErr.
	Record(ino uint32) (*FileRec, error)
	// ReadDir lists the entries of directory ino.
	ReadDir(ino uint32) ([]DirEntry, error)
	// Journal returns the blocks of the filesystem's journal: metadata
	// that is no file (counted, not mapped).
	Journal() rangeset.Set
}

// InodeTable is a run of blocks holding inode slots.
type InodeTable struct {
	Start, Len uint64 // in blocks
	Group      uint32 // the filesystem's own number for it (ext4: the group)
	Used       uint32 // the slots from its start that may be in use
}

// DirEntry is one entry of a directory listing.
type DirEntry struct {
	Name string
	Ino  uint32
}

// OpenFS returns the dirty view of the filesystem of volume v, or an error
// wrapping ErrUnsupportedFS.
func OpenFS(v *fsparse.Volume) (FS, error) {
	if v.OnOtherDisks() { // the dirty ranges of one disk do not cover it
		return nil, fmt.Errorf("dirty: volume %s lies partly on another disk: %w", v.ID, ErrUnsupportedFS)
	}
	if x := xfs.Of(v); x != nil {
		return newXFSFS(v, x)
	}
	if x, ok := v.FS.(*ntfs.FS); ok {
		return newNTFSFS(v.ID, x)
	}
	if v.Ext4() == nil {
		return nil, fmt.Errorf("dirty: volume %s is %s: %w", v.ID, v.Type, ErrUnsupportedFS)
	}
	return newExt4FS(v), nil
}

// rooted is an FS whose root directory is not inode 2 (XFS).
type rooted interface{ RootIno() uint32 }

// rootOf is the root directory's inode of fsys.
func rootOf(fsys FS) uint32 {
	if r, ok := fsys.(rooted); ok {
		return r.RootIno()
	}
	return rootIno
}

// slotSums digests each inode slot of block blk of inode table t (raw: the
// block's bytes), never 0 (0 means unknown).
func slotSums(fsys FS, t InodeTable, blk uint64, raw []byte) []uint64 {
	first, end := fsys.SlotsIn(t, blk)
	isz := fsys.SlotSize()
	out := make([]uint64, end-first)
	for i := range out {
		h := fnv.New64a()
		h.Write(raw[int64(i)*isz : int64(i+1)*isz])
		out[i] = max(h.Sum64(), 1)
	}
	return out
}
