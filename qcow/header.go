package qcow

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
)

// Limits, following QEMU's block/qcow2.h where it has one.
const (
	minClusterBits     = 9
	maxClusterBits     = 21
	maxClusterSize     = 1 << maxClusterBits
	maxL1Entries       = 32 << 20 / 8 // QCOW_MAX_L1_SIZE / 8
	maxRefTableBytes   = 8 << 20      // QCOW_MAX_REFTABLE_SIZE
	maxSnapshots       = 65536        // QCOW_MAX_SNAPSHOTS
	maxBackingName     = 1023
	maxBackingFmtName  = 15
	maxVirtualSize     = 1 << 62
	v2HeaderLength     = 72
	v3MinHeaderLength  = 104
	maxHeaderExtension = 256 // entries; the area is also bounded by the first cluster
)

// Incompatible feature bits.
const (
	incDirty      = 1 << 0
	incCorrupt    = 1 << 1
	incExtData    = 1 << 2
	incCompress   = 1 << 3
	incExtendedL2 = 1 << 4
	incKnown      = incDirty | incCorrupt | incExtData | incCompress | incExtendedL2
)

// Autoclear feature bits.
const autoclearBitmaps = 1 << 0

// Header extension types.
const (
	extEnd         = 0x00000000
	extBackingFmt  = 0xe2792aca
	extFeatureName = 0x6803f857
	extBitmaps     = 0x23852875
	extCrypto      = 0x0537be77
	extDataFile    = 0x44415441
)

// header is a parsed and validated qcow2 header.
type header struct {
	version           uint32
	backingOffset     uint64
	backingSize       uint32
	clusterBits       uint32
	size              uint64
	cryptMethod       uint32
	l1Size            uint32
	l1Offset          uint64
	refTableOffset    uint64
	refTableClusters  uint32
	nbSnapshots       uint32
	snapshotsOffset   uint64
	incompatible      uint64
	compatible        uint64
	autoclear         uint64
	refcountOrder     uint32
	headerLength      uint32
	compressionType   uint8
	backingRef        string
	backingFormat     string
	bitmapsExt        *bitmapsExt
	clusterSize       int64
	l2Entries         int64 // entries per L2 table
	l2EntrySize       int64 // 8, or 16 with extended L2
	extendedL2        bool
	minL1, fileSize   int64
	hasBackingPointer bool
}

type bitmapsExt struct {
	nbBitmaps uint32
	dirSize   uint64
	dirOffset uint64
	extOffset int64 // where the extension sits in the file
}

