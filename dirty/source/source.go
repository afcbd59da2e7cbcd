// Package source defines what a dirty source is (Source: the guest byte
// ranges written since a cursor, and the cursor to save) and the 4 KiB
// block hashes the cumulative sources narrow their ranges with (Refine).
// Package dirty maps the ranges to files; the sources themselves live with
// their mechanism: package cow (copy-on-write overlays), and package dirty
// for the bitmap, hash and base sources. It sits below both so that cow
// implements Source without importing dirty.
package source

import (
	"context"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// A Source is a dirty source of one image: the guest byte ranges written
// since a cursor, and the cursor to save for the next poll. VMDK change
// tracking or a cloud block-change API would be more sources.
type Source interface {
	// String names the source as a selection and the poll state record
	// it: cow, bitmap:NAME, hash.
	String() string
	// Since returns the guest ranges written since the cursor of prev (nil:
	// none, the first poll) and puts the cursor to save in next. full
	// reports that the ranges may miss writes since prev (the cursor was
	// lost: a committed overlay, a cleared bitmap): only a full pass is
	// safe.
	Since(ctx context.Context, prev *Cursor, next *Cursor) (dirty rangeset.Set, full bool, err error)
}

// Cursor is where a source's last poll left off, kept in the poll state.
type Cursor struct {
	Source string `json:"source"` // the dirty source of the last poll
	Chunk  int64  `json:"chunk,omitempty"`
	// Hashes is the block-hash index (hash source).
	Hashes []uint64 `json:"-"`
	// Top is the top layer of the chain at the last poll (cow source):
	// the next poll's overlays are the layers from the top down to it.
	Top string `json:"top,omitempty"`
	// BitmapSets are the enabled, consistent bitmaps of the image at the
	// last poll (bitmap source) and their dirty ranges then. Each holds
	// every write since that poll, so the next poll may use any of them
	// (bitmap rotation); an enabled bitmap only grows, so one that holds
	// less now was cleared (or removed and added again) since.
	BitmapSets map[string][]rangeset.Range `json:"bitmap_sets,omitempty"`
	// Blocks are the hashes of 4 KiB blocks at the last poll (blocks.go):
	// for cow, of the blocks the overlays held; for bitmap, of the whole
	// disk.
	Blocks *BlockHashes `json:"-"`
	// Live is the cursor of a running QEMU's disk (package dirty/live).
	Live *LiveCursor `json:"live,omitempty"`
}

// LiveCursor is where a live poll left off: the QEMU block node it read
// (its identity: node name, image file, size) and the tracking bitmap it
// created at its point in time, which the next poll reads.
type LiveCursor struct {
	Node   string `json:"node"`
	Bitmap string `json:"bitmap"`
}
