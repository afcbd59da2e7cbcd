package ntfs

import (
	"encoding/binary"
	"fmt"
	"unicode/utf16"

	"github.com/vmscope/vmscope/vmerr"
)

// Attribute type codes.
const (
	attrStandardInfo = 0x10
	attrList         = 0x20
	attrFileName     = 0x30
	attrVolumeName   = 0x60
	attrVolumeInfo   = 0x70
	attrData         = 0x80
	attrIndexRoot    = 0x90
	attrIndexAlloc   = 0xA0
	attrBitmap       = 0xB0
	attrReparse      = 0xC0
	attrEnd          = 0xFFFFFFFF
)

// Attribute flags.
const (
	flagCompressed = 0x0001
	flagEncrypted  = 0x4000
	flagSparse     = 0x8000
)

// Record flags.
const (
	recInUse = 0x0001
	recDir   = 0x0002
)

// Run is a run of clusters of a non-resident attribute: VCN [VCN, VCN+Len)
// lies at LCN [LCN, LCN+Len), or is a hole (Sparse) that reads as zeros.
type Run struct {
	VCN, LCN, Len uint64
	Sparse        bool
}

// Attr is one attribute of an MFT record, with its value when resident or
// its run list when not.
type Attr struct {
	Type     uint32
	Name     string
	ID       uint16
	Flags    uint16
	Record   uint64 // the MFT record that holds this attribute
	Resident bool
	Value    []byte // resident value

	StartVCN, LastVCN uint64
	Runs              []Run
	DataSize          int64
	AllocSize         int64
	InitSize          int64
	CompUnit          uint8 // log2 of clusters per compression unit
}

// Record is one parsed MFT record (fixups applied).
type Record struct {
	Num   uint64
	Seq   uint16
	Flags uint16
	Links uint16
	Base  uint64 // base record number of an extension record, 0 for a base record
	Attrs []Attr
}

// InUse and IsDir test the record's flags.
func (r *Record) InUse() bool { return r.Flags&recInUse != 0 }
func (r *Record) IsDir() bool { return r.Flags&recDir != 0 }

// corrupt is a FormatError naming a structure of the volume.
func corrupt(structure string, off int64, format string, args ...any) error {
	return vmerr.Corrupt(ErrCorrupt, structure, off, format, args...)
}

// applyFixups checks the update sequence of a multi-sector record (an MFT
// record or an INDX block) and restores the bytes it replaced. sector is
// the fixup stride (512).
func applyFixups(b []byte, what string, off int64) error {
	if len(b) < 8 {
		return corrupt(what, off, "record of %d bytes", len(b))
	}
	usaOff := int(binary.LittleEndian.Uint16(b[4:]))
	usaCnt := int(binary.LittleEndian.Uint16(b[6:]))
	const sector = 512
	if usaCnt != len(b)/sector+1 || usaOff < 8 || usaOff+2*usaCnt > len(b) || usaOff%2 != 0 {
		return corrupt(what, off, "update sequence at %d with %d entries in %d bytes", usaOff, usaCnt, len(b))
	}
	usn := b[usaOff : usaOff+2]
	for i := 1; i < usaCnt; i++ {
		end := i*sector - 2
		if b[end] != usn[0] || b[end+1] != usn[1] {
			return corrupt(what, off+int64(end), "update sequence number %#04x of sector %d is %#04x (torn write)",
				binary.LittleEndian.Uint16(usn), i-1, binary.LittleEndian.Uint16(b[end:]))
		}
		b[end], b[end+1] = b[usaOff+2*i], b[usaOff+2*i+1]
	}
	return nil
}