// parseHeader reads and validates the qcow2 header of f (a file of fileSize
// bytes) and its header extensions. Only bounded reads are made: the fixed
// header and at most the first cluster.
func parseHeader(path string, r io.ReaderAt, fileSize int64) (*header, error) {
	var b [112]byte
	n, err := r.ReadAt(b[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, &Error{Path: path, What: "header", Offset: 0, Err: err}
	}
	if n < v2HeaderLength {
		return nil, corrupt(path, "header", 0, "file of %d bytes is too short for a qcow2 header", fileSize)
	}
	be := binary.BigEndian
	if string(b[:4]) != qcow2Magic {
		return nil, corrupt(path, "header", 0, "no qcow2 magic")
	}
	h := &header{
		version:          be.Uint32(b[4:]),
		backingOffset:    be.Uint64(b[8:]),
		backingSize:      be.Uint32(b[16:]),
		clusterBits:      be.Uint32(b[20:]),
		size:             be.Uint64(b[24:]),
		cryptMethod:      be.Uint32(b[32:]),
		l1Size:           be.Uint32(b[36:]),
		l1Offset:         be.Uint64(b[40:]),
		refTableOffset:   be.Uint64(b[48:]),
		refTableClusters: be.Uint32(b[56:]),
		nbSnapshots:      be.Uint32(b[60:]),
		snapshotsOffset:  be.Uint64(b[64:]),
		fileSize:         fileSize,
	}
	switch h.version {
	case 2:
		h.headerLength = v2HeaderLength
		h.refcountOrder = 4
	case 3:
		if n < v3MinHeaderLength {
			return nil, corrupt(path, "header", 0, "file of %d bytes is too short for a qcow2 v3 header", fileSize)
		}
		h.incompatible = be.Uint64(b[72:])
		h.compatible = be.Uint64(b[80:])
		h.autoclear = be.Uint64(b[88:])
		h.refcountOrder = be.Uint32(b[96:])
		h.headerLength = be.Uint32(b[100:])
	case 1:
		return nil, unsupported(path, "header", 4, "qcow version 1")
	default:
		return nil, unsupported(path, "header", 4, "qcow2 version %d", h.version)
	}
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return nil, corrupt(path, "header cluster_bits", 20, "%d not in [%d,%d]", h.clusterBits, minClusterBits, maxClusterBits)
	}
	h.clusterSize = 1 << h.clusterBits
	cs := h.clusterSize
	if h.version == 3 {
		if h.headerLength < v3MinHeaderLength || h.headerLength%8 != 0 || int64(h.headerLength) > cs {
			return nil, corrupt(path, "header header_length", 100, "%d (need a multiple of 8 in [%d,%d])", h.headerLength, v3MinHeaderLength, cs)
		}
		if h.refcountOrder > 6 {
			return nil, corrupt(path, "header refcount_order", 96, "%d > 6", h.refcountOrder)
		}
		if unknown := h.incompatible &^ incKnown; unknown != 0 {
			return nil, unsupported(path, "header incompatible_features", 72, "unknown incompatible feature bits %#x", unknown)
		}
		if h.incompatible&incExtData != 0 {
			return nil, unsupported(path, "header incompatible_features", 72, "external data file")
		}
		if h.headerLength > v3MinHeaderLength {
			if n < 105 {
				return nil, corrupt(path, "header compression_type", 104, "file too short")
			}
			h.compressionType = b[104]
		}
		switch {
		case h.compressionType > 1:
			return nil, unsupported(path, "header compression_type", 104, "compression type %d", h.compressionType)
		case h.compressionType != 0 && h.incompatible&incCompress == 0:
			return nil, corrupt(path, "header compression_type", 104, "compression type %d without the compression incompatible bit", h.compressionType)
		case h.compressionType == 0 && h.incompatible&incCompress != 0 && h.headerLength <= v3MinHeaderLength:
			return nil, corrupt(path, "header incompatible_features", 72, "compression bit set but header has no compression_type field")
		}
		h.extendedL2 = h.incompatible&incExtendedL2 != 0
	}
	if h.extendedL2 && h.clusterBits < 14 {
		return nil, corrupt(path, "header cluster_bits", 20, "extended L2 entries need clusters of at least 16 KiB, got %d bytes", cs)
	}
	if h.cryptMethod != 0 {
		return nil, unsupported(path, "header crypt_method", 32, "encrypted image (crypt method %d)", h.cryptMethod)
	}
	if h.size > maxVirtualSize {
		return nil, corrupt(path, "header size", 24, "virtual size %d too large", h.size)
	}
	h.l2EntrySize = 8
	if h.extendedL2 {
		h.l2EntrySize = 16
	}
	h.l2Entries = cs / h.l2EntrySize
	perL1 := cs * h.l2Entries // guest bytes per L1 entry (<= 2^40)
	h.minL1 = int64((h.size + uint64(perL1) - 1) / uint64(perL1))
	if h.minL1 > maxL1Entries {
		return nil, unsupported(path, "header size", 24, "virtual size %d needs %d L1 entries, more than %d", h.size, h.minL1, maxL1Entries)
	}
	if int64(h.l1Size) < h.minL1 || h.l1Size > maxL1Entries {
		return nil, corrupt(path, "header l1_size", 36, "%d entries for a %d-byte disk (need %d..%d)", h.l1Size, h.size, h.minL1, maxL1Entries)
	}
	if h.l1Size > 0 {
		if h.l1Offset == 0 || h.l1Offset%uint64(cs) != 0 {
			return nil, corrupt(path, "L1 table", int64(min(h.l1Offset, 1<<62)), "offset not cluster aligned or zero")
		}
		if h.l1Offset > uint64(fileSize) || uint64(fileSize)-h.l1Offset < uint64(h.l1Size)*8 {
			return nil, corrupt(path, "L1 table", int64(min(h.l1Offset, 1<<62)), "%d entries end past the end of the %d-byte file", h.l1Size, fileSize)
		}
	}
	if h.refTableOffset == 0 || h.refTableOffset%uint64(cs) != 0 {
		return nil, corrupt(path, "refcount table", int64(min(h.refTableOffset, 1<<62)), "offset not cluster aligned or zero")
	}
	if h.refTableClusters == 0 || uint64(h.refTableClusters) > maxRefTableBytes/uint64(cs)+1 {
		return nil, corrupt(path, "header refcount_table_clusters", 56, "%d clusters", h.refTableClusters)
	}
	if h.refTableOffset > uint64(fileSize) || uint64(fileSize)-h.refTableOffset < uint64(h.refTableClusters)*uint64(cs) {
		return nil, corrupt(path, "refcount table", int64(min(h.refTableOffset, 1<<62)), "%d clusters end past the end of the %d-byte file", h.refTableClusters, fileSize)
	}
	if h.nbSnapshots > maxSnapshots {
		return nil, corrupt(path, "header nb_snapshots", 60, "%d snapshots", h.nbSnapshots)
	}
	if h.nbSnapshots > 0 && (h.snapshotsOffset%uint64(cs) != 0 || h.snapshotsOffset >= uint64(fileSize)) {
		return nil, corrupt(path, "snapshot table", int64(min(h.snapshotsOffset, 1<<62)), "offset not cluster aligned or past the end of the file")
	}

	// The first cluster holds the header extensions and the backing name.
	first := make([]byte, min(cs, fileSize))
	if _, err := r.ReadAt(first, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, &Error{Path: path, What: "first cluster", Offset: 0, Err: err}
	}
	extEndOff := int64(len(first))
	if h.backingOffset != 0 {
		h.hasBackingPointer = true
		if h.backingOffset < uint64(h.headerLength) || h.backingOffset >= uint64(len(first)) ||
			h.backingSize > maxBackingName || uint64(h.backingSize) > uint64(len(first))-h.backingOffset {
			return nil, corrupt(path, "backing file name", int64(min(h.backingOffset, 1<<62)), "%d bytes not inside the first cluster or longer than %d", h.backingSize, maxBackingName)
		}
		h.backingRef = string(first[h.backingOffset : h.backingOffset+uint64(h.backingSize)])
		extEndOff = int64(h.backingOffset)
	}
	if err := h.parseExtensions(path, first[:extEndOff]); err != nil {
		return nil, err
	}
	return h, nil
}

