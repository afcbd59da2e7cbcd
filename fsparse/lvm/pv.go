// Package lvm reads LVM2 physical volumes, volume groups and logical
// volumes from their on-disk metadata, without device-mapper.
//
// A physical volume (PV) has a label ("LABELONE") in one of its first four
// sectors, whose PV header lists its data areas and metadata areas. Each
// metadata area starts with a header (CRC-checked with LVM's own CRC
// variant) whose first raw location points to the current metadata text in
// the area's circular buffer (CRC-checked too). The text, in LVM's config
// syntax, is read by a bounded parser. A volume group (VG) is assembled from
// the PVs that name it, with the valid metadata of highest seqno.
//
// Logical volumes (LVs) made of linear segments (type "striped" with one
// stripe) are readable: an LV is an io.ReaderAt composed from its segments,
// and Map gives where each run of the LV lies on its PVs. Striped, mirror,
// RAID, thin, snapshot, cache, VDO and other segment types are listed with
// their type and refused with ErrUnsupported.
//
// Invariants: every count, length and offset read from a PV is bounded
// before use (areas per list, metadata size, nesting depth, elements,
// segments, extents); a segment outside its PV, or two segments on the same
// extents of a PV, is an error naming the structure and its offset. Nothing
// is ever written.
package lvm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
)

// Sentinel errors.
var (
	// ErrCorrupt: a label, header or metadata text is invalid.
	ErrCorrupt = vmerr.New("lvm: corrupt", vmerr.ErrCorrupt)
	// ErrUnsupported: an LV whose segment type this package does not read.
	ErrUnsupported = vmerr.New("lvm: unsupported", vmerr.ErrUnsupported)
	// ErrNoLabel: the device has no LVM2 label.
	ErrNoLabel = vmerr.New("lvm: no LVM2 label", vmerr.ErrNotPresent)
	// ErrMissingPV: an LV lies on a PV that was not found.
	ErrMissingPV = vmerr.New("lvm: physical volume missing", vmerr.ErrNotPresent)
)

// Limits on what a hostile PV may ask for.
const (
	sectorSize      = 512
	labelSectors    = 4       // the label is in one of the first 4 sectors
	maxAreas        = 16      // data or metadata areas listed in a PV header
	maxMetadataText = 4 << 20 // bytes of one metadata text
	maxLVs          = 4096
	maxPVs          = 4096
	maxSegments     = 1 << 14 // segments of one VG
	maxStripes      = 128
)

const (
	labelID   = "LABELONE"
	labelType = "LVM2 001"
	mdaMagic  = " LVM2 x[5A%r0N*>"
	initCRC   = 0xf597a6cf
	// raw location flag: this copy of the metadata is ignored.
	rawLocnIgnored = 1
)

func corrupt(structure string, off int64, format string, args ...any) error {
	return vmerr.Corrupt(ErrCorrupt, "lvm: "+structure, off, format, args...)
}

// CRC is LVM's checksum: CRC-32 (IEEE polynomial, reflected) started at
// 0xf597a6cf, without the final inversion. Continue a checksum over a
// second part by passing the first result as seed.
func CRC(seed uint32, b []byte) uint32 {
	return ^crc32.Update(^seed, crc32.IEEETable, b)
}

// Area is a data or metadata area of a PV: bytes [Offset, Offset+Size)
// of the device (Size 0 for a data area: to the end of the device).
type Area struct {
	Offset uint64 `json:"offset"`
	Size   uint64 `json:"size"`
}

// Metadata is one valid metadata text found in a metadata area.
type Metadata struct {
	Area   int64  `json:"area"`   // offset of the metadata area header on the device
	Offset int64  `json:"offset"` // offset of the text on the device (start of the first part)
	Size   int64  `json:"size"`
	CRC    uint32 `json:"crc"`
	VGName string `json:"vg"`
	Seqno  int64  `json:"seqno"`
	Text   []byte `json:"-"`
	root   *Section
}

// PV is a physical volume read from a device.
type PV struct {
	// Where names the device for the caller (a partition "p2", an image).
	Where       string     `json:"where"`
	LabelSector int64      `json:"label_sector"`
	UUID        string     `json:"uuid"` // with dashes, as lvm prints it
	DevSize     uint64     `json:"dev_size"`
	DataAreas   []Area     `json:"data_areas"`
	MetaAreas   []Area     `json:"metadata_areas"`
	Metadata    []Metadata `json:"metadata,omitempty"`
	// Problems are metadata areas that could not be used (bad checksum,
	// text that does not parse); the PV is still usable through another
	// area or another PV's metadata.
	Problems []vmerr.Problem `json:"-"`

	Dev  io.ReaderAt `json:"-"`
	Size int64       `json:"-"`
	// Base is the offset of the device in the caller's address space
	// (the partition start on its disk), added to Map's offsets.
	Base int64 `json:"-"`
}

