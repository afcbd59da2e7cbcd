// Package vhd reads VHD images (Virtual PC / Hyper-V "vpc", as QEMU names
// the format) for vmscope: fixed, dynamic and differencing disks. It
// registers the "vpc" format with package disk, by its header copy (a
// dynamic or differencing disk starts with a copy of its footer) and by
// its footer alone (a fixed disk is raw data followed by a 512-byte
// footer: disk.Format.MatchTail, which checks the footer's checksum).
//
// What it promises:
//
//   - Read-only; every length and offset read from the file is bounded
//     before use: the footer (cookie, checksum, disk type, size), the
//     dynamic header (cookie, checksum, block size a power of two in
//     [512 B, 256 MiB], BAT inside the file and large enough for the disk),
//     the whole BAT (every allocated block inside the file, no block
//     overlapping another, the headers or the BAT), the parent locators
//     (bounded, inside the file). Errors are *disk.Error naming the
//     structure and its offset and wrap disk.ErrCorrupt, ErrUnsupported or
//     ErrChain.
//   - Reads equal `qemu-img convert -f vpc -O raw`: a fixed disk reads its
//     data; a dynamic disk reads each allocated block's data and zeros for
//     an unallocated one (as QEMU, it does not consult the sector bitmap
//     of a dynamic disk); a differencing disk reads a sector from its
//     block when the block's sector bitmap has its bit set, else from the
//     parent. The virtual size follows QEMU (CHS geometry unless the
//     creator is Hyper-V, qemu-img force_size, disk2vhd, XenServer, or
//     the geometry is the maximum).
//   - Layer.Allocated has the semantics of `qemu-img map --output=json`
//     for the file alone: a fixed or dynamic disk (no parent) holds its
//     whole size (QEMU reports an unallocated block as present zeros); a
//     differencing disk holds the sectors whose bitmap bits are set, the
//     guest writes since it was made on its parent (QEMU cannot open it:
//     the tests build one in Go). Layer.DataRanges (disk.DataLayer) is the
//     allocated blocks of a dynamic disk, so a whole-disk reader skips
//     the rest.
//   - A differencing disk's parent is found by its parent locators
//     (W2ru relative, W2ku absolute, MacX file URL, tried in that order,
//     Windows separators turned into '/', a path on a Windows drive
//     letter skipped), then by the base name of the parent's Unicode name
//     next to the child; it is opened with disk.Chain.Backing (depth
//     and loops checked) and must be a VHD whose unique ID equals the
//     child's parent unique ID (else ErrChain).
package vhd

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"unicode/utf16"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/internal/imgio"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// Name is the format's name as QEMU spells it.
const Name = "vpc"

func init() {
	disk.Register(disk.Format{Name: Name, Match: matchHead, MatchTail: matchTail, Open: open})
}

// Disk types of the footer.
const (
	TypeFixed        = 2
	TypeDynamic      = 3
	TypeDifferencing = 4
)

// Limits.
const (
	footerSize    = 512
	dynHeaderSize = 1024
	maxBlockSize  = 256 << 20
	maxBATEntries = 16 << 20 // 64 MiB of BAT
	// maxSectors is QEMU's VHD_MAX_SECTORS (about 2040 GiB) for a
	// dynamic disk; a fixed disk is bounded by its file.
	maxSectors     = 0xff000000
	maxGeometry    = 65535 * 16 * 255
	maxLocatorData = 4096
	bitmapCacheMax = 1024
)

// Footer is the parsed VHD footer.
type Footer struct {
	Features     uint32
	Version      uint32
	DataOffset   uint64
	CreatorApp   string
	OriginalSize uint64
	CurrentSize  uint64
	Cylinders    uint16
	Heads        uint8
	SectorsTrack uint8
	DiskType     uint32
	UniqueID     [16]byte
}