// parseExtensions walks the header extension area first[headerLength:].
func (h *header) parseExtensions(path string, first []byte) error {
	off := int64(h.headerLength)
	be := binary.BigEndian
	for i := 0; ; i++ {
		if off+8 > int64(len(first)) {
			// QEMU tolerates an area without an end marker that fills the space.
			return nil
		}
		if i >= maxHeaderExtension {
			return corrupt(path, "header extension", off, "more than %d extensions", maxHeaderExtension)
		}
		typ := be.Uint32(first[off:])
		length := int64(be.Uint32(first[off+4:]))
		if typ == extEnd {
			return nil
		}
		data := off + 8
		if length > int64(len(first))-data {
			return corrupt(path, "header extension", off, "type %#x of %d bytes runs past the extension area", typ, length)
		}
		d := first[data : data+length]
		switch typ {
		case extBackingFmt:
			if length > maxBackingFmtName {
				return corrupt(path, "backing format extension", off, "name of %d bytes", length)
			}
			h.backingFormat = string(bytes.TrimRight(d, "\x00"))
		case extBitmaps:
			if length != 24 {
				return corrupt(path, "bitmaps extension", off, "length %d, want 24", length)
			}
			h.bitmapsExt = &bitmapsExt{
				nbBitmaps: be.Uint32(d[0:]),
				dirSize:   be.Uint64(d[8:]),
				dirOffset: be.Uint64(d[16:]),
				extOffset: off,
			}
		case extDataFile:
			if h.incompatible&incExtData != 0 {
				return unsupported(path, "external data file extension", off, "external data file")
			}
		}
		off = data + (length+7)&^7
	}
}

// compressionName names the compression type as qemu-img info does.
func (h *header) compressionName() string {
	if h.compressionType == 1 {
		return "zstd"
	}
	return "zlib"
}

// BitmapInfo describes one persistent dirty bitmap of a qcow2 layer, from
// the bitmap directory (QEMU docs/interop/qcow2.txt, "Bitmaps").
type BitmapInfo struct {
	Name        string
	Granularity int64 // bytes of guest disk per bit
	InUse       bool  // flag in_use: the bitmap was not saved cleanly and is inconsistent
	Auto        bool  // flag auto: QEMU keeps it enabled (tracking writes)
	Enabled     bool  // same as Auto: the bitmap records writes when QEMU runs the image
	Type        int   // 1 = dirty tracking bitmap
	// TableOffset and TableSize locate the bitmap table (entries of 8 bytes)
	// for the reader of the bitmap content.
	TableOffset int64
	TableSize   uint32
	// DirOffset is the file offset of this entry in the bitmap directory.
	DirOffset int64
}

