package dirty

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vmscope/vmscope/cow"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/qcow"
)

// A Source is a dirty source of one image: the guest byte ranges written
// since a cursor, and the cursor to save for the next poll. The copy-on-write
// overlays (package cow), a persistent qcow2 bitmap, the block-hash index of
// a raw image and an older image of the same disk are sources; VMDK change
// tracking or a cloud block-change API would be more.
type Source interface {
	// String names the source as a Selection and the state record it:
	// cow, bitmap:NAME, hash, base:PATH.
	String() string
	// Since returns the guest ranges written since the cursor of prev (nil:
	// none, the first poll) and puts the cursor to save in next. full
	// reports that the ranges may miss writes since prev (the cursor was
	// lost: a committed overlay, a cleared bitmap): only a full pass is
	// safe.
	Since(ctx context.Context, prev *Cursor, next *Cursor) (dirty rangeset.Set, full bool, err error)
}

// A Reference is a source that has the older image itself (base:IMAGE): the
// previous index is built from its volumes rather than kept in a state,
// and a dirty data block is compared byte for byte with it.
type Reference interface {
	Source
	Older() *fsparse.Disk
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
}

// Auto picks the source of im: its overlays when it has any, else its first
// enabled and consistent bitmap, else the block-hash index.
func Auto(im *qcow.Image) Source {
	if len(im.Layers()) > 1 {
		return &cowSource{im}
	}
	for _, b := range im.Layers()[0].Bitmaps {
		if b.Enabled && !b.InUse {
			return &bitmapSource{im, b.Name}
		}
	}
	return Hash(im)
}

// Cow is the copy-on-write source: what the overlays of im hold (cow.Dirty),
// narrowed to the blocks whose bytes changed since the last poll.
func Cow(im *qcow.Image) (Source, error) {
	if top := im.Layers()[0]; len(im.Layers()) < 2 {
		return nil, fmt.Errorf("%w: %s", cow.ErrNoOverlay, top.Path)
	}
	return &cowSource{im}, nil
}

// Bitmap is the source of the persistent dirty bitmap name of im's top
// layer, narrowed to the blocks whose bytes changed since the last poll.
func Bitmap(im *qcow.Image, name string) (Source, error) {
	top := im.Layers()[0]
	if _, ok := top.Bitmap(name); !ok {
		return nil, fmt.Errorf("dirty source %q: %w in %s", "bitmap:"+name, qcow.ErrNoBitmap, top.Path)
	}
	return &bitmapSource{im, name}, nil
}

// Hash is the block-hash index source: the chunks of im whose hash differs
// from the last poll's.
func Hash(im *qcow.Image) Source { return &chunkSource{im} }

// Base is the source of an older image of the same disk (old, its volumes
// oldDisk): the layers above the one both chains share, or every chunk
// where the two disks differ. It keeps no cursor.
func Base(old *qcow.Image, oldDisk *fsparse.Disk, cur *qcow.Image) Reference {
	return &baseSource{old, oldDisk, cur}
}

type cowSource struct{ im *qcow.Image }

func (*cowSource) String() string { return "cow" }

// Since returns the ranges written since the last poll according to the
// overlays: what the layers from the top down to the last poll's top hold
// (an external snapshot may have put new overlays above it), narrowed to
// the blocks whose bytes changed since that poll. A block the overlays did
// not hold then is compared with the layer below the last poll's top (a
// backing file: unchanged since); the others with their hash. When the last
// poll's top is gone from the chain (the overlay was committed or
// discarded), only a full pass is safe.
func (s *cowSource) Since(ctx context.Context, prev, next *Cursor) (rangeset.Set, bool, error) {
	im := s.im
	layers := im.Layers()
	next.Top = absPath(layers[0].Path)
	full := prev == nil || prev.Source != s.String()
	k := 0
	if !full {
		k = slices.IndexFunc(layers, func(l *qcow.Layer) bool { return absPath(l.Path) == prev.Top })
		if k < 0 || k+1 >= len(layers) || prev.Blocks == nil {
			full, k = true, 0
		}
	}
	d, err := cow.Dirty(ctx, im, k+1)
	if err != nil {
		return d, full, err
	}
	nh := NewBlockHashes(nil)
	next.Blocks = nh
	if full {
		// The hashes for the next poll.
		_, err = refine(ctx, im, im.Size(), d, refineRefs{next: nh, nextOld: layers[1]})
		return d, full, err
	}
	// The blocks that differed from the layer below at the last poll are
	// looked at too: an overlay made anew at the same path (the VM
	// reverted) no longer holds them, and they changed back.
	known, err := prev.Blocks.Known()
	if err != nil {
		return d, full, fmt.Errorf("dirty: poll state: block hashes: %w", err)
	}
	// The last poll's hashes are of blocks that differed from the layer
	// below its top; the next poll's, of blocks that differ from the layer
	// below today's top.
	d, err = refine(ctx, im, im.Size(), rangeset.Union(d, known),
		refineRefs{prev: prev.Blocks, next: nh, old: layers[k+1], nextOld: layers[1]})
	return d, full, err
}