// parseFooter checks and parses a footer (at off, for errors).
func parseFooter(name string, b []byte, off int64) (Footer, error) {
	var f Footer
	if len(b) < footerSize || string(b[:8]) != "conectix" {
		return f, disk.Corrupt(name, "footer", off, "no conectix cookie")
	}
	if got, want := checksum(b[:footerSize], 64), binary.BigEndian.Uint32(b[64:]); got != want {
		return f, disk.Corrupt(name, "footer", off, "checksum %#x, computed %#x", want, got)
	}
	f.Features = binary.BigEndian.Uint32(b[8:])
	f.Version = binary.BigEndian.Uint32(b[12:])
	f.DataOffset = binary.BigEndian.Uint64(b[16:])
	f.CreatorApp = string(b[28:32])
	f.OriginalSize = binary.BigEndian.Uint64(b[40:])
	f.CurrentSize = binary.BigEndian.Uint64(b[48:])
	f.Cylinders = binary.BigEndian.Uint16(b[56:])
	f.Heads = b[58]
	f.SectorsTrack = b[59]
	f.DiskType = binary.BigEndian.Uint32(b[60:])
	copy(f.UniqueID[:], b[68:84])
	if f.Version>>16 != 1 {
		return f, disk.Unsupported(name, "footer", off, "file format version %#x", f.Version)
	}
	switch f.DiskType {
	case TypeFixed, TypeDynamic, TypeDifferencing:
	default:
		return f, disk.Unsupported(name, "footer", off, "disk type %d", f.DiskType)
	}
	return f, nil
}

// checksum is the one's complement of the sum of b's bytes, without the
// 4-byte checksum field at skip.
func checksum(b []byte, skip int) uint32 {
	var s uint32
	for i, c := range b {
		if i >= skip && i < skip+4 {
			continue
		}
		s += uint32(c)
	}
	return ^s
}

func matchHead(head []byte) bool { return len(head) >= 8 && string(head[:8]) == "conectix" }

// matchTail accepts a valid footer (cookie and checksum) of a fixed disk.
func matchTail(tail []byte) bool {
	f, err := parseFooter("", tail, 0)
	return err == nil && f.DiskType == TypeFixed
}

// virtualSectors is QEMU's choice of the disk size: CHS geometry unless
// the creator writes current_size, or the geometry is the maximum.
func (f *Footer) virtualSize() int64 {
	chs := int64(f.Cylinders) * int64(f.Heads) * int64(f.SectorsTrack)
	switch f.CreatorApp {
	case "win ", "qem2", "d2v ", "CTXS", "tap\x00":
		return int64(f.CurrentSize / 512 * 512)
	}
	if chs == maxGeometry {
		return int64(f.CurrentSize / 512 * 512)
	}
	return chs * 512
}

// Layer is one VHD file.
type Layer struct {
	Path      string
	Footer    Footer
	BlockSize int64  // dynamic and differencing
	ParentRef string // the locator the parent was opened by ("" without one)
	FileSize  int64

	src        disk.Source
	size       int64
	bat        []uint32 // entries for the disk's blocks
	batOff     int64
	bitmapSize int64
	backing    disk.Layer
	dyn        dynHeader

	mu      sync.Mutex
	bitmaps map[int64][]byte // differencing: block index -> sector bitmap
}

