package jbd2

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sort"

	"github.com/vmscope/vmscope/fsparse/ext4"
)

// Copy is one copy of a filesystem block that the journal still holds from
// a transaction, replayed or long checkpointed: the block as it was when
// that transaction committed.
type Copy struct {
	Seq     uint32 // the transaction
	FSBlock uint64 // the filesystem block it is a copy of
	JBlock  uint64 // the journal block holding it
	Escaped bool   // its first four bytes were the jbd2 magic (restored by History.Read)
}

// History is what the journal holds of earlier states of the filesystem.
type History struct {
	r *replayer
	// Copies are the logged copies of committed transactions (a commit
	// block of their sequence is in the journal, and with checksums the
	// descriptor's and the copy's checksums hold), by sequence then
	// journal block.
	Copies []Copy
}

// ReadHistory scans every block of the journal of f (device dev) for
// descriptor blocks of any transaction, not only those recovery would
// replay: the log is circular, and after a checkpoint the blocks of older
// transactions stay until the log wraps over them. One pass over the
// journal's blocks; each descriptor's tags are bounded by its block.
func ReadHistory(ctx context.Context, f *ext4.FS, dev io.ReaderAt) (*History, error) {
	r, err := open(f, dev)
	if err != nil {
		return nil, err
	}
	first, end := uint64(r.sb.First), uint64(r.sb.MaxLen-r.sb.NumFCBlocks)
	if first == 0 || first >= end {
		return nil, fmt.Errorf("jbd2: superblock: log blocks [%d, %d): %w", first, end, ErrCorrupt)
	}
	tail := 0
	if r.sb.csum() {
		tail = 4
	}
	be := binary.BigEndian
	committed := map[uint32]bool{}
	var cands []logged
	b := make([]byte, r.bs)
	for jb := first; jb < end; jb++ {
		if jb%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		if err := r.read(jb, b); err != nil {
			return nil, err
		}
		if be.Uint32(b[0:]) != magic {
			continue
		}
		seq := be.Uint32(b[8:])
		switch be.Uint32(b[4:]) {
		case typeCommit:
			if r.blockCsumOK(b, 16) {
				committed[seq] = true
			}
		case typeDescriptor:
			if !r.blockCsumOK(b, len(b)-tail) {
				continue
			}
			w := &logWalk{r: r, first: first, end: end, limit: end - first, seq: seq, blk: jb}
			if err := w.descriptor(b, tail); err != nil {
				continue // tags past one lap: not a descriptor we can use
			}
			for _, t := range w.pending {
				cands = append(cands, logged{t, seq})
			}
		}
	}
	h := &History{r: r}
	for _, c := range cands {
		if !committed[c.seq] || c.fsBlock >= r.fsN {
			continue
		}
		if r.sb.csum() {
			if err := r.read(c.jBlock, b); err != nil || !r.dataCsumOK(c.seq, b, c.sum) {
				continue
			}
		}
		h.Copies = append(h.Copies, Copy{Seq: c.seq, FSBlock: c.fsBlock, JBlock: c.jBlock, Escaped: c.flags&flagEscape != 0})
	}
	sort.SliceStable(h.Copies, func(i, j int) bool {
		a, b := h.Copies[i], h.Copies[j]
		if a.Seq != b.Seq {
			return int32(a.Seq-b.Seq) < 0
		}
		return a.JBlock < b.JBlock
	})
	return h, nil
}

// Read returns the content of copy c (one filesystem block), with an
// escaped magic number restored.
func (h *History) Read(c Copy) ([]byte, error) {
	b := make([]byte, h.r.bs)
	if err := h.r.read(c.JBlock, b); err != nil {
		return nil, err
	}
	if c.Escaped {
		binary.BigEndian.PutUint32(b, magic)
	}
	return b, nil
}
