package vmdk

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"io"
	"slices"
	"sync"

	"github.com/klauspost/compress/zlib"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/internal/imgio"
)

// Hosted sparse extent header (VMDK4, "KDMV"), little-endian.
const (
	magicKDMV = "KDMV"
	magicCOWD = "COWD"

	flagNewlineTest = 1 << 0
	flagRGD         = 1 << 1
	flagZeroGrain   = 1 << 2
	flagCompressed  = 1 << 16
	flagMarkers     = 1 << 17

	gdAtEnd = 0xffffffffffffffff

	maxSectors     = 1 << 53 // 4 EiB: no product is larger; keeps byte math in int64
	maxGrain       = 1 << 16 // sectors (32 MiB)
	maxGTEs        = 1 << 16 // entries per grain table
	maxGDBytes     = 64 << 20
	gtCacheBytes   = 32 << 20
	compCacheBytes = 32 << 20

	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3
)

// SparseHeader is the header of a hosted sparse extent.
type SparseHeader struct {
	Version     uint32
	Flags       uint32
	Capacity    int64 // sectors
	GrainSize   int64 // sectors
	DescOffset  int64 // sectors
	DescSize    int64 // sectors
	NumGTEs     int64 // entries per grain table
	RGDOffset   int64 // sectors
	GDOffset    int64 // sectors
	Compression uint16
}

func parseSparseHeader(name string, b []byte, at int64) (SparseHeader, error) {
	var h SparseHeader
	if len(b) < 512 || string(b[:4]) != magicKDMV {
		if len(b) >= 4 && string(b[:4]) == magicCOWD {
			return h, disk.Unsupported(name, "sparse header", at, "COWD (ESX vmfsSparse) extent")
		}
		return h, disk.Corrupt(name, "sparse header", at, "no KDMV magic")
	}
	le := binary.LittleEndian
	h.Version = le.Uint32(b[4:])
	h.Flags = le.Uint32(b[8:])
	capacity := le.Uint64(b[12:])
	grain := le.Uint64(b[20:])
	descOff := le.Uint64(b[28:])
	descSize := le.Uint64(b[36:])
	h.NumGTEs = int64(le.Uint32(b[44:]))
	rgd := le.Uint64(b[48:])
	gd := le.Uint64(b[56:])
	h.Compression = le.Uint16(b[77:])
	if h.Version < 1 || h.Version > 3 {
		return h, disk.Unsupported(name, "sparse header version", at+4, "version %d", h.Version)
	}
	if capacity > maxSectors {
		return h, disk.Corrupt(name, "sparse header capacity", at+12, "%d sectors", capacity)
	}
	if grain == 0 || grain > maxGrain || grain&(grain-1) != 0 {
		return h, disk.Corrupt(name, "sparse header grain size", at+20, "%d sectors (a power of two up to %d)", grain, maxGrain)
	}
	if h.NumGTEs < 1 || h.NumGTEs > maxGTEs {
		return h, disk.Corrupt(name, "sparse header numGTEsPerGT", at+44, "%d entries per grain table (1 to %d)", h.NumGTEs, maxGTEs)
	}
	if descOff > maxSectors || descSize > maxSectors || rgd > maxSectors || (gd > maxSectors && gd != gdAtEnd) {
		return h, disk.Corrupt(name, "sparse header", at, "descriptor or grain directory offset out of range")
	}
	if h.Flags&flagCompressed != 0 && h.Compression != 1 {
		return h, disk.Unsupported(name, "sparse header compressAlgorithm", at+77, "compression algorithm %d", h.Compression)
	}
	h.Capacity, h.GrainSize, h.DescOffset, h.DescSize, h.RGDOffset = int64(capacity), int64(grain), int64(descOff), int64(descSize), int64(rgd)
	h.GDOffset = int64(gd)
	if gd == gdAtEnd {
		h.GDOffset = -1
	}
	return h, nil
}

// sparse is an open hosted sparse extent.
type sparse struct {
	src      disk.Source
	h        SparseHeader
	grain    int64 // bytes
	gtSpan   int64 // guest bytes one grain table maps
	gd       []uint32
	gdAt     int64
	zeroGE   bool
	compress bool
	markers  bool

	gts  boundedMap[int64, []byte] // grain tables by index
	comp boundedMap[int64, []byte] // inflated grains by file offset
}