func open(src disk.Source, c *disk.Chain) (disk.Layer, error) {
	name := src.Name
	if src.Size < footerSize {
		return nil, disk.Corrupt(name, "footer", 0, "the %d-byte file is too short", src.Size)
	}
	buf := make([]byte, footerSize)
	foff := int64(0)
	if err := imgio.Read(src, buf, 0, "footer copy"); err != nil {
		return nil, err
	}
	if string(buf[:8]) != "conectix" {
		foff = src.Size - footerSize
		if err := imgio.Read(src, buf, foff, "footer"); err != nil {
			return nil, err
		}
	}
	f, err := parseFooter(name, buf, foff)
	if err != nil {
		return nil, err
	}
	l := &Layer{Path: name, Footer: f, FileSize: src.Size, src: src, size: f.virtualSize()}
	if l.size < 0 {
		return nil, disk.Corrupt(name, "footer", foff, "negative size")
	}
	if f.DiskType == TypeFixed {
		if l.size > src.Size-footerSize {
			return nil, disk.Corrupt(name, "footer", foff, "fixed disk of %d bytes in a %d-byte file", l.size, src.Size)
		}
		return l, nil
	}
	if l.size/512 > maxSectors {
		return nil, disk.Unsupported(name, "footer", foff, "disk of %d bytes larger than VHD's maximum", l.size)
	}
	if err := l.readDynamic(); err != nil {
		return nil, err
	}
	if f.DiskType == TypeDifferencing {
		l.bitmaps = map[int64][]byte{}
		if err := l.openParent(c); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// dynHeader holds what the reader uses of the dynamic disk header.
type dynHeader struct {
	off        int64
	tableOff   uint64
	entries    uint32
	blockSize  uint32
	parentID   [16]byte
	parentName string
	locators   []locator
}

type locator struct {
	code   string
	length uint32
	offset uint64
	at     int64 // file offset of the entry
}

func (l *Layer) readDynamic() error {
	name, src := l.Path, l.src
	off := l.Footer.DataOffset
	if off > uint64(src.Size) || off%512 != 0 {
		return disk.Corrupt(name, "footer data offset", 16, "dynamic header at %#x outside the %d-byte file or unaligned", off, src.Size)
	}
	b := make([]byte, dynHeaderSize)
	if err := imgio.Read(src, b, int64(off), "dynamic header"); err != nil {
		return err
	}
	h := dynHeader{off: int64(off)}
	if string(b[:8]) != "cxsparse" {
		return disk.Corrupt(name, "dynamic header", h.off, "no cxsparse cookie")
	}
	if got, want := checksum(b, 36), binary.BigEndian.Uint32(b[36:]); got != want {
		return disk.Corrupt(name, "dynamic header", h.off, "checksum %#x, computed %#x", want, got)
	}
	h.tableOff = binary.BigEndian.Uint64(b[16:])
	h.entries = binary.BigEndian.Uint32(b[28:])
	h.blockSize = binary.BigEndian.Uint32(b[32:])
	copy(h.parentID[:], b[40:56])
	h.parentName = utf16String(b[64:576], binary.BigEndian)
	for i := range 8 {
		e := b[576+24*i:]
		code := string(e[:4])
		if binary.BigEndian.Uint32(e) == 0 {
			continue
		}
		h.locators = append(h.locators, locator{code: code, length: binary.BigEndian.Uint32(e[8:]),
			offset: binary.BigEndian.Uint64(e[16:]), at: h.off + 576 + 24*int64(i)})
	}
	bs := int64(h.blockSize)
	if bs < 512 || bs > maxBlockSize || bs&(bs-1) != 0 {
		return disk.Corrupt(name, "dynamic header block size", h.off+32, "block size %d not a power of two in [512, %d]", bs, maxBlockSize)
	}
	need := (l.size + bs - 1) / bs
	if int64(h.entries) < need {
		return disk.Corrupt(name, "dynamic header max table entries", h.off+28, "%d BAT entries for a disk of %d blocks", h.entries, need)
	}
	if h.entries > maxBATEntries {
		return disk.Unsupported(name, "dynamic header max table entries", h.off+28, "%d BAT entries (more than %d)", h.entries, maxBATEntries)
	}
	if h.tableOff > uint64(src.Size) || h.tableOff%512 != 0 {
		return disk.Corrupt(name, "BAT", int64(h.tableOff), "table offset outside the %d-byte file or unaligned", src.Size)
	}
	l.BlockSize, l.batOff = bs, int64(h.tableOff)
	l.bitmapSize = (bs/512/8 + 511) / 512 * 512
	raw, err := imgio.Alloc(src, need*4, maxBATEntries*4, l.batOff, "BAT")
	if err != nil {
		return err
	}
	if err := imgio.Read(src, raw, l.batOff, "BAT"); err != nil {
		return err
	}
	l.bat = make([]uint32, need)
	type span struct{ start, end, at int64 }
	used := []span{{0, footerSize, 0}, {h.off, h.off + dynHeaderSize, h.off}, {l.batOff, l.batOff + int64(h.entries)*4, l.batOff}}
	for i := range l.bat {
		e := binary.BigEndian.Uint32(raw[4*i:])
		l.bat[i] = e
		if e == 0xffffffff {
			continue
		}
		start := int64(e) * 512
		end := start + l.bitmapSize + bs
		if end > src.Size {
			return disk.Corrupt(name, "BAT entry", l.batOff+4*int64(i), "block %d at %#x (%d bytes with its bitmap) past the end of the %d-byte file", i, start, end-start, src.Size)
		}
		used = append(used, span{start, end, l.batOff + 4*int64(i)})
	}
	slices.SortFunc(used, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	for i := 1; i < len(used); i++ {
		if used[i].start < used[i-1].end {
			return disk.Corrupt(name, "BAT entry", used[i].at, "block at %#x overlaps the structure at %#x", used[i].start, used[i-1].start)
		}
	}
	l.dyn = h
	return nil
}

// utf16String decodes a NUL-terminated UTF-16 string.
func utf16String(b []byte, order binary.ByteOrder) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := order.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// candidates lists the parent names to try, in order, each with the
// structure it comes from.
func (l *Layer) candidates() ([][2]string, error) {
	var out [][2]string
	order := map[string]int{"W2ru": 0, "W2ku": 1, "MacX": 2}
	locs := slices.Clone(l.dyn.locators)
	slices.SortStableFunc(locs, func(a, b locator) int { return cmpRank(order, a.code) - cmpRank(order, b.code) })
	for _, lc := range locs {
		if _, ok := order[lc.code]; !ok {
			continue
		}
		if lc.length == 0 || lc.length > maxLocatorData || lc.offset > uint64(l.src.Size) {
			return nil, disk.Corrupt(l.Path, "parent locator "+lc.code, lc.at, "%d bytes at %#x (bound %d, file %d bytes)", lc.length, lc.offset, maxLocatorData, l.src.Size)
		}
		b := make([]byte, lc.length)
		if err := imgio.Read(l.src, b, int64(lc.offset), "parent locator "+lc.code); err != nil {
			return nil, err
		}
		var ref string
		switch lc.code {
		case "W2ru", "W2ku":
			ref = windowsPath(utf16String(b, binary.LittleEndian))
		case "MacX":
			u, err := url.Parse(string(bytes.TrimRight(b, "\x00")))
			if err != nil || u.Scheme != "file" {
				return nil, disk.Corrupt(l.Path, "parent locator MacX", lc.at, "not a file URL")
			}
			ref = u.Path
		}
		if ref != "" && !driveLetter(ref) {
			out = append(out, [2]string{ref, "parent locator " + lc.code})
		}
	}
	if n := windowsPath(l.dyn.parentName); n != "" {
		out = append(out, [2]string{path.Base(n), "parent unicode name"})
	}
	return out, nil
}

func cmpRank(order map[string]int, code string) int {
	if r, ok := order[code]; ok {
		return r
	}
	return len(order)
}

// windowsPath turns a Windows path into a slash path: ".\x" is "x", a
// drive letter path keeps its letter as a first element.
func windowsPath(p string) string {
	p = strings.ReplaceAll(p, `\`, "/")
	p = strings.TrimPrefix(p, "./")
	return p
}

// driveLetter reports whether p (made a slash path) starts with a Windows
// drive ("C:/"): a path of another host, which is skipped.
func driveLetter(p string) bool {
	return len(p) >= 3 && p[1] == ':' && p[2] == '/' && (p[0]|0x20 >= 'a' && p[0]|0x20 <= 'z')
}

// openParent opens the first parent the locators name that exists.
func (l *Layer) openParent(c *disk.Chain) error {
	cands, err := l.candidates()
	if err != nil {
		return err
	}
	if len(cands) == 0 {
		return disk.ChainError(l.Path, "parent locator", "a differencing disk without a usable parent locator")
	}
	var errs []error
	for _, cand := range cands {
		b, err := c.Backing(l.Path, cand[0], Name)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			return err
		}
		p, ok := b.(*Layer)
		if !ok {
			return disk.ChainError(l.Path, cand[1], "parent %s is not a VHD", b.Name())
		}
		if p.Footer.UniqueID != l.dyn.parentID {
			return disk.ChainError(l.Path, cand[1], "parent %s has unique ID %x, the child expects %x", b.Name(), p.Footer.UniqueID, l.dyn.parentID)
		}
		l.backing, l.ParentRef = b, cand[0]
		return nil
	}
	return disk.ChainError(l.Path, "parent locator", "no parent found: %w", errors.Join(errs...))
}

// FileBytes is the size of the file.
func (l *Layer) FileBytes() int64 { return l.FileSize }

func (l *Layer) Size() int64         { return l.size }
func (l *Layer) Backing() disk.Layer { return l.backing }
func (l *Layer) Format() string      { return Name }
func (l *Layer) Name() string        { return l.Path }

// ReadAt reads the guest disk as this layer sees it.
func (l *Layer) ReadAt(p []byte, off int64) (int, error) {
	return imgio.GuestRead(l.Path, l.size, p, off, l.fill)
}

func (l *Layer) fill(q []byte, off int64) error {
	if l.Footer.DiskType == TypeFixed {
		return imgio.Read(l.src, q, off, "guest read")
	}
	bs := l.BlockSize
	for len(q) > 0 {
		bi := off / bs
		in := off % bs
		chunk := q[:min(int64(len(q)), bs-in)]
		e := l.bat[bi]
		switch {
		case e == 0xffffffff:
			if err := imgio.Below(l.Path, l.backing, chunk, off); err != nil {
				return err
			}
		case l.Footer.DiskType == TypeDynamic:
			if err := imgio.Read(l.src, chunk, int64(e)*512+l.bitmapSize+in, "block"); err != nil {
				return err
			}
		default:
			if err := l.fillDiff(chunk, off, bi, in); err != nil {
				return err
			}
		}
		q = q[len(chunk):]
		off += int64(len(chunk))
	}
	return nil
}

// fillDiff reads chunk (inside block bi from byte in) of a differencing
// disk: runs of sectors with their bitmap bit set from the block, the
// others from the parent.
func (l *Layer) fillDiff(chunk []byte, off, bi, in int64) error {
	bm, err := l.bitmap(bi)
	if err != nil {
		return err
	}
	base := int64(l.bat[bi])*512 + l.bitmapSize
	for len(chunk) > 0 {
		s := in / 512
		set := bitSet(bm, s)
		n := 512 - in%512
		for s2 := s + 1; n < int64(len(chunk)) && bitSet(bm, s2) == set; s2++ {
			n += 512
		}
		n = min(n, int64(len(chunk)))
		if set {
			if err := imgio.Read(l.src, chunk[:n], base+in, "block"); err != nil {
				return err
			}
		} else if err := imgio.Below(l.Path, l.backing, chunk[:n], off); err != nil {
			return err
		}
		chunk = chunk[n:]
		in += n
		off += n
	}
	return nil
}

func bitSet(bm []byte, s int64) bool { return bm[s/8]&(0x80>>(s%8)) != 0 }

// bitmap returns the sector bitmap of allocated block bi (cached, a
// bounded number of them).
func (l *Layer) bitmap(bi int64) ([]byte, error) {
	l.mu.Lock()
	bm, ok := l.bitmaps[bi]
	l.mu.Unlock()
	if ok {
		return bm, nil
	}
	bm = make([]byte, l.bitmapSize)
	if err := imgio.Read(l.src, bm, int64(l.bat[bi])*512, "sector bitmap"); err != nil {
		return nil, err
	}
	l.mu.Lock()
	if len(l.bitmaps) >= bitmapCacheMax {
		clear(l.bitmaps)
	}
	l.bitmaps[bi] = bm
	l.mu.Unlock()
	return bm, nil
}

// Allocated is what the file holds itself, as qemu-img map reports it: the
// whole disk for a fixed or dynamic disk, the sectors whose bitmap bits
// are set for a differencing disk.
func (l *Layer) Allocated(ctx context.Context) (rangeset.Set, error) {
	var s rangeset.Set
	if l.Footer.DiskType != TypeDifferencing {
		s.Add(0, l.size)
		return s, nil
	}
	for bi, e := range l.bat {
		if e == 0xffffffff {
			continue
		}
		if err := ctx.Err(); err != nil {
			return s, err
		}
		bm, err := l.bitmap(int64(bi))
		if err != nil {
			return s, err
		}
		start := int64(bi) * l.BlockSize
		for sec := range l.BlockSize / 512 {
			if bitSet(bm, sec) {
				s.Add(start+sec*512, start+sec*512+512)
			}
		}
	}
	return s.Clip(0, l.size), nil
}

// DataRanges is the allocated blocks (dynamic and differencing disks), the
// whole disk for a fixed one: outside them the file holds zeros.
func (l *Layer) DataRanges(ctx context.Context) (rangeset.Set, error) {
	if l.Footer.DiskType == TypeDifferencing {
		return l.Allocated(ctx)
	}
	var s rangeset.Set
	if l.Footer.DiskType == TypeFixed {
		s.Add(0, l.size)
		return s, nil
	}
	for bi, e := range l.bat {
		if e != 0xffffffff {
			s.Add(int64(bi)*l.BlockSize, int64(bi+1)*l.BlockSize)
		}
	}
	return s.Clip(0, l.size), nil
}

// String describes the layer.
func (l *Layer) String() string {
	kind := map[uint32]string{TypeFixed: "fixed", TypeDynamic: "dynamic", TypeDifferencing: "differencing"}[l.Footer.DiskType]
	return fmt.Sprintf("vhd %s %s (%d bytes)", kind, l.Path, l.size)
}