type bitmapSource struct {
	im   *qcow.Image
	name string
}

func (s *bitmapSource) String() string { return "bitmap:" + s.name }

// Since returns the ranges of the bitmap narrowed to the blocks whose bytes
// changed since the last poll (the bitmap is cumulative: it holds every
// write since it was enabled). The first poll hashes the whole disk. A
// bitmap other than the last poll's is used without a full pass only when
// it was enabled at that poll (rotation: it holds every write since).
func (s *bitmapSource) Since(ctx context.Context, prev, next *Cursor) (rangeset.Set, bool, error) {
	im := s.im
	top := im.Layers()[0]
	full := prev == nil || prev.Source != s.String() && !s.rotated(prev)
	next.BitmapSets = map[string][]rangeset.Range{}
	var d rangeset.Set
	for _, b := range top.Bitmaps {
		if b.Enabled && !b.InUse {
			set, err := top.BitmapDirty(ctx, b.Name)
			if err != nil {
				return set, full, err
			}
			next.BitmapSets[b.Name] = set.Ranges()
			if b.Name == s.name {
				d = set
			}
		}
	}
	if _, ok := next.BitmapSets[s.name]; !ok { // disabled (rotated out), or refused
		var err error
		if d, err = top.BitmapDirty(ctx, s.name); err != nil {
			return d, full, err
		}
	}
	// An enabled bitmap only grows. One that holds less than it did at the
	// last poll was cleared, or removed and added again: the writes before
	// that are lost, only a full pass is safe.
	if !full {
		if was, ok := prev.BitmapSets[s.name]; ok && !rangeset.Subtract(rangeset.Of(was...), d).Empty() {
			full = true
		}
	}
	if full || prev.Blocks == nil {
		var err error
		next.Blocks, err = hashDisk(ctx, im, im.Size())
		return d, true, err
	}
	next.Blocks = prev.Blocks
	d, err := refine(ctx, im, im.Size(), d, refineRefs{prev: prev.Blocks, next: prev.Blocks})
	return d, false, err
}

// rotated reports whether the bitmap was enabled at the last poll, which
// used another bitmap: it holds every write since that poll (the rotation
// of incremental backup: a new bitmap is added and the old one disabled in
// one transaction, the poll reads the old one).
func (s *bitmapSource) rotated(prev *Cursor) bool {
	_, enabled := prev.BitmapSets[s.name]
	return strings.HasPrefix(prev.Source, "bitmap:") && enabled
}

type chunkSource struct{ im *qcow.Image }

func (*chunkSource) String() string { return "hash" }

// Since hashes the image's data in chunks and returns the chunks whose hash
// differs from the last poll's (whatever source that poll used: the hashes
// are the image's).
func (s *chunkSource) Since(ctx context.Context, prev, next *Cursor) (rangeset.Set, bool, error) {
	im := s.im
	next.Chunk = DefaultChunk
	data, err := im.DataRanges(ctx)
	if err != nil {
		return rangeset.Set{}, false, err
	}
	if next.Hashes, err = ChunkHashesData(ctx, im, im.Size(), DefaultChunk, data); err != nil {
		return rangeset.Set{}, false, err
	}
	if prev == nil {
		return rangeset.Set{}, true, nil
	}
	full := prev.Chunk != DefaultChunk || prev.Hashes == nil
	return HashDirty(prev.Hashes, next.Hashes, DefaultChunk, im.Size()), full, nil
}

type baseSource struct {
	old     *qcow.Image
	oldDisk *fsparse.Disk
	cur     *qcow.Image
}

func (s *baseSource) String() string {
	if _, _, ok := cow.Common(s.old, s.cur); ok {
		return "cow"
	}
	return "compare"
}

func (s *baseSource) Older() *fsparse.Disk { return s.oldDisk }

// Since returns where the two images can differ: when they share a layer,
// what the layers above it hold in either chain (cow.Between); otherwise
// the 64 KiB chunks whose bytes differ. The cursors are not used.
func (s *baseSource) Since(ctx context.Context, _, _ *Cursor) (rangeset.Set, bool, error) {
	d, ok, err := cow.Between(ctx, s.old, s.cur)
	if err != nil || ok {
		return d, false, err
	}
	d, err = compareDisks(ctx, s.old, s.cur)
	return d, false, err
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