// openSparse reads and validates a hosted sparse extent: its header (the
// footer's copy for a stream-optimized file whose directory is at the
// end), the whole grain directory, and that no grain table lies outside
// the file or overlaps the header, the directory or another table.
func openSparse(src disk.Source) (*sparse, error) {
	name := src.Name
	b := make([]byte, 512)
	if err := imgio.Read(src, b, 0, "sparse header"); err != nil {
		return nil, err
	}
	h, err := parseSparseHeader(name, b, 0)
	if err != nil {
		return nil, err
	}
	if h.GDOffset < 0 {
		// streamOptimized: footer marker, footer header, end-of-stream
		// marker in the last three sectors.
		if src.Size < 2048 {
			return nil, disk.Corrupt(name, "footer", 0, "grain directory at the end of a %d-byte file", src.Size)
		}
		tail := make([]byte, 1536)
		at := src.Size - 1536
		if err := imgio.Read(src, tail, at, "footer"); err != nil {
			return nil, err
		}
		le := binary.LittleEndian
		if le.Uint32(tail[12:]) != markerFooter || le.Uint32(tail[1024+12:]) != markerEOS || le.Uint32(tail[1024+8:]) != 0 {
			return nil, disk.Corrupt(name, "footer marker", at, "no footer marker and end-of-stream marker before the end of the file")
		}
		if h, err = parseSparseHeader(name, tail[512:1024], at+512); err != nil {
			return nil, err
		}
		if h.GDOffset < 0 {
			return nil, disk.Corrupt(name, "footer", at+512, "the footer's grain directory is at the end too")
		}
	}
	s := &sparse{src: src, h: h, grain: h.GrainSize * 512, zeroGE: h.Flags&flagZeroGrain != 0,
		compress: h.Flags&flagCompressed != 0, markers: h.Flags&flagMarkers != 0}
	s.gtSpan = s.grain * h.NumGTEs
	nGD := (h.Capacity*512 + s.gtSpan - 1) / s.gtSpan
	s.gdAt = h.GDOffset * 512
	raw, err := imgio.Alloc(src, nGD*4, maxGDBytes, s.gdAt, "grain directory")
	if err != nil {
		return nil, err
	}
	if err := imgio.Read(src, raw, s.gdAt, "grain directory"); err != nil {
		return nil, err
	}
	s.gd = make([]uint32, nGD)
	gtBytes := h.NumGTEs * 4
	type span struct{ start, end, at int64 }
	used := []span{{0, 512, 0}, {s.gdAt, s.gdAt + nGD*4, s.gdAt}}
	for i := range s.gd {
		e := binary.LittleEndian.Uint32(raw[4*i:])
		s.gd[i] = e
		if e == 0 {
			continue
		}
		at := int64(e) * 512
		if at+gtBytes > src.Size {
			return nil, disk.Corrupt(name, "grain directory entry", s.gdAt+4*int64(i), "grain table at %#x past the end of the %d-byte file", at, src.Size)
		}
		used = append(used, span{at, at + gtBytes, s.gdAt + 4*int64(i)})
	}
	slices.SortFunc(used, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	for i := 1; i < len(used); i++ {
		if used[i].start < used[i-1].end {
			return nil, disk.Corrupt(name, "grain directory entry", used[i].at, "grain table at %#x overlaps the structure at %#x", used[i].start, used[i-1].start)
		}
	}
	s.gts.n = max(gtCacheBytes/int(gtBytes), 4)
	s.comp.n = max(compCacheBytes/int(s.grain), 4)
	return s, nil
}

// grainKind is what a grain table entry says of a grain.
type grainKind int

const (
	grainUnalloc grainKind = iota
	grainZero
	grainData
)

// entry returns the kind and the file offset (bytes) of grain gi of the
// extent, and the file offset of its table entry (for errors).
func (s *sparse) entry(gi int64) (grainKind, int64, int64, error) {
	ti := gi / s.h.NumGTEs
	if ti >= int64(len(s.gd)) || s.gd[ti] == 0 {
		return grainUnalloc, 0, -1, nil
	}
	gt, err := s.table(ti)
	if err != nil {
		return 0, 0, -1, err
	}
	j := gi % s.h.NumGTEs
	at := int64(s.gd[ti])*512 + 4*j
	e := binary.LittleEndian.Uint32(gt[4*j:])
	switch {
	case e == 0:
		return grainUnalloc, 0, at, nil
	case e == 1 && s.zeroGE:
		return grainZero, 0, at, nil
	}
	return grainData, int64(e) * 512, at, nil
}

// table returns grain table ti (bounds checked at open), cached.
func (s *sparse) table(ti int64) ([]byte, error) {
	if gt, ok := s.gts.get(ti); ok {
		return gt, nil
	}
	gt := make([]byte, s.h.NumGTEs*4)
	if err := imgio.Read(s.src, gt, int64(s.gd[ti])*512, "grain table"); err != nil {
		return nil, err
	}
	s.gts.put(ti, gt)
	return gt, nil
}

// boundedMap is a cache of at most n entries, emptied whole when full
// (the reads it serves come in runs, so recency buys little), safe for
// concurrent use.
type boundedMap[K comparable, V any] struct {
	mu sync.Mutex
	m  map[K]V
	n  int
}

func (b *boundedMap[K, V]) get(k K) (V, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.m[k]
	return v, ok
}

func (b *boundedMap[K, V]) put(k K, v V) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil || len(b.m) >= b.n {
		b.m = map[K]V{}
	}
	b.m[k] = v
}

