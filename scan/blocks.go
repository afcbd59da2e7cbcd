package scan

import (
	"context"
	"fmt"
	"hash"
	"io"
	"sync/atomic"

	"github.com/hillu/go-yara/v4"
)

const (
	// DefaultBlockSize is the size of the blocks a file is handed to
	// libyara in. Files up to this size are one block (an exact whole-file
	// scan).
	DefaultBlockSize = 4 << 20
	// DefaultOverlap is how much consecutive blocks overlap.
	DefaultOverlap = 64 << 10
	// MinOverlap is the smallest overlap accepted: libyara never reports a
	// regular-expression or hex-string match longer than YR_RE_SCAN_LIMIT
	// (4096 bytes), so a match of that length straddling a boundary lies
	// whole inside the next block.
	MinOverlap = 4096
	// headLen is how many bytes are read first to sniff the file type; they
	// are kept and reused as the start of block 0 (not read twice).
	headLen = 512
)

// blockIter feeds one file to libyara in overlapping blocks. It implements
// yara.MemoryBlockIteratorWithFilesize. One per worker, reset per file.
//
// libyara walks the blocks once to search strings, then again (First, Next,
// FetchData) whenever a condition reads data (uint32(x), hash.md5(...)).
// Only the first, sequential pass feeds the hash and the byte counter; the
// re-reads are served by ReadAt again.
type blockIter struct {
	ctx       context.Context
	r         io.ReaderAt
	size      int64
	blockSize int64
	step      int64 // blockSize - overlap

	head []byte // first min(size, headLen) bytes, already read

	idx   int64 // index of the current block
	block yara.MemoryBlock

	h        hash.Hash // nil: no hashing
	hashedTo int64     // bytes [0, hashedTo) are in h
	read     int64     // bytes of the first pass delivered
	progress *atomic.Int64

	err       error // first read error; stops the iteration
	cancelled bool

	// The block last written into go-yara's buffer: a condition reading
	// data (uint16(0) == 0x5a4d, evaluated by thousands of rules of a
	// public rule set) makes libyara fetch the block again for every read;
	// while the buffer still holds it, it is not read again.
	filledPtr  *byte
	filledBase int64
	filledLen  int64
}

func (it *blockIter) reset(ctx context.Context, r io.ReaderAt, size int64, head []byte, h hash.Hash) {
	it.ctx, it.r, it.size, it.head, it.h = ctx, r, size, head, h
	it.idx, it.hashedTo, it.read = 0, 0, 0
	it.err, it.cancelled = nil, false
	it.filledPtr, it.filledBase, it.filledLen = nil, -1, 0
	if h != nil {
		h.Reset()
	}
}

// Filesize makes YARA's filesize the file's size, not a block's.
func (it *blockIter) Filesize() uint64 { return uint64(it.size) }

func (it *blockIter) First() *yara.MemoryBlock {
	it.idx = 0
	return it.current()
}

func (it *blockIter) Next() *yara.MemoryBlock {
	if it.err != nil || it.cancelled {
		return nil
	}
	if it.ctx.Err() != nil {
		it.cancelled = true
		return nil
	}
	base := it.idx * it.step
	if base+it.blockSize >= it.size { // current block was the last
		return nil
	}
	it.idx++
	return it.current()
}

func (it *blockIter) current() *yara.MemoryBlock {
	if it.err != nil || it.cancelled {
		return nil
	}
	base := it.idx * it.step
	n := min(it.blockSize, it.size-base)
	if n < 0 {
		n = 0
	}
	it.block = yara.MemoryBlock{Base: uint64(base), Size: uint64(n), FetchData: it.fetch}
	return &it.block
}

// fetch fills buf (C memory owned by go-yara, possibly longer than the
// block) with the current block's bytes.
func (it *blockIter) fetch(buf []byte) {
	base := int64(it.block.Base)
	n := int64(it.block.Size)
	buf = buf[:n]
	if n == 0 {
		return
	}
	if &buf[0] == it.filledPtr && base == it.filledBase && n == it.filledLen {
		return // go-yara's buffer (reused within one scan) holds it already
	}
	it.filledPtr = nil
	off := int64(0)
	if base < int64(len(it.head)) { // block 0: reuse the sniffed head
		off = int64(copy(buf, it.head[base:]))
	}
	if off < n {
		m, err := it.r.ReadAt(buf[off:], base+off)
		if int64(m) < n-off {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if it.err == nil {
				it.err = fmt.Errorf("scan: read %d bytes at offset %d: %w", n-off, base+off, err)
			}
			clear(buf[off+int64(m):]) // never show libyara stale bytes
			return
		}
	}
	it.filledPtr, it.filledBase, it.filledLen = &buf[0], base, n
	end := base + n
	if base <= it.hashedTo && end > it.hashedTo { // sequential first pass
		if it.h != nil {
			it.h.Write(buf[it.hashedTo-base:])
		}
		if it.progress != nil {
			it.progress.Add(end - it.hashedTo)
		}
		it.read += end - it.hashedTo
		it.hashedTo = end
	}
}

// complete reports whether the first pass saw every byte of the file.
func (it *blockIter) complete() bool { return it.hashedTo == it.size && it.err == nil && !it.cancelled }