// HasLabel reports whether one of the first four sectors of dev holds an
// LVM2 label signature (not yet checked).
func HasLabel(dev io.ReaderAt) bool {
	b := make([]byte, labelSectors*sectorSize)
	n, _ := dev.ReadAt(b, 0)
	for i := 0; i+sectorSize <= n; i += sectorSize {
		if string(b[i:i+8]) == labelID && string(b[i+24:i+32]) == labelType {
			return true
		}
	}
	return false
}

// ReadPV reads the label, PV header and metadata areas of the device dev of
// size bytes. where names it in the PV and its errors.
func ReadPV(dev io.ReaderAt, size int64, where string) (*PV, error) {
	b := make([]byte, labelSectors*sectorSize)
	n, err := dev.ReadAt(b, 0)
	if n < sectorSize*2 {
		return nil, fmt.Errorf("lvm: %s: reading the label sectors: %w", where, errOr(err))
	}
	b = b[:n-n%sectorSize]
	pv := &PV{Where: where, Dev: dev, Size: size, LabelSector: -1}
	for i := 0; i < len(b)/sectorSize; i++ {
		s := b[i*sectorSize : (i+1)*sectorSize]
		if string(s[:8]) != labelID {
			continue
		}
		off := int64(i * sectorSize)
		if got := binary.LittleEndian.Uint64(s[8:]); got != uint64(i) {
			return nil, corrupt("label", off, "sector field %d, found in sector %d", got, i)
		}
		if want, got := binary.LittleEndian.Uint32(s[16:]), CRC(initCRC, s[20:]); want != got {
			return nil, corrupt("label", off, "checksum %#x, computed %#x", want, got)
		}
		if string(s[24:32]) != labelType {
			return nil, fmt.Errorf("lvm: %s: label at offset %d: type %q: %w", where, off, s[24:32], ErrUnsupported)
		}
		pv.LabelSector = int64(i)
		if err := pv.parseHeader(s, off); err != nil {
			return nil, err
		}
		break
	}
	if pv.LabelSector < 0 {
		return nil, fmt.Errorf("lvm: %s: %w", where, ErrNoLabel)
	}
	for _, a := range pv.MetaAreas {
		md, err := pv.readMetadataArea(a)
		if err != nil {
			pv.Problems = append(pv.Problems, vmerr.Problem{Where: where + ": metadata area", Offset: int64(a.Offset), Err: err})
			continue
		}
		if md != nil {
			pv.Metadata = append(pv.Metadata, *md)
		}
	}
	return pv, nil
}

func errOr(err error) error {
	if err != nil && err != io.EOF {
		return err
	}
	return io.ErrUnexpectedEOF
}

// parseHeader reads the PV header of the label sector s at device offset
// off: the UUID, the device size and the two area lists, each ended by a
// zero entry and bounded by the sector and by maxAreas.
func (pv *PV) parseHeader(s []byte, off int64) error {
	hoff := int(binary.LittleEndian.Uint32(s[20:]))
	if hoff < 32 || hoff > sectorSize-(32+8+2*16) {
		return corrupt("label", off, "PV header offset %d outside the sector", hoff)
	}
	h := s[hoff:]
	uuid := h[:32]
	for _, c := range uuid {
		if !isIdent(c) || c == '/' {
			return corrupt("PV header", off+int64(hoff), "UUID %q is not printable", uuid)
		}
	}
	pv.UUID = FormatUUID(string(uuid))
	pv.DevSize = binary.LittleEndian.Uint64(h[32:])
	p := 40
	list := func(what string) ([]Area, error) {
		var out []Area
		for {
			if p+16 > len(h) {
				return nil, corrupt("PV header", off+int64(hoff), "%s list runs past the label sector", what)
			}
			a := Area{binary.LittleEndian.Uint64(h[p:]), binary.LittleEndian.Uint64(h[p+8:])}
			p += 16
			if a.Offset == 0 {
				return out, nil
			}
			if len(out) >= maxAreas {
				return nil, corrupt("PV header", off+int64(hoff), "more than %d %s", maxAreas, what)
			}
			if a.Offset >= uint64(pv.Size) || a.Size > uint64(pv.Size) || a.Offset+a.Size > uint64(pv.Size) {
				return nil, corrupt("PV header", off+int64(hoff), "%s at %d+%d outside the %d-byte device", what, a.Offset, a.Size, pv.Size)
			}
			out = append(out, a)
		}
	}
	var err error
	if pv.DataAreas, err = list("data areas"); err != nil {
		return err
	}
	if pv.MetaAreas, err = list("metadata areas"); err != nil {
		return err
	}
	return nil
}

