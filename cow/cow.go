// Package cow finds the dirty guest ranges of a multi-image VM: in a qcow2
// backing chain base ← … ← overlay, the clusters a layer holds itself are
// exactly the guest ranges written since that layer was created
// (copy-on-write acquisition). The ranges written after layer i was frozen
// are the union of what the layers above it hold.
//
// What it promises:
//   - Read-only: it only walks the L1/L2 tables of the layers, through
//     disk.Layer.Allocated (the semantics of `qemu-img map`, depth 0).
//   - The result is a rangeset.Set of guest bytes clipped to the top layer's
//     virtual size, the currency every dirty source shares.
//   - Source is the copy-on-write dirty source (a dirty/source.Source): the
//     ranges the overlays hold, narrowed by the block hashes of the last
//     poll to the blocks whose bytes changed since.
package cow

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// ErrNoOverlay: the image has no layer above the one asked for, so there is
// nothing copy-on-write can say (a single raw or qcow2 file).
var ErrNoOverlay = errors.New("cow: image has no overlay layer")

// Dirty returns the guest byte ranges written after layer since of im was
// frozen: the union of what layers 0..since-1 hold (Layers()[0] is the top).
// since = 1 is the usual case (what the top overlay holds, written since it
// was made on its backing file); since = len(Layers())-1 is everything
// written after the base. Zero clusters count: a discard or a write of zeros
// in an overlay hides the bytes below it, so it is a change.
func Dirty(ctx context.Context, im *disk.Image, since int) (rangeset.Set, error) {
	layers := im.Layers()
	if len(layers) < 2 {
		return rangeset.Set{}, fmt.Errorf("%w: %s is a single %s file (use a bitmap, the hash index or --base)", ErrNoOverlay, layers[0].Name(), layers[0].Format())
	}
	if since < 1 || since >= len(layers) {
		return rangeset.Set{}, fmt.Errorf("cow: layer %d: the chain of %s has layers 1..%d below the top", since, layers[0].Name(), len(layers)-1)
	}
	var out rangeset.Set
	for _, l := range layers[:since] {
		a, err := l.Allocated(ctx)
		if err != nil {
			return rangeset.Set{}, fmt.Errorf("cow: allocation of layer %s: %w", l.Name(), err)
		}
		out = rangeset.Union(out, a)
	}
	return out.Clip(0, im.Size()), nil
}

// Common finds where two chains meet: the index in a and in b of the first
// layer (from the top) that is the same file in both, or ok=false. Two
// images of the same disk that share a base (yesterday's overlay and
// today's) differ only inside the ranges that the layers above the shared
// one hold in either chain.
func Common(a, b *disk.Image) (ia, ib int, ok bool) {
	la, lb := a.Layers(), b.Layers()
	for i, x := range la {
		for j, y := range lb {
			if sameFile(x.Name(), y.Name()) {
				return i, j, true
			}
		}
	}
	return 0, 0, false
}

// Between returns the guest ranges in which images a and b can differ when
// they share a layer: the union of what the layers above the shared one hold
// in each chain, plus the size difference. ok=false when they share no layer
// (then every byte may differ).
func Between(ctx context.Context, a, b *disk.Image) (rangeset.Set, bool, error) {
	ia, ib, ok := Common(a, b)
	if !ok {
		return rangeset.Set{}, false, nil
	}
	var out rangeset.Set
	for _, side := range []struct {
		im *disk.Image
		n  int
	}{{a, ia}, {b, ib}} {
		for _, l := range side.im.Layers()[:side.n] {
			s, err := l.Allocated(ctx)
			if err != nil {
				return rangeset.Set{}, false, fmt.Errorf("cow: allocation of layer %s: %w", l.Name(), err)
			}
			out = rangeset.Union(out, s)
		}
	}
	lo, hi := min(a.Size(), b.Size()), max(a.Size(), b.Size())
	out.Add(lo, hi)
	return out, true, nil
}

// sameFile compares two layer paths by file identity, so that a chain
// reached through a symlink still meets the same chain reached directly.
func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}
