package xfs

import (
	"fmt"

	"github.com/vmscope/vmscope/vmerr"
)

const (
	logHeaderMagic = 0xFEEDBABE
	logUnmountTran = 0x20 // XLOG_UNMOUNT_TRANS in an operation header's flags
	bbSize         = 512
)

// LogState is what the internal log says about the filesystem.
type LogState struct {
	// External: the log is on another device and was not read.
	External bool
	// Dirty: the last record is not an unmount record, so the log holds
	// changes that a mount would replay (needs recovery): the metadata on
	// the disk may be older than what the guest saw.
	Dirty bool
	// Head is the basic block (512 bytes, from the log's start) after the
	// last record; Cycle its cycle number.
	Head  int64
	Cycle uint32
}

// LogState reads the internal log's cycle numbers to find its head (the
// kernel's xlog_find_head: the first basic block whose cycle is older than
// the first block's), then the last record header before it: a clean log
// ends in a record holding only the unmount operation.
func (f *FS) LogState() (LogState, error) {
	if f.sb.LogStart == 0 {
		return LogState{External: true}, nil
	}
	start, ok := f.Linear(f.sb.LogStart)
	if !ok {
		return LogState{}, sbErr(48, "log start %d outside the filesystem", f.sb.LogStart)
	}
	base := int64(start) * f.bs
	nbb := int64(f.sb.LogBlocks) * f.bs / bbSize
	b := make([]byte, bbSize)
	read := func(bb int64) ([]byte, error) {
		if err := f.readAt(b, base+bb*bbSize); err != nil {
			return nil, err
		}
		return b, nil
	}
	cycle := func(bb int64) (uint32, error) {
		b, err := read(bb)
		if err != nil {
			return 0, err
		}
		if be32(b, 0) == logHeaderMagic {
			return be32(b, 4), nil
		}
		return be32(b, 0), nil
	}
	first, err := cycle(0)
	if err != nil {
		return LogState{}, err
	}
	last, err := cycle(nbb - 1)
	if err != nil {
		return LogState{}, err
	}
	head := int64(0)
	if first != last {
		// Blocks [0, head) have cycle first, [head, nbb) the one before:
		// binary search for the first block with a cycle != first.
		lo, hi := int64(0), nbb-1 // cycle(lo) == first, cycle(hi) != first
		for hi-lo > 1 {
			mid := lo + (hi-lo)/2
			c, err := cycle(mid)
			if err != nil {
				return LogState{}, err
			}
			if c == first {
				lo = mid
			} else {
				hi = mid
			}
		}
		head = hi
	}
	st := LogState{Head: head, Cycle: first}
	// The last record header before head (a record is at most 256 KiB of
	// data plus its headers).
	limit := min(nbb, 2048)
	for k := int64(1); k <= limit; k++ {
		bb := (head - k + nbb) % nbb
		b, err := read(bb)
		if err != nil {
			return LogState{}, err
		}
		if be32(b, 0) != logHeaderMagic {
			continue
		}
		nops := be32(b, 40)
		size := be32(b, 320) // h_size: the record's in-core log buffer size (v2)
		hbb := int64(1)
		if f.sb.VersionNum&versionLogV2 != 0 && size > 32768 {
			hbb = (int64(size) + 32767) / 32768
		}
		ob, err := read((bb + hbb) % nbb)
		if err != nil {
			return LogState{}, err
		}
		st.Dirty = !(nops == 1 && ob[9]&logUnmountTran != 0)
		return st, nil
	}
	return LogState{}, vmerr.Corrupt(ErrCorrupt, "xfs log", base+head*bbSize, "%s", fmt.Sprintf("no record header in the %d basic blocks before the head", limit))
}