// readMetadataArea reads the metadata area header at a and the current
// metadata text its first raw location points to; nil, nil when that
// location is empty or marked ignored.
func (pv *PV) readMetadataArea(a Area) (*Metadata, error) {
	off := int64(a.Offset)
	if a.Size < 2*sectorSize {
		return nil, corrupt("metadata area header", off, "area of %d bytes", a.Size)
	}
	h := make([]byte, sectorSize)
	if _, err := pv.Dev.ReadAt(h, off); err != nil {
		return nil, fmt.Errorf("lvm: metadata area header at offset %d: %w", off, errOr(err))
	}
	if want, got := binary.LittleEndian.Uint32(h), CRC(initCRC, h[4:]); want != got {
		return nil, corrupt("metadata area header", off, "checksum %#x, computed %#x", want, got)
	}
	if string(h[4:20]) != mdaMagic {
		return nil, corrupt("metadata area header", off, "bad magic %q", h[4:20])
	}
	if v := binary.LittleEndian.Uint32(h[20:]); v != 1 {
		return nil, fmt.Errorf("lvm: metadata area header at offset %d: version %d: %w", off, v, ErrUnsupported)
	}
	start, size := binary.LittleEndian.Uint64(h[24:]), binary.LittleEndian.Uint64(h[32:])
	if start != a.Offset || size != a.Size {
		return nil, corrupt("metadata area header", off, "says %d+%d, the PV header %d+%d", start, size, a.Offset, a.Size)
	}
	// raw_locn[0]: offset (from the area start), size, checksum, flags.
	rl := h[40:64]
	roff, rsize := binary.LittleEndian.Uint64(rl), binary.LittleEndian.Uint64(rl[8:])
	rcrc, flags := binary.LittleEndian.Uint32(rl[16:]), binary.LittleEndian.Uint32(rl[20:])
	if roff == 0 || flags&rawLocnIgnored != 0 {
		return nil, nil
	}
	if roff < sectorSize || roff >= size || rsize == 0 || rsize > size-sectorSize || rsize > maxMetadataText {
		return nil, corrupt("metadata raw location", off+40, "text at %d+%d in a %d-byte area", roff, rsize, size)
	}
	// The text may wrap from the end of the area to just after its header.
	text := make([]byte, rsize)
	first := min(rsize, size-roff)
	if _, err := pv.Dev.ReadAt(text[:first], off+int64(roff)); err != nil {
		return nil, fmt.Errorf("lvm: metadata text at offset %d: %w", off+int64(roff), errOr(err))
	}
	if first < rsize {
		if _, err := pv.Dev.ReadAt(text[first:], off+sectorSize); err != nil {
			return nil, fmt.Errorf("lvm: metadata text (wrapped part) at offset %d: %w", off+sectorSize, errOr(err))
		}
	}
	if got := CRC(initCRC, text); got != rcrc {
		return nil, corrupt("metadata text", off+int64(roff), "checksum %#x, computed %#x", rcrc, got)
	}
	text = bytes.TrimRight(text, "\x00")
	root, err := ParseConfig(text, off+int64(roff))
	if err != nil {
		return nil, err
	}
	md := &Metadata{Area: off, Offset: off + int64(roff), Size: int64(rsize), CRC: rcrc, Text: text, root: root}
	for _, k := range root.Keys {
		if v := root.Vals[k]; v.Kind == '{' {
			md.VGName = k
			md.Seqno, _ = v.Sect.Int("seqno")
			break
		}
	}
	if md.VGName == "" {
		return nil, corrupt("metadata text", md.Offset, "no volume group section")
	}
	return md, nil
}

// FormatUUID writes a 32-character LVM UUID with dashes (6-4-4-4-4-4-6),
// as lvm prints it; other lengths are returned as they are.
func FormatUUID(u string) string {
	u = strings.ReplaceAll(u, "-", "")
	if len(u) != 32 {
		return u
	}
	return u[:6] + "-" + u[6:10] + "-" + u[10:14] + "-" + u[14:18] + "-" + u[18:22] + "-" + u[22:26] + "-" + u[26:]
}
