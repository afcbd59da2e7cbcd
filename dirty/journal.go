package dirty

import (
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/ext4"
	"github.com/vmscope/vmscope/fsparse/jbd2"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// Recovered returns the volume as journal recovery would leave it, when its
// ext3/ext4 journal needs recovery (an image of a running or crashed
// guest): its Device and Ext4 read through the in-memory replay of the
// committed transactions (package fsparse/jbd2; nothing is written), and
// the replayed filesystem blocks. Otherwise it returns v itself and nil.
// An index built or a poll run on the returned volume sees the committed
// changes still in the journal.
func Recovered(ctx context.Context, v *fsparse.Volume) (*fsparse.Volume, *jbd2.Overlay, error) {
	if v.Ext4() == nil || !jbd2.NeedsRecovery(v.Ext4().Super()) {
		return v, nil, nil
	}
	ov, err := jbd2.Replay(ctx, v.Ext4(), v.Device)
	if err != nil {
		return nil, nil, fmt.Errorf("dirty: %s: journal replay: %w", v.ID, err)
	}
	if len(ov.Blocks) == 0 {
		return v, ov, nil
	}
	size := v.Device.Size()
	dev := io.NewSectionReader(ov.ReaderAt(v.Device), 0, size)
	e, err := ext4.Open(dev, size)
	if err != nil {
		return nil, nil, fmt.Errorf("dirty: %s: the filesystem after journal replay: %w", v.ID, err)
	}
	return v.WithExt4(dev, size, e), ov, nil
}

// replayedRanges returns the byte ranges of the volume's device that the
// overlay replaces: their home blocks did not change on disk, yet the view
// did, so a poll must look at them as dirty.
func replayedRanges(ov *jbd2.Overlay) rangeset.Set {
	var s rangeset.Set
	if ov == nil {
		return s
	}
	blocks := make([]uint64, 0, len(ov.Blocks))
	for b := range ov.Blocks {
		blocks = append(blocks, b)
	}
	slices.Sort(blocks)
	for _, b := range blocks {
		s.Add(int64(b)*ov.BlockSize, int64(b+1)*ov.BlockSize)
	}
	return s
}
