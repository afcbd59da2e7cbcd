package qcow

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/rangeset"
)

func init() {
	disk.Register(disk.Format{Name: Qcow2, Match: match, Open: openLayer})
}

// Format is an image format name, as package disk names it.
type Format = string

// Formats: the one this package reads, and raw (read by package disk).
const (
	Raw   Format = disk.RawFormat
	Qcow2 Format = "qcow2"
)

// Image is a guest disk with its chain.
//
// Deprecated: the type is disk.Image; this alias keeps old callers building.
type Image = disk.Image

// Option changes how Open works.
type Option = disk.Option

// DefaultMaxChainDepth is the default cap on the number of layers in a chain.
const DefaultMaxChainDepth = disk.DefaultMaxChainDepth

// WithMaxChainDepth caps the number of layers (disk.WithMaxChainDepth).
func WithMaxChainDepth(n int) Option { return disk.WithMaxChainDepth(n) }

// WithRefuseCorrupt makes Open refuse, with ErrCorrupt, a qcow2 layer whose
// header has the "corrupt" incompatible bit set (disk.WithRefuseCorrupt).
// By default such a layer is opened, as QEMU opens it read-only, and
// Layer.Corrupt reports the bit.
func WithRefuseCorrupt() Option { return disk.WithRefuseCorrupt() }

// Open opens the image at path and its whole backing chain, every file
// O_RDONLY, with qcow2 registered (it is disk.Open).
func Open(path string, opts ...Option) (*Image, error) { return disk.Open(path, opts...) }

// Layer is one qcow2 file of a chain. It implements disk.Layer: ReadAt
// reads the guest disk as this layer sees it (its clusters over the chain
// below), Allocated is its own clusters.
type Layer struct {
	Path          string // absolute path of the file, as resolved (the name given to disk.New)
	BackingRef    string // backing file name as written in this layer's header ("" if none)
	BackingFormat string // backing format recorded in the header extension ("" if none)
	Version       int    // qcow2 version (2 or 3)
	VirtualSize   int64  // guest disk size in bytes
	ClusterSize   int
	Compression   string
	FileSize      int64
	Dirty         bool // qcow2 v3 dirty bit (refcounts may be stale; reads are fine)
	Corrupt       bool // qcow2 v3 corrupt bit (QEMU opens such an image read-only)
	ExtendedL2    bool // qcow2 v3 extended L2 entries (subclusters)
	Bitmaps       []BitmapInfo

	f       io.ReaderAt
	h       *header
	l1      []uint64
	backing disk.Layer // nil: unallocated clusters read as zeros
	l2      *lru[uint64, []byte]
	comp    *lru[uint64, []byte]
}

// match accepts the qcow2 magic; the version is checked by openLayer
// (qcow v1 and unknown versions are refused there, with ErrUnsupported).
func match(head []byte) bool { return len(head) >= 4 && string(head[:4]) == qcow2Magic }

