package cow

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/vmscope/vmscope/dirty/source"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// Source is the copy-on-write dirty source of an image (a source.Source):
// what its overlays hold (Dirty), narrowed to the 4 KiB blocks whose bytes
// changed since the last poll.
type Source struct{ im *disk.Image }

// NewSource returns the copy-on-write source of im, which needs an overlay.
func NewSource(im *disk.Image) (*Source, error) {
	if top := im.Layers()[0]; len(im.Layers()) < 2 {
		return nil, fmt.Errorf("%w: %s", ErrNoOverlay, top.Name())
	}
	return &Source{im}, nil
}

func (*Source) String() string { return "cow" }

// Since returns the ranges written since the last poll according to the
// overlays: what the layers from the top down to the last poll's top hold
// (an external snapshot may have put new overlays above it), narrowed to
// the blocks whose bytes changed since that poll. A block the overlays did
// not hold then is compared with the layer below the last poll's top (a
// backing file: unchanged since); the others with their hash. When the last
// poll's top is gone from the chain (the overlay was committed or
// discarded), only a full pass is safe.
func (s *Source) Since(ctx context.Context, prev, next *source.Cursor) (rangeset.Set, bool, error) {
	im := s.im
	layers := im.Layers()
	next.Top = absPath(layers[0].Name())
	full := prev == nil || prev.Source != s.String()
	k := 0
	if !full {
		k = slices.IndexFunc(layers, func(l disk.Layer) bool { return absPath(l.Name()) == prev.Top })
		if k < 0 || k+1 >= len(layers) || prev.Blocks == nil {
			full, k = true, 0
		}
	}
	d, err := Dirty(ctx, im, k+1)
	if err != nil {
		return d, full, err
	}
	nh := source.NewBlockHashes(nil)
	next.Blocks = nh
	if full {
		// The hashes for the next poll.
		_, err = source.Refine(ctx, im, im.Size(), d, source.Refs{Next: nh, NextOld: layers[1]})
		return d, full, err
	}
	// The blocks that differed from the layer below at the last poll are
	// looked at too: an overlay made anew at the same path (the VM
	// reverted) no longer holds them, and they changed back.
	known, err := prev.Blocks.Known()
	if err != nil {
		return d, full, fmt.Errorf("cow: poll state: block hashes: %w", err)
	}
	// The last poll's hashes are of blocks that differed from the layer
	// below its top; the next poll's, of blocks that differ from the layer
	// below today's top.
	d, err = source.Refine(ctx, im, im.Size(), rangeset.Union(d, known),
		source.Refs{Prev: prev.Blocks, Next: nh, Old: layers[k+1], NextOld: layers[1]})
	return d, full, err
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
