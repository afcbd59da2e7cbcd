package snapshot

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sort"
	"sync"

	"github.com/anchore/go-lzo"
	"github.com/klauspost/compress/snappy"
	"github.com/klauspost/compress/zstd"

	"github.com/vmscope/vmscope/vmi"
)

// kdump-compressed format (makedumpfile's diskdump, as QEMU writes it):
// block 0 the disk_dump_header, then sub_hdr_size blocks of
// kdump_sub_header, bitmap_blocks blocks of two equal bitmaps (valid pages,
// then dumped pages; bit i of byte j is pfn 8j+i), then one 24-byte page
// descriptor per dumped page in pfn order, then the page data.
const (
	kdumpSig       = "KDUMP   "
	kdumpHdrSize   = 464
	kdumpSubSize   = 104
	pageDescSize   = 24
	maxBitmapBytes = 64 << 20 // both bitmaps: 2^28 pages (1 TiB of 4 KiB pages)
	rankChunk      = 512      // bits per rank sample

	dhZlib   = 0x1
	dhLZO    = 0x2
	dhSnappy = 0x4
	dhZstd   = 0x20
)

type kdump struct {
	r         io.ReaderAt
	size      int64
	blockSize uint64
	maxMapnr  uint64
	bitmap    []byte   // the second bitmap: dumped pages
	rank      []uint64 // set bits before each rankChunk-bit chunk
	descOff   int64
	nDesc     uint64
	cpus      []vmi.CPU

	cache     *pageLRU
	zstdOnce  sync.Once
	zstdDec   *zstd.Decoder
	zstdError error
}

// openKdump reads a kdump file of size bytes from r; budget is the size of
// the file on disk (smaller than size for a flattened file with gaps), which
// bounds the bitmaps read into memory.
func openKdump(r io.ReaderAt, size, budget int64) (*kdump, error) {
	var h [kdumpHdrSize]byte
	if _, err := r.ReadAt(h[:], 0); err != nil {
		return nil, fmt.Errorf("snapshot: kdump disk_dump_header at offset 0: %v: %w", err, ErrCorrupt)
	}
	version := le.Uint32(h[8:])
	blockSize := uint64(le.Uint32(h[428:]))
	subHdrBlocks := uint64(le.Uint32(h[432:]))
	bitmapBlocks := uint64(le.Uint32(h[436:]))
	maxMapnr := uint64(le.Uint32(h[440:]))
	if blockSize < 512 || blockSize > 1<<20 || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("snapshot: kdump block_size %d at offset 428: %w", blockSize, ErrCorrupt)
	}
	if subHdrBlocks == 0 || subHdrBlocks > 1<<20 || bitmapBlocks == 0 || bitmapBlocks > 1<<32 {
		return nil, fmt.Errorf("snapshot: kdump sub_hdr_size %d or bitmap_blocks %d at offset 432: %w", subHdrBlocks, bitmapBlocks, ErrCorrupt)
	}
	k := &kdump{r: r, size: size, blockSize: blockSize, cache: newPageLRU(kdumpCachePages)}
	var sub [kdumpSubSize]byte
	if _, err := r.ReadAt(sub[:], int64(blockSize)); err != nil {
		return nil, fmt.Errorf("snapshot: kdump_sub_header at offset %#x: %v: %w", blockSize, err, ErrCorrupt)
	}
	if version >= 6 {
		maxMapnr = le.Uint64(sub[96:])
	}
	bitmapBytes := bitmapBlocks * blockSize
	bitmapOff := (1 + subHdrBlocks) * blockSize
	if bitmapBytes > maxBitmapBytes || bitmapOff+bitmapBytes > uint64(size) || bitmapBytes > uint64(budget) {
		return nil, fmt.Errorf("snapshot: kdump bitmaps of %d bytes at offset %#x (cap %d, file %d): %w", bitmapBytes, bitmapOff, maxBitmapBytes, size, ErrCorrupt)
	}
	half := bitmapBytes / 2
	if maxMapnr > half*8 {
		return nil, fmt.Errorf("snapshot: kdump max_mapnr %d exceeds its bitmap (%d bits): %w", maxMapnr, half*8, ErrCorrupt)
	}
	k.maxMapnr = maxMapnr
	k.bitmap = make([]byte, (maxMapnr+7)/8)
	if _, err := r.ReadAt(k.bitmap, int64(bitmapOff+half)); err != nil {
		return nil, fmt.Errorf("snapshot: kdump second bitmap at offset %#x: %v: %w", bitmapOff+half, err, ErrCorrupt)
	}
	if maxMapnr%8 != 0 { // bits past max_mapnr do not count
		k.bitmap[len(k.bitmap)-1] &= byte(1<<(maxMapnr%8)) - 1
	}
	k.rank = make([]uint64, (maxMapnr+rankChunk-1)/rankChunk+1)
	var total uint64
	for i := range k.rank {
		k.rank[i] = total
		lo := uint64(i) * rankChunk / 8
		hi := min(lo+rankChunk/8, uint64(len(k.bitmap)))
		for j := lo; j < hi; j++ {
			total += uint64(bits.OnesCount8(k.bitmap[j]))
		}
	}
	k.nDesc = total
	k.descOff = int64(bitmapOff + bitmapBytes)
	if total*pageDescSize > uint64(size)-uint64(k.descOff) {
		return nil, fmt.Errorf("snapshot: kdump %d page descriptors at offset %#x past the end of the file: %w", total, k.descOff, ErrCorrupt)
	}
	if version >= 4 {
		noteOff, noteSize := le.Uint64(sub[48:]), le.Uint64(sub[56:])
		if noteSize > 0 {
			if noteSize > maxNotes || noteOff > uint64(size) || noteSize > uint64(size)-noteOff {
				return nil, fmt.Errorf("snapshot: kdump notes of %d bytes at offset %#x: %w", noteSize, noteOff, ErrCorrupt)
			}
			notes := make([]byte, noteSize)
			if _, err := r.ReadAt(notes, int64(noteOff)); err != nil {
				return nil, fmt.Errorf("snapshot: kdump notes at offset %#x: %v: %w", noteOff, err, ErrCorrupt)
			}
			cpus, err := parseNotes(notes)
			if err != nil {
				return nil, fmt.Errorf("snapshot: kdump notes at offset %#x: %w", noteOff, err)
			}
			k.cpus = cpus
		}
	}
	return k, nil
}