// parseRecord parses the raw bytes of MFT record num (read at volume
// offset off), applying its fixups in place.
func parseRecord(b []byte, num uint64, off int64, clusters uint64) (*Record, error) {
	what := fmt.Sprintf("MFT record %d", num)
	if string(b[:4]) != "FILE" {
		if string(b[:4]) == "BAAD" {
			return nil, corrupt(what, off, "marked bad (BAAD)")
		}
		if string(b[:4]) == "\x00\x00\x00\x00" {
			return nil, &vmerr.FormatError{Struct: what, Offset: off, Err: ErrFreeSlot}
		}
		return nil, corrupt(what, off, "magic %q, want FILE", b[:4])
	}
	if err := applyFixups(b, what, off); err != nil {
		return nil, err
	}
	r := &Record{
		Num:   num,
		Seq:   binary.LittleEndian.Uint16(b[0x10:]),
		Links: binary.LittleEndian.Uint16(b[0x12:]),
		Flags: binary.LittleEndian.Uint16(b[0x16:]),
		Base:  binary.LittleEndian.Uint64(b[0x20:]) & 0xFFFFFFFFFFFF,
	}
	first := int(binary.LittleEndian.Uint16(b[0x14:]))
	used := int(binary.LittleEndian.Uint32(b[0x18:]))
	if used > len(b) || used < 0x30 {
		return nil, corrupt(what, off+0x18, "used size %d of a %d-byte record", used, len(b))
	}
	if first < 0x30 || first >= used || first%8 != 0 {
		return nil, corrupt(what, off+0x14, "first attribute at %d (used %d)", first, used)
	}
	p := first
	for n := 0; ; n++ {
		if p+4 > used {
			return nil, corrupt(what, off+int64(p), "attributes run past the used size %d without an end marker", used)
		}
		typ := binary.LittleEndian.Uint32(b[p:])
		if typ == attrEnd {
			break
		}
		if p+16 > used {
			return nil, corrupt(what, off+int64(p), "attribute header past the used size %d", used)
		}
		alen := int(binary.LittleEndian.Uint32(b[p+4:]))
		if alen < 16 || alen%8 != 0 || p+alen > used {
			return nil, corrupt(what, off+int64(p), "attribute %#x of length %d at %d (used %d)", typ, alen, p, used)
		}
		a, err := parseAttr(b[p:p+alen], typ, num, clusters)
		if err != nil {
			return nil, corrupt(what, off+int64(p), "attribute %#x: %v", typ, err)
		}
		r.Attrs = append(r.Attrs, a)
		p += alen
	}
	return r, nil
}

// parseAttr parses one attribute (b is exactly its bytes).
func parseAttr(b []byte, typ uint32, rec uint64, clusters uint64) (Attr, error) {
	a := Attr{Type: typ, Record: rec, Resident: b[8] == 0,
		Flags: binary.LittleEndian.Uint16(b[12:]), ID: binary.LittleEndian.Uint16(b[14:])}
	nlen, noff := int(b[9]), int(binary.LittleEndian.Uint16(b[10:]))
	if nlen > 0 {
		if noff+2*nlen > len(b) {
			return a, fmt.Errorf("name at %d of %d characters past its end %d", noff, nlen, len(b))
		}
		a.Name = utf16String(b[noff : noff+2*nlen])
	}
	if a.Resident {
		if len(b) < 24 {
			return a, fmt.Errorf("resident header of %d bytes", len(b))
		}
		vlen := int(binary.LittleEndian.Uint32(b[16:]))
		voff := int(binary.LittleEndian.Uint16(b[20:]))
		if voff > len(b) || vlen > len(b)-voff {
			return a, fmt.Errorf("resident value at %d of %d bytes past its end %d", voff, vlen, len(b))
		}
		a.Value = b[voff : voff+vlen]
		a.DataSize, a.InitSize, a.AllocSize = int64(vlen), int64(vlen), int64(vlen)
		return a, nil
	}
	if len(b) < 64 {
		return a, fmt.Errorf("non-resident header of %d bytes", len(b))
	}
	a.StartVCN = binary.LittleEndian.Uint64(b[16:])
	a.LastVCN = binary.LittleEndian.Uint64(b[24:])
	roff := int(binary.LittleEndian.Uint16(b[32:]))
	a.CompUnit = uint8(binary.LittleEndian.Uint16(b[34:]))
	a.AllocSize = int64(binary.LittleEndian.Uint64(b[40:]))
	a.DataSize = int64(binary.LittleEndian.Uint64(b[48:]))
	a.InitSize = int64(binary.LittleEndian.Uint64(b[56:]))
	if a.DataSize < 0 || a.InitSize < 0 || a.AllocSize < 0 {
		return a, fmt.Errorf("negative size")
	}
	if a.CompUnit > 16 {
		return a, fmt.Errorf("compression unit of 2^%d clusters", a.CompUnit)
	}
	if a.LastVCN+1 < a.StartVCN || a.LastVCN-a.StartVCN >= clusters+1 && !(a.LastVCN == ^uint64(0) && a.StartVCN == 0) {
		return a, fmt.Errorf("VCNs %d-%d for a volume of %d clusters", a.StartVCN, a.LastVCN, clusters)
	}
	if roff < 64 || roff > len(b) {
		return a, fmt.Errorf("run list at %d of a %d-byte attribute", roff, len(b))
	}
	runs, err := decodeRuns(b[roff:], a.StartVCN, a.LastVCN, clusters)
	if err != nil {
		return a, err
	}
	a.Runs = runs
	return a, nil
}