// zlibPool keeps zlib readers for reuse (each holds a 32 KiB window);
// bufPool the buffers compressed grains are read into.
var zlibPool, bufPool sync.Pool

// compressed returns the inflated grain gi stored at host (its marker or
// its deflate stream), cached; it is at most one grain.
func (s *sparse) compressed(gi, host, entryAt int64) ([]byte, error) {
	if g, ok := s.comp.get(host); ok {
		return g, nil
	}
	out := make([]byte, s.grain)
	k, err := s.inflate(gi, host, entryAt, out)
	if err != nil {
		return nil, err
	}
	out = out[:k]
	s.comp.put(host, out)
	return out, nil
}

// inflate inflates the compressed grain gi stored at host (its marker or
// its deflate stream; its table entry at entryAt) into out, at most
// len(out) bytes (one grain), and returns how many it gave. The stream is
// read with one bounded read (its marker's size, at most two grains).
func (s *sparse) inflate(gi, host, entryAt int64, out []byte) (int, error) {
	name := s.src.Name
	if host >= s.src.Size {
		return 0, disk.Corrupt(name, "grain table entry", entryAt, "compressed grain %d at %#x past the end of the %d-byte file", gi, host, s.src.Size)
	}
	data := host
	n := min(2*s.grain+512, s.src.Size-host)
	if s.markers {
		var m [12]byte
		if err := imgio.Read(s.src, m[:], host, "grain marker"); err != nil {
			return 0, err
		}
		size := int64(binary.LittleEndian.Uint32(m[8:]))
		if size == 0 || size > 2*s.grain+512 {
			return 0, disk.Corrupt(name, "grain marker", host, "compressed size %d for a %d-byte grain", size, s.grain)
		}
		if lba := int64(binary.LittleEndian.Uint64(m[:])); lba != gi*s.h.GrainSize {
			return 0, disk.Corrupt(name, "grain marker", host, "marker of sector %d where grain %d (sector %d) was expected", lba, gi, gi*s.h.GrainSize)
		}
		data, n = host+12, size
	}
	if n > s.src.Size-data {
		return 0, disk.Corrupt(name, "compressed grain", data, "%d bytes at %d lie outside the %d-byte file", n, data, s.src.Size)
	}
	bp, _ := bufPool.Get().(*[]byte)
	if bp == nil || int64(cap(*bp)) < n {
		b := make([]byte, 2*s.grain+512)
		bp = &b
	}
	defer bufPool.Put(bp)
	in := (*bp)[:n]
	if err := imgio.Read(s.src, in, data, "compressed grain"); err != nil {
		return 0, err
	}
	var err error
	var zr io.ReadCloser
	if r, ok := zlibPool.Get().(io.ReadCloser); ok {
		err = r.(zlib.Resetter).Reset(bytes.NewReader(in), nil)
		zr = r
	} else {
		zr, err = zlib.NewReader(bytes.NewReader(in))
	}
	if err != nil {
		return 0, disk.Corrupt(name, "compressed grain", host, "grain %d: %v", gi, err)
	}
	defer zlibPool.Put(zr)
	k, err := io.ReadFull(zr, out)
	if err != nil && err != io.ErrUnexpectedEOF {
		return 0, disk.Corrupt(name, "compressed grain", host, "grain %d: %v", gi, err)
	}
	return k, nil
}
