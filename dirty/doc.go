// Package dirty turns dirty guest byte ranges into the files that changed,
// through the filesystem's own metadata, and keeps the poll state that makes
// the next poll cost what changed rather than what exists.
//
// Every dirty source ([Source]: a copy-on-write overlay (cow.Source), a
// persistent qcow2 bitmap, a block-hash index of a raw image, a second
// image of the same disk) yields a rangeset.Set of guest bytes written since its cursor, and
// the cursor to save. What the mapping needs from a filesystem is [FS]
// (inode tables, records with the blocks each inode owns, directory
// listings, the journal); ext4 implements it. A volume's ranges are found
// through its map to disk ranges ([Extent]), not a shift by one offset.
// The cumulative sources (overlay, bitmap) are first narrowed to the 4 KiB
// blocks whose bytes changed since the last poll, by the block hashes the
// poll state keeps (package dirty/source). [Poll] takes the ranges of one volume,
// turns them into filesystem blocks and classifies them:
//
//   - inode-table blocks: every inode slot in them is compared with its
//     previous record: added, deleted, content changed (size, block map,
//     symlink target), metadata-only (mode, owner, times, links);
//   - blocks owned by a file (data, directory, extent-tree, xattr) through
//     the block → inode index of the previous index: the owners are due. A
//     file whose inode did not change (content overwritten in place and its
//     timestamps restored) is still found here; it is reported only when its
//     bytes really differ (compared with the old view's blocks, or with the
//     sha256 kept in the state), because a dirty source is coarser than a
//     block (clusters, granules, cumulative bitmaps);
//   - directory blocks: the directory is re-listed and compared with its
//     previous entries: names added, removed, renamed (hard links are
//     followed; every change carries every path of its inode);
//   - journal blocks and other metadata (bitmaps, descriptors, superblock)
//     are not files: they are counted, not mapped.
//
// A journal that needs recovery (an image of a running or crashed guest) is
// replayed in memory ([Recovered], package fsparse/jbd2): the index, the
// poll and the files handed to the scanner are read through the committed
// transactions, and the blocks the replay replaces count as dirty.
//
// An [Index] is the previous view: built from an older image of the same
// disk ([BuildIndex], metadata only: inode tables, extent trees,
// directories) or kept in the poll state (package dirty/state). A stored
// index ([StoredIndex]) is read on demand: a poll reads the digests of the
// dirty inode-table blocks' slots, the records of the inodes whose slot
// changed or whose blocks are dirty (the block → inode runs are looked up
// by range) and the previous entries of the directories it re-lists; its
// result is a [Delta] that the state saves alone. A poll's cost follows
// the dirty ranges, not the size of the filesystem. The first poll of an
// overlay whose base's index is known ([SelectOver]: a base shared by a
// fleet's overlays, indexed and scanned once) is such a poll too, against
// the base's index, so it costs what the overlay holds; an index a poll
// derives shares its unchanged records with the index it came from, which
// the poll never changes.
// Evidence is read-only: nothing here writes to an image.
package dirty

import "github.com/vmscope/vmscope/vmerr"

// ErrUnsupportedFS: the volume holds a filesystem this package cannot map
// blocks of (only ext2/3/4 so far); its files are all due.
var ErrUnsupportedFS = vmerr.New("dirty: block mapping needs an ext2/3/4, XFS or NTFS filesystem", vmerr.ErrUnsupported)