func (k *kdump) present(pfn uint64) bool {
	return pfn < k.maxMapnr && k.bitmap[pfn/8]&(1<<(pfn%8)) != 0
}

// index is the number of dumped pages before pfn: its descriptor's index.
func (k *kdump) index(pfn uint64) uint64 {
	c := pfn / rankChunk
	n := k.rank[c]
	for j := c * rankChunk / 8; j < pfn/8; j++ {
		n += uint64(bits.OnesCount8(k.bitmap[j]))
	}
	return n + uint64(bits.OnesCount8(k.bitmap[pfn/8]&(1<<(pfn%8)-1)))
}

func (k *kdump) ranges() []vmi.Range {
	var out []vmi.Range
	for pfn := uint64(0); pfn < k.maxMapnr; {
		if b := k.bitmap[pfn/8]; pfn%8 == 0 && (b == 0 || b == 0xff) && pfn+8 <= k.maxMapnr {
			if b == 0xff {
				out = addPage(out, pfn, 8, k.blockSize)
			}
			pfn += 8
			continue
		}
		if k.present(pfn) {
			out = addPage(out, pfn, 1, k.blockSize)
		}
		pfn++
	}
	return out
}

func addPage(out []vmi.Range, pfn, n, bs uint64) []vmi.Range {
	start := vmi.PA(pfn * bs)
	if l := len(out); l > 0 && out[l-1].End() == start {
		out[l-1].Size += n * bs
		return out
	}
	return append(out, vmi.Range{Start: start, Size: n * bs})
}

func (k *kdump) readAt(p []byte, pa vmi.PA) (int, error) {
	n := 0
	for n < len(p) {
		a, ok := pa.Add(uint64(n))
		if !ok {
			return n, &vmi.HoleError{Addr: pa}
		}
		pfn, in := uint64(a)/k.blockSize, uint64(a)%k.blockSize
		if !k.present(pfn) {
			return n, &vmi.HoleError{Addr: a}
		}
		page, err := k.page(pfn)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], page[in:])
	}
	return n, nil
}