const (
	maxBitmaps       = 65535
	maxBitmapDirSize = 64 << 20
	bitmapInUse      = 1 << 0
	bitmapAuto       = 1 << 1
	bitmapKnownFlags = bitmapInUse | bitmapAuto
	maxBitmapName    = 1023
	maxGranularity   = 31
	minGranularity   = 9
)

// readBitmaps reads the bitmap directory. The extension is only trusted when
// the autoclear bit says it is consistent, as QEMU does.
func (h *header) readBitmaps(path string, r io.ReaderAt) ([]BitmapInfo, error) {
	e := h.bitmapsExt
	if e == nil || h.autoclear&autoclearBitmaps == 0 {
		return nil, nil
	}
	if e.nbBitmaps == 0 || e.nbBitmaps > maxBitmaps {
		return nil, corrupt(path, "bitmaps extension", e.extOffset, "%d bitmaps", e.nbBitmaps)
	}
	if e.dirSize == 0 || e.dirSize > maxBitmapDirSize || e.dirOffset%uint64(h.clusterSize) != 0 ||
		e.dirOffset > uint64(h.fileSize) || uint64(h.fileSize)-e.dirOffset < e.dirSize {
		return nil, corrupt(path, "bitmap directory", int64(min(e.dirOffset, 1<<62)), "%d bytes not aligned or not inside the file", e.dirSize)
	}
	dir := make([]byte, e.dirSize)
	if _, err := r.ReadAt(dir, int64(e.dirOffset)); err != nil {
		return nil, &Error{Path: path, What: "bitmap directory", Offset: int64(e.dirOffset), Err: err}
	}
	be := binary.BigEndian
	var out []BitmapInfo
	off := 0
	for i := uint32(0); i < e.nbBitmaps; i++ {
		at := int64(e.dirOffset) + int64(off)
		if len(dir)-off < 24 {
			return nil, corrupt(path, "bitmap directory entry", at, "entry %d runs past the directory", i)
		}
		d := dir[off:]
		tableOff := be.Uint64(d[0:])
		tableSize := be.Uint32(d[8:])
		flags := be.Uint32(d[12:])
		typ := d[16]
		gran := d[17]
		nameSize := int(be.Uint16(d[18:]))
		extra := int64(be.Uint32(d[20:]))
		entLen := 24 + extra + int64(nameSize)
		if entLen > int64(len(d)) {
			return nil, corrupt(path, "bitmap directory entry", at, "entry %d of %d bytes runs past the directory", i, entLen)
		}
		if nameSize == 0 || nameSize > maxBitmapName {
			return nil, corrupt(path, "bitmap directory entry", at, "name of %d bytes", nameSize)
		}
		if gran < minGranularity || gran > maxGranularity {
			return nil, corrupt(path, "bitmap directory entry", at, "granularity bits %d", gran)
		}
		if flags&^bitmapKnownFlags != 0 {
			return nil, unsupported(path, "bitmap directory entry", at, "unknown bitmap flags %#x", flags)
		}
		if tableOff%uint64(h.clusterSize) != 0 || tableOff > uint64(h.fileSize) || uint64(h.fileSize)-tableOff < uint64(tableSize)*8 {
			return nil, corrupt(path, "bitmap table", int64(min(tableOff, 1<<62)), "%d entries not aligned or not inside the file", tableSize)
		}
		name := string(d[24+extra : 24+extra+int64(nameSize)])
		out = append(out, BitmapInfo{
			Name:        name,
			Granularity: 1 << gran,
			InUse:       flags&bitmapInUse != 0,
			Auto:        flags&bitmapAuto != 0,
			Enabled:     flags&bitmapAuto != 0,
			Type:        int(typ),
			TableOffset: int64(tableOff),
			TableSize:   tableSize,
			DirOffset:   at,
		})
		off += int((entLen + 7) &^ 7)
		if off > len(dir) && i+1 < e.nbBitmaps {
			return nil, corrupt(path, "bitmap directory", int64(e.dirOffset), "entries run past the directory")
		}
	}
	return out, nil
}
