package dirty

import (
	"context"
	"fmt"
	"strings"

	"github.com/vmscope/vmscope/disk"
	_ "github.com/vmscope/vmscope/disk/vhd"  // a differencing VHD is a copy-on-write source
	_ "github.com/vmscope/vmscope/disk/vhdx" // a differencing VHDX is a copy-on-write source
	_ "github.com/vmscope/vmscope/disk/vmdk" // a VMDK delta is a copy-on-write source

	"github.com/vmscope/vmscope/cow"
	"github.com/vmscope/vmscope/dirty/source"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/qcow"
)

// A Source is a dirty source of one image: the guest byte ranges written
// since a cursor, and the cursor to save (package dirty/source). The
// copy-on-write overlays (cow.Source), a persistent qcow2 bitmap, the
// block-hash index of a raw image and an older image of the same disk are
// sources.
type Source = source.Source

// Cursor is where a source's last poll left off, kept in the poll state.
type Cursor = source.Cursor

// The block hashes of the cumulative sources (package dirty/source).
type (
	BlockHashes = source.BlockHashes
	HashSource  = source.HashSource
)

const (
	HashBlock = source.HashBlock
	HashGroup = source.HashGroup
)

// NewBlockHashes returns the hashes stored in src (nil: a new, empty map).
func NewBlockHashes(src HashSource) *BlockHashes { return source.NewBlockHashes(src) }

// A Reference is a source that has the older image itself (base:IMAGE): the
// previous index is built from its volumes rather than kept in a state,
// and a dirty data block is compared byte for byte with it.
type Reference interface {
	Source
	Older() *fsparse.Disk
}

// Auto picks the source of im: its overlays when it has any, else its first
// enabled and consistent bitmap, else the block-hash index.
func Auto(im *disk.Image) Source {
	if c, err := cow.NewSource(im); err == nil {
		return c
	}
	for _, b := range qcowTop(im).Bitmaps {
		if b.Enabled && !b.InUse {
			return &bitmapSource{im, b.Name}
		}
	}
	return Hash(im)
}

// Cow is the copy-on-write source: what the overlays of im hold, narrowed
// to the blocks whose bytes changed since the last poll (cow.Source).
func Cow(im *disk.Image) (Source, error) {
	c, err := cow.NewSource(im)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Bitmap is the source of the persistent dirty bitmap name of im's top
// layer, narrowed to the blocks whose bytes changed since the last poll.
func Bitmap(im *disk.Image, name string) (Source, error) {
	top := qcowTop(im)
	if _, ok := top.Bitmap(name); !ok {
		return nil, fmt.Errorf("dirty source %q: %w in %s", "bitmap:"+name, qcow.ErrNoBitmap, top.Path)
	}
	return &bitmapSource{im, name}, nil
}

// Hash is the block-hash index source: the chunks of im whose hash differs
// from the last poll's.
func Hash(im *disk.Image) Source { return &chunkSource{im} }

// Base is the source of an older image of the same disk (old, its volumes
// oldDisk): the layers above the one both chains share, or every chunk
// where the two disks differ. It keeps no cursor.
func Base(old *disk.Image, oldDisk *fsparse.Disk, cur *disk.Image) Reference {
	return &baseSource{old, oldDisk, cur}
}

type bitmapSource struct {
	im   *disk.Image
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
	top := qcowTop(im)
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
		next.Blocks, err = source.HashDisk(ctx, im, im.Size())
		return d, true, err
	}
	next.Blocks = prev.Blocks
	d, err := source.Refine(ctx, im, im.Size(), d, source.Refs{Prev: prev.Blocks, Next: prev.Blocks})
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

type chunkSource struct{ im *disk.Image }

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
	old     *disk.Image
	oldDisk *fsparse.Disk
	cur     *disk.Image
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

// qcowTop is the top layer as a qcow2 layer, the one with bitmaps; a top
// of another format has none.
func qcowTop(im *disk.Image) *qcow.Layer {
	if l, ok := im.Top().(*qcow.Layer); ok {
		return l
	}
	return &qcow.Layer{Path: im.Top().Name()}
}