// page returns the content of a dumped page, decoded at most once while
// it stays in the cache; the slice returned is never written again.
func (k *kdump) page(pfn uint64) ([]byte, error) {
	if pg, ok := k.cache.get(pfn); ok {
		return pg, nil
	}
	i := k.index(pfn)
	at := k.descOff + int64(i*pageDescSize)
	var d [pageDescSize]byte
	if _, err := k.r.ReadAt(d[:], at); err != nil {
		return nil, fmt.Errorf("snapshot: kdump page descriptor of pfn %#x at offset %#x: %v: %w", pfn, at, err, ErrCorrupt)
	}
	off, size, flags := le.Uint64(d[:]), uint64(le.Uint32(d[8:])), le.Uint32(d[12:])
	if size == 0 || size > k.blockSize || off > uint64(k.size) || size > uint64(k.size)-off {
		return nil, fmt.Errorf("snapshot: kdump page descriptor of pfn %#x at offset %#x: data of %d bytes at %#x: %w", pfn, at, size, off, ErrCorrupt)
	}
	out := make([]byte, k.blockSize)
	raw := make([]byte, size)
	if _, err := k.r.ReadAt(raw, int64(off)); err != nil {
		return nil, fmt.Errorf("snapshot: kdump page data of pfn %#x at offset %#x: %v: %w", pfn, off, err, ErrCorrupt)
	}
	where := func(err error) error {
		return fmt.Errorf("snapshot: kdump page of pfn %#x at offset %#x (flags %#x): %w", pfn, off, flags, err)
	}
	switch {
	case flags&dhZlib != 0:
		zr, err := zlib.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, where(fmt.Errorf("%v: %w", err, ErrCorrupt))
		}
		m, err := io.ReadFull(zr, out)
		if err != nil || m != len(out) {
			return nil, where(fmt.Errorf("zlib: %v: %w", err, ErrCorrupt))
		}
	case flags&dhSnappy != 0:
		if l, err := snappy.DecodedLen(raw); err != nil || uint64(l) != k.blockSize {
			return nil, where(fmt.Errorf("snappy length %d: %v: %w", l, err, ErrCorrupt))
		}
		if _, err := snappy.Decode(out, raw); err != nil {
			return nil, where(fmt.Errorf("snappy: %v: %w", err, ErrCorrupt))
		}
	case flags&dhZstd != 0:
		k.zstdOnce.Do(func() {
			k.zstdDec, k.zstdError = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(k.blockSize), zstd.WithDecoderMaxWindow(max(k.blockSize, zstd.MinWindowSize)))
		})
		if k.zstdError != nil {
			return nil, where(k.zstdError)
		}
		got, err := k.zstdDec.DecodeAll(raw, out[:0])
		if err != nil || uint64(len(got)) != k.blockSize {
			return nil, where(fmt.Errorf("zstd: %d bytes: %v: %w", len(got), err, ErrCorrupt))
		}
		copy(out, got)
	case flags&dhLZO != 0:
		if err := decodeLZO(out, raw); err != nil {
			return nil, where(err)
		}
	case flags != 0:
		return nil, where(fmt.Errorf("unknown compression: %w", ErrUnsupported))
	default:
		if size != k.blockSize {
			return nil, where(fmt.Errorf("uncompressed page of %d bytes: %w", size, ErrCorrupt))
		}
		copy(out, raw)
	}
	k.cache.put(pfn, out)
	return out, nil
}

// decodeLZO decompresses an LZO1X page (makedumpfile -l, QEMU's
// kdump-lzo: lzo1x_1_compress of one page) into out, which it must fill
// exactly. The decoder writes only inside out and reads only inside in
// (the page's data, already bounded by the file and the page size); a
// panic in it is taken as a corrupt page.
func decodeLZO(out, in []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("LZO page: decoder failed: %v: %w", r, ErrCorrupt)
		}
	}()
	n, derr := lzo.Decompress(in, out)
	if derr != nil || n != len(out) {
		return fmt.Errorf("LZO page decoded to %d of %d bytes (%v): %w", n, len(out), derr, ErrCorrupt)
	}
	return nil
}

// kdumpCachePages is how many decoded pages a kdump keeps (2 MiB of 4 KiB
// pages): kernel walks read many small fields of the same pages, and each
// miss costs a descriptor read, a data read and a decompression.
const kdumpCachePages = 512

// pageLRU is a least-recently-used cache of decoded pages, safe for
// concurrent use. Two readers missing the same page may both decode it;
// the second put replaces the first with identical bytes.
type pageLRU struct {
	mu    sync.Mutex
	max   int
	pages map[uint64]*lruEntry
	head  lruEntry // sentinel: head.next is the most recently used
}

type lruEntry struct {
	pfn        uint64
	data       []byte
	prev, next *lruEntry
}

func newPageLRU(max int) *pageLRU {
	c := &pageLRU{max: max, pages: make(map[uint64]*lruEntry, max)}
	c.head.prev, c.head.next = &c.head, &c.head
	return c
}

func (c *pageLRU) unlink(e *lruEntry) { e.prev.next, e.next.prev = e.next, e.prev }