// decodeRuns decodes a mapping pairs array covering VCNs [start, last].
// Every run lies inside the volume's clusters, the runs cover exactly the
// attribute's VCNs, and no two allocated runs of the list overlap.
func decodeRuns(b []byte, start, last uint64, clusters uint64) ([]Run, error) {
	var runs []Run
	vcn, lcn := start, int64(0)
	for p := 0; p < len(b) && b[p] != 0; {
		h := b[p]
		ln, lo := int(h&0xF), int(h>>4)
		if ln == 0 || ln > 8 || lo > 8 || p+1+ln+lo > len(b) {
			return nil, fmt.Errorf("run %d header %#02x at %d", len(runs), h, p)
		}
		n := uint64(0)
		for i := ln - 1; i >= 0; i-- {
			n = n<<8 | uint64(b[p+1+i])
		}
		if n == 0 || n > clusters {
			return nil, fmt.Errorf("run %d of %d clusters on a volume of %d", len(runs), n, clusters)
		}
		r := Run{VCN: vcn, Len: n}
		if lo == 0 {
			r.Sparse = true
		} else {
			d := int64(0)
			for i := lo - 1; i >= 0; i-- {
				d = d<<8 | int64(b[p+1+ln+i])
			}
			if b[p+ln+lo]&0x80 != 0 && lo < 8 { // sign-extend
				d -= 1 << (8 * lo)
			}
			lcn += d
			if lcn < 0 || uint64(lcn) >= clusters || n > clusters-uint64(lcn) {
				return nil, fmt.Errorf("run %d at LCN %d of %d clusters outside the volume (%d clusters)", len(runs), lcn, n, clusters)
			}
			r.LCN = uint64(lcn)
		}
		runs = append(runs, r)
		vcn += n
		if vcn-start > clusters+1 || len(runs) > 1<<20 {
			return nil, fmt.Errorf("run list longer than the volume")
		}
		p += 1 + ln + lo
	}
	if len(runs) > 0 && vcn != last+1 {
		return nil, fmt.Errorf("runs end at VCN %d, the attribute at %d", vcn, last+1)
	}
	if err := checkOverlap(runs); err != nil {
		return nil, err
	}
	return runs, nil
}

// checkOverlap reports two allocated runs that share a cluster.
func checkOverlap(runs []Run) error {
	if len(runs) < 2 {
		return nil
	}
	alloc := make([]Run, 0, len(runs))
	for _, r := range runs {
		if !r.Sparse {
			alloc = append(alloc, r)
		}
	}
	sortRuns(alloc)
	for i := 1; i < len(alloc); i++ {
		if alloc[i].LCN < alloc[i-1].LCN+alloc[i-1].Len {
			return fmt.Errorf("runs at VCN %d and %d overlap at LCN %d", alloc[i-1].VCN, alloc[i].VCN, alloc[i].LCN)
		}
	}
	return nil
}

func utf16String(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return string(utf16.Decode(u))
}