// openLayer validates one qcow2 file (header, extensions, the whole L1
// table, the bitmap directory) with bounded reads, then opens its backing
// file through the chain.
func openLayer(src disk.Source, c *disk.Chain) (disk.Layer, error) {
	path, f := src.Name, src.R
	h, err := parseHeader(path, f, src.Size)
	if err != nil {
		return nil, err
	}
	if h.incompatible&incCorrupt != 0 && c.RefuseCorrupt() {
		return nil, corrupt(path, "header incompatible_features", 72, "the corrupt bit is set")
	}
	l := &Layer{Path: path, f: f, h: h, FileSize: src.Size}
	if l.l1, err = readL1(path, f, h); err != nil {
		return nil, err
	}
	if l.Bitmaps, err = h.readBitmaps(path, f); err != nil {
		return nil, err
	}
	l.Version = int(h.version)
	l.VirtualSize = int64(h.size)
	l.ClusterSize = int(h.clusterSize)
	l.Compression = h.compressionName()
	l.Dirty = h.incompatible&incDirty != 0
	l.Corrupt = h.incompatible&incCorrupt != 0
	l.ExtendedL2 = h.extendedL2
	l.BackingRef = h.backingRef
	l.BackingFormat = h.backingFormat
	l.l2 = newLRU[uint64, []byte](max(l2CacheBytes/int(h.clusterSize), 4))
	l.comp = newLRU[uint64, []byte](max(compCacheBytes/int(h.clusterSize), 16))
	if h.backingRef != "" {
		if l.backing, err = c.Backing(path, h.backingRef, h.backingFormat); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Bounds of the per-layer caches: L2 tables (32 MiB of tables map 128 TiB
// of guest with 64 KiB clusters), and inflated compressed clusters. The
// compressed cache holds the read-ahead of 16 scan workers (each reads a
// file in blocks of 4 MiB), so a cluster that two neighbouring reads share
// (the end of one file's block and the start of the next file, the
// metadata the walker reads between them) is inflated once.
const (
	l2CacheBytes   = 32 << 20
	compCacheBytes = 64 << 20
)

func (l *Layer) Size() int64         { return l.VirtualSize }
func (l *Layer) Backing() disk.Layer { return l.backing }
func (l *Layer) Format() string      { return Qcow2 }
func (l *Layer) Name() string        { return l.Path }

// ClusterBytes is the cluster size (disk.Clustered): small reads are
// served from whole cached clusters.
func (l *Layer) ClusterBytes() int { return l.ClusterSize }

// Allocated returns the guest byte ranges this layer holds itself, as
// `qemu-img map --output=json` reports them for this file (depth 0, present):
// data clusters, compressed clusters and zero-flagged clusters (a zero
// cluster in an overlay hides the layers below, so it is a change); with
// extended L2 entries, allocated and zero subclusters. Unallocated clusters,
// read from the backing file, are not in the set. The L1 table was
// validated at open; each L2 table is read with one bounded read and each
// entry is checked (cluster aligned, inside the file) before it is counted.
func (l *Layer) Allocated(ctx context.Context) (rangeset.Set, error) {
	return allocated(ctx, l.Path, l.f, l.h, l.l1)
}

// Compressed cluster descriptor (docs/interop/qcow2.txt): the host offset
// in bits 0..x-1, the number of additional 512-byte sectors in bits
// x..61, x = 62 - (cluster_bits - 8).
func (h *header) compressedExtent(e uint64) (off, n int64) {
	x := 62 - (h.clusterBits - 8)
	off = int64(e & (1<<x - 1))
	sectors := int64((e>>x)&(1<<(h.clusterBits-8)-1)) + 1
	// The extent ends at the end of its last sector; it starts inside the
	// first one.
	return off, sectors*512 - off%512
}

// entry is one guest cluster's L2 entry: e (0 when the L1 entry is empty)
// and, with extended L2 entries, the subcluster bitmap.
type entry struct {
	e, bm uint64
	at    int64 // file offset of the entry, for errors (-1 if none)
}

// l2Entry returns the L2 entry of guest cluster ci.
func (l *Layer) l2Entry(ci int64) (entry, error) {
	h := l.h
	i := ci / h.l2Entries
	if i >= int64(len(l.l1)) || l.l1[i] == 0 {
		return entry{at: -1}, nil
	}
	off := l.l1[i]
	tbl, err := l.l2.get(off, func() ([]byte, error) {
		b := make([]byte, h.clusterSize) // inside the file: checked by readL1
		if n, err := l.f.ReadAt(b, int64(off)); n < len(b) {
			if err == nil || errors.Is(err, io.EOF) {
				return nil, corrupt(l.Path, "L2 table", int64(off), "the file ends inside it")
			}
			return nil, &Error{Path: l.Path, What: "L2 table", Offset: int64(off), Err: err}
		}
		return b, nil
	})
	if err != nil {
		return entry{}, err
	}
	j := (ci % h.l2Entries) * h.l2EntrySize
	en := entry{e: binary.BigEndian.Uint64(tbl[j:]), at: int64(off) + j}
	if h.extendedL2 {
		en.bm = binary.BigEndian.Uint64(tbl[j+8:])
	}
	return en, nil
}

// ReadAt reads the guest disk as this layer sees it: its own clusters over
// the chain below it. io.SectionReader semantics at the end of the disk;
// safe for concurrent use. Runs of clusters that lie one after the other
// in the file are read with one pread; a compressed cluster is read with
// one pread of its exact extent and inflated once while it stays in the
// layer's cache.
func (l *Layer) ReadAt(p []byte, off int64) (int, error) {
	size := l.VirtualSize
	if off < 0 {
		return 0, &Error{Path: l.Path, What: "guest read", Offset: off, Err: fmt.Errorf("%w: negative offset", fs.ErrInvalid)}
	}
	if off >= size {
		return 0, io.EOF
	}
	q := p
	if int64(len(q)) > size-off {
		q = q[:size-off]
	}
	r := reader{l: l, q: q}
	n := 0
	for n < len(q) {
		k, err := r.next(n, off+int64(n))
		if err != nil {
			return 0, err
		}
		n += k
	}
	if err := r.flush(); err != nil {
		return 0, err
	}
	if len(q) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// reader accumulates a run of host-contiguous data bytes of one ReadAt.
type reader struct {
	l       *Layer
	q       []byte // the destination of the whole ReadAt
	rs, re  int    // the pending run is q[rs:re]
	host    int64  // file offset of q[rs]
	guest   int64  // guest offset of q[rs]
	pending bool
}

// flush reads the pending run with one pread.
func (r *reader) flush() error {
	if !r.pending {
		return nil
	}
	r.pending = false
	l := r.l
	run := r.q[r.rs:r.re]
	n, err := l.f.ReadAt(run, r.host)
	if n == len(run) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return corrupt(l.Path, "guest read", r.guest+int64(n), "data cluster at host offset %d: the %d-byte file ends inside it", r.host+int64(n), l.FileSize)
	}
	return &Error{Path: l.Path, What: "guest read", Offset: r.guest, Err: err}
}

// data adds the host bytes [host, host+k) for q[at:at+k] (guest offset
// off) to the pending run, or flushes the run and starts a new one.
func (r *reader) data(at, k int, host, off int64) (int, error) {
	if r.pending && r.re == at && r.host+int64(r.re-r.rs) == host {
		r.re += k
		return k, nil
	}
	if err := r.flush(); err != nil {
		return 0, err
	}
	r.rs, r.re, r.host, r.guest, r.pending = at, at+k, host, off, true
	return k, nil
}

// next serves the part of q[at:] that lies in the guest cluster (or
// subcluster) holding off, and returns how many bytes it served.
func (r *reader) next(at int, off int64) (int, error) {
	l := r.l
	p := r.q[at:]
	h := l.h
	cs := h.clusterSize
	ci := off / cs
	in := off - ci*cs
	chunk := p[:min(int64(len(p)), cs-in)]
	en, err := l.l2Entry(ci)
	if err != nil {
		return 0, err
	}
	e := en.e
	fileSize := l.FileSize
	if e&l2Compressed != 0 {
		if err := r.flush(); err != nil {
			return 0, err
		}
		data, err := l.compressed(ci, en)
		if err != nil {
			return 0, err
		}
		if int64(len(data)) < in+int64(len(chunk)) {
			return 0, corrupt(l.Path, "compressed cluster", en.at, "guest cluster %d inflates to %d bytes, %d needed", ci, len(data), in+int64(len(chunk)))
		}
		return copy(chunk, data[in:]), nil
	}
	host := int64(e & l2OffsetMask)
	if host%cs != 0 {
		return 0, corrupt(l.Path, "L2 table entry", en.at, "cluster for guest offset %d at unaligned host offset %#x", ci*cs, host)
	}
	if !h.extendedL2 {
		switch {
		case e&l2ZeroFlag != 0:
			clear(chunk)
		case host == 0:
			if err := r.flush(); err != nil {
				return 0, err
			}
			return len(chunk), l.readBelow(chunk, off)
		default:
			if host >= fileSize {
				return 0, corrupt(l.Path, "L2 table entry", en.at, "cluster for guest offset %d at host offset %#x past the end of the %d-byte file", ci*cs, host, fileSize)
			}
			return r.data(at, len(chunk), host+in, off)
		}
		return len(chunk), nil
	}
	// Extended L2: 32 subclusters, each allocated, zero or unallocated.
	sub := cs / 32
	si := in / sub
	chunk = chunk[:min(int64(len(chunk)), (si+1)*sub-in)]
	alloc, zero := uint32(en.bm), uint32(en.bm>>32)
	switch {
	case alloc&zero != 0:
		return 0, corrupt(l.Path, "L2 table entry", en.at, "subclusters %#x both allocated and zero", alloc&zero)
	case alloc&(1<<si) != 0:
		if host == 0 || host >= fileSize {
			return 0, corrupt(l.Path, "L2 table entry", en.at, "allocated subclusters for guest offset %d at host offset %#x outside the %d-byte file", ci*cs, host, fileSize)
		}
		return r.data(at, len(chunk), host+in, off)
	case zero&(1<<si) != 0:
		clear(chunk)
		return len(chunk), nil
	}
	if err := r.flush(); err != nil {
		return 0, err
	}
	return len(chunk), l.readBelow(chunk, off)
}

// readBelow reads an unallocated range from the backing layer: zeros past
// its end, or everywhere without one.
func (l *Layer) readBelow(p []byte, off int64) error {
	if l.backing == nil {
		clear(p)
		return nil
	}
	n, err := l.backing.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if n < len(p) && off+int64(n) < l.backing.Size() {
		return corrupt(l.Path, "guest read", off+int64(n), "the backing layer %s returned %d of %d bytes", l.backing.Name(), n, len(p))
	}
	clear(p[n:])
	return nil
}

// compressed returns the inflated guest cluster ci, whose L2 entry en is
// compressed: from the layer's cache, or read with one pread of its exact
// compressed extent (inside the file, checked) and inflated once, by the
// goroutine that asked first while the others wait for it. The result has
// the cluster size and is never modified.
func (l *Layer) compressed(ci int64, en entry) ([]byte, error) {
	host, n := l.h.compressedExtent(en.e)
	return l.comp.get(uint64(host), func() ([]byte, error) {
		if host == 0 || host >= l.FileSize {
			return nil, corrupt(l.Path, "L2 table entry", en.at, "compressed cluster for guest offset %d at host offset %#x outside the %d-byte file", ci*l.h.clusterSize, host, l.FileSize)
		}
		// QEMU writes the last compressed cluster without padding its
		// last sector: the extent may run past the end of the file.
		n = min(n, l.FileSize-host)
		in := make([]byte, n) // n <= 2 clusters: at most 2^(cluster_bits-8) sectors
		if k, err := l.f.ReadAt(in, host); k < len(in) {
			if err == nil || errors.Is(err, io.EOF) {
				return nil, corrupt(l.Path, "compressed cluster", host, "the file ends inside it")
			}
			return nil, &Error{Path: l.Path, What: "compressed cluster", Offset: host, Err: err}
		}
		out, err := inflate(l.h.compressionType, in, int(l.h.clusterSize))
		if err != nil {
			return nil, corrupt(l.Path, "compressed cluster", host, "guest cluster %d (%s, %d bytes): %v", ci, l.Compression, n, err)
		}
		return out, nil
	})
}
