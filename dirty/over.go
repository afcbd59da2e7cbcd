package dirty

import (
	"context"
	"fmt"
	"slices"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// SelectOver is Select for the first poll of im (its volumes d), an image
// over a base image whose index is known: base (its volumes baseDisk) is an
// older image of the same disk, a layer of im's chain, and bases holds, per
// volume ID, the full index of base's volume (BuildIndex) in which every
// regular file carries its content digest and its verdict with the rules
// of rulesDigest (a whole scan of the base: fleet base sharing).
//
// Instead of indexing every file of im, each volume is polled against its
// base index with the ranges the layers above the base hold, the base's
// bytes as reference (the Base source): only the files im changed are due,
// and the new index is the base's with those changes, so the files im did
// not change keep the base's digest and verdict. The cursor saved for the
// next poll is src's, as after a first poll with Select. A volume without a
// base index, or not the base's filesystem, is indexed whole and every
// file of it is due (as Select). When st holds a poll already, it is
// Select.
//
// The base indexes are read, never changed: one may serve many overlays.
func SelectOver(ctx context.Context, im *disk.Image, d *fsparse.Disk, src Source, st Store, rulesDigest string,
	base *disk.Image, baseDisk *fsparse.Disk, bases map[string]*Index) (*Selection, error) {
	id := Identity(im, d)
	prev, err := st.Load(id)
	if err != nil {
		return nil, err
	}
	if prev != nil {
		return Select(ctx, im, d, src, st, rulesDigest)
	}
	sel := &Selection{Source: src.String(), Disk: d, store: st, Stats: map[string]Stats{},
		next: &Snapshot{Identity: id, RulesDigest: rulesDigest, Cursor: Cursor{Source: src.String()}, Indexes: map[string]*Index{}}}
	// The cursor of the next poll: what a first poll of src records.
	if _, _, err := src.Since(ctx, nil, &sel.next.Cursor); err != nil {
		return nil, err
	}
	above, _, err := Base(base, baseDisk, im).Since(ctx, nil, nil)
	if err != nil {
		return nil, err
	}
	for _, v := range d.Volumes {
		if !mappable(v) {
			sel.Errors = append(sel.Errors, fmt.Errorf("%s: %w", v.ID, ErrUnsupportedFS))
			continue
		}
		bx := bases[v.ID]
		ov, err := baseDisk.Volume(v.ID)
		shared := bx != nil && !bx.stored() && err == nil && mappable(ov) && ov.UUID == v.UUID && bx.UUID == v.UUID && slices.Equal(ov.Segments, v.Segments)
		var oldReplayed rangeset.Set
		if shared {
			ov, oldReplayed = sel.recover(ctx, ov)
			delete(sel.recovered, ov.ID) // Open reads im
		}
		v, replayed := sel.recover(ctx, v)
		var x *Index
		if shared {
			part := v.FromDisk(above)
			part.AddSet(replayed)
			part.AddSet(oldReplayed)
			res, err := Poll(ctx, v, bx, part, WithOldDevice(ov.Device), withDeferredHashes())
			if err != nil {
				return nil, err
			}
			x = sel.addPoll(v, res, replayed)
		} else if x, err = sel.addFull(ctx, v); err != nil {
			return nil, err
		}
		sel.next.Indexes[v.ID] = x
	}
	SortChanges(sel.Changes)
	return sel, nil
}