func (c *pageLRU) front(e *lruEntry) {
	e.prev, e.next = &c.head, c.head.next
	c.head.next.prev = e
	c.head.next = e
}

func (c *pageLRU) get(pfn uint64) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.pages[pfn]
	if !ok {
		return nil, false
	}
	c.unlink(e)
	c.front(e)
	return e.data, true
}

func (c *pageLRU) put(pfn uint64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.pages[pfn]; ok {
		e.data = data
		c.unlink(e)
		c.front(e)
		return
	}
	if len(c.pages) >= c.max {
		old := c.head.prev
		c.unlink(old)
		delete(c.pages, old.pfn)
	}
	e := &lruEntry{pfn: pfn, data: data}
	c.pages[pfn] = e
	c.front(e)
}

// makedumpfile's flattened format: a 4096-byte header ("makedumpfile",
// type and version as big-endian int64), then records of a big-endian
// (offset, size) pair and size bytes of the kdump file at that offset,
// ended by (-1, -1). QEMU before 8.2 writes kdump files this way.
const (
	flatSig        = "makedumpfile"
	flatHeaderSize = 4096
	maxFlatRecords = 1 << 22
)

type flatRec struct {
	off, size, fileOff int64
}

type flatReader struct {
	r    io.ReaderAt
	recs []flatRec // sorted by off, disjoint
	size int64     // logical size
}

func openFlattened(r io.ReaderAt, size int64) (io.ReaderAt, int64, error) {
	var h [32]byte
	if _, err := r.ReadAt(h[:], 0); err != nil {
		return nil, 0, fmt.Errorf("snapshot: flattened kdump header at offset 0: %v: %w", err, ErrCorrupt)
	}
	if t := int64(binary.BigEndian.Uint64(h[16:])); t != 1 {
		return nil, 0, fmt.Errorf("snapshot: flattened kdump type %d at offset 16: %w", t, ErrUnsupported)
	}
	fr := &flatReader{r: r}
	pos := int64(flatHeaderSize)
	var rh [16]byte
	for {
		if _, err := r.ReadAt(rh[:], pos); err != nil {
			return nil, 0, fmt.Errorf("snapshot: flattened kdump record header at offset %#x: %v: %w", pos, err, ErrCorrupt)
		}
		off, sz := int64(binary.BigEndian.Uint64(rh[:])), int64(binary.BigEndian.Uint64(rh[8:]))
		if off == -1 && sz == -1 {
			break
		}
		if off < 0 || sz < 0 || off > 1<<62 || sz > size-pos-16 {
			return nil, 0, fmt.Errorf("snapshot: flattened kdump record at offset %#x: offset %d size %d: %w", pos, off, sz, ErrCorrupt)
		}
		if len(fr.recs) >= maxFlatRecords {
			return nil, 0, fmt.Errorf("snapshot: flattened kdump has more than %d records: %w", maxFlatRecords, ErrUnsupported)
		}
		if sz > 0 {
			fr.recs = append(fr.recs, flatRec{off: off, size: sz, fileOff: pos + 16})
		}
		pos += 16 + sz
	}
	sort.SliceStable(fr.recs, func(i, j int) bool { return fr.recs[i].off < fr.recs[j].off })
	for i, rec := range fr.recs {
		if i > 0 && rec.off < fr.recs[i-1].off+fr.recs[i-1].size {
			return nil, 0, fmt.Errorf("snapshot: flattened kdump records for offset %#x overlap: %w", rec.off, ErrUnsupported)
		}
		fr.size = max(fr.size, rec.off+rec.size)
	}
	return fr, fr.size, nil
}

// ReadAt reads the reassembled kdump file; bytes no record wrote are zeros.
func (f *flatReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("snapshot: negative offset")
	}
	n := 0
	for n < len(p) {
		a := off + int64(n)
		if a >= f.size {
			return n, io.EOF
		}
		i := sort.Search(len(f.recs), func(i int) bool { return f.recs[i].off+f.recs[i].size > a })
		want := int64(len(p) - n)
		if left := f.size - a; want > left {
			want = left
		}
		if i == len(f.recs) || a < f.recs[i].off { // a gap: zeros
			if i < len(f.recs) {
				want = min(want, f.recs[i].off-a)
			}
			clear(p[n : n+int(want)])
			n += int(want)
			continue
		}
		rec := f.recs[i]
		want = min(want, rec.off+rec.size-a)
		m, err := f.r.ReadAt(p[n:n+int(want)], rec.fileOff+(a-rec.off))
		n += m
		if int64(m) < want {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
	}
	return n, nil
}
