// Package vhdx reads Hyper-V VHDX images for vmscope (fixed, dynamic and
// differencing) and registers the "vhdx" format with package disk.
//
// What it promises:
//
//   - Read-only, and the guest is hostile. The file identifier; both
//     headers (signature, CRC-32C, version 1, log bounds), the current one
//     chosen by the highest sequence number among the valid ones; both
//     region tables (signature, CRC-32C, at most 2047 entries, regions
//     1 MiB aligned, inside the file, not overlapping each other, the
//     headers or the log; an unknown required region is refused); the
//     metadata table (signature, at most 2047 entries, items inside the
//     region; unknown required items refused); file parameters (block
//     size a power of two in [1 MiB, 256 MiB]), virtual size (at most
//     64 TiB, a multiple of the logical sector size, 512 or 4096); the
//     BAT (up to 64 MiB, read whole at open, large enough for the disk,
//     every present payload and sector-bitmap block inside the file,
//     1 MiB aligned, not overlapping another block or a region); the
//     parent locator (bounded keys and values inside its item). Errors are
//     *disk.Error naming the structure and offset, wrapping
//     disk.ErrCorrupt, ErrUnsupported or ErrChain.
//   - The log: a header whose log GUID is not zero has log entries to
//     replay; such a file is refused (ErrUnsupported, "log needs replay"),
//     as QEMU refuses it read-only: vmscope never writes, and replaying in
//     memory is not implemented.
//   - Reads equal `qemu-img convert -f vhdx -O raw`: a fully present
//     payload block reads from the file; a not-present, undefined, zero or
//     unmapped block reads zeros (a not-present block of a differencing
//     disk reads from the parent); a partially present block (differencing
//     only) reads a logical sector from the file when its bit in the
//     chunk's sector bitmap block is set, else from the parent.
//   - Allocated has the semantics of `qemu-img map --output=json` for the
//     file alone: a disk without a parent holds its whole size (QEMU
//     reports all of a VHDX present); a differencing disk (which QEMU
//     cannot open: the tests build one in Go) holds its fully present,
//     zero and unmapped blocks and the set sectors of partially present
//     ones. DataRanges (disk.DataLayer) is the present payload blocks.
//   - A differencing disk's parent is named by its parent locator
//     (relative_path, then absolute_win32_path, Windows separators made
//     '/', a path on a Windows drive letter skipped), opened with disk.Chain.Backing as "vhdx" (depth and loops
//     checked), and must be a VHDX whose data write GUID equals the
//     locator's parent_linkage (else ErrChain).
package vhdx

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"unicode/utf16"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/internal/imgio"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// Name is the format's name as QEMU spells it.
const Name = "vhdx"

func init() {
	disk.Register(disk.Format{Name: Name, Match: match, Open: open})
}

func match(head []byte) bool { return len(head) >= 8 && string(head[:8]) == "vhdxfile" }

const (
	mib             = 1 << 20
	headerSize      = 4096
	regionTableSize = 64 << 10
	maxEntries      = 2047
	maxBATBytes     = 64 << 20
	maxVirtualSize  = 64 << 40
	maxKV           = 256
	bitmapCacheMax  = 64 // sector bitmap blocks of 1 MiB
)

// Payload block states.
const (
	NotPresent       = 0
	Undefined        = 1
	Zero             = 2
	Unmapped         = 3
	FullyPresent     = 6
	PartiallyPresent = 7
)

// GUID is a VHDX GUID in its on-disk form.
type GUID [16]byte

func (g GUID) String() string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(g[:]), le.Uint16(g[4:]), le.Uint16(g[6:]), g[8:10], g[10:])
}

// parseGUID parses the text form (with or without braces).
func parseGUID(s string) (GUID, bool) {
	var g GUID
	s = strings.Trim(s, "{}")
	var a uint32
	var b, c uint16
	var d [8]byte
	if len(s) != 36 {
		return g, false
	}
	n, err := fmt.Sscanf(s, "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x", &a, &b, &c, &d[0], &d[1], &d[2], &d[3], &d[4], &d[5], &d[6], &d[7])
	if err != nil || n != 11 {
		return g, false
	}
	le := binary.LittleEndian
	le.PutUint32(g[:], a)
	le.PutUint16(g[4:], b)
	le.PutUint16(g[6:], c)
	copy(g[8:], d[:])
	return g, true
}

func mustGUID(s string) GUID {
	g, ok := parseGUID(s)
	if !ok {
		panic(s)
	}
	return g
}

// Region and metadata item GUIDs (MS-VHDX).
var (
	RegionBAT      = mustGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	RegionMetadata = mustGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")

	MetaFileParameters     = mustGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
	MetaVirtualDiskSize    = mustGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
	MetaVirtualDiskID      = mustGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
	MetaLogicalSectorSize  = mustGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
	MetaPhysicalSectorSize = mustGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
	MetaParentLocator      = mustGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")

	LocatorVHDX = mustGUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcOK checks the CRC-32C of b whose checksum field is at 4..8.
func crcOK(b []byte) bool {
	want := binary.LittleEndian.Uint32(b[4:])
	c := crc32.Update(0, castagnoli, b[:4])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	c = crc32.Update(c, castagnoli, b[8:])
	return c == want
}

// Header is the current VHDX header.
type Header struct {
	Sequence      uint64
	FileWriteGUID GUID
	DataWriteGUID GUID
	LogGUID       GUID
	LogVersion    uint16
	Version       uint16
	LogLength     uint32
	LogOffset     uint64
	At            int64 // file offset of the header chosen
}

// Layer is one VHDX file. It implements disk.Layer.
type Layer struct {
	Path              string
	Header            Header
	BlockSize         int64
	LogicalSectorSize int64
	HasParent         bool
	ParentLinkage     string            // parent_linkage of the locator
	ParentLocator     map[string]string // the locator's keys and values
	ParentRef         string            // the path the parent was opened by

	src        disk.Source
	size       int64
	chunkRatio int64
	bat        []uint64
	batAt      int64
	backing    disk.Layer

	mu      sync.Mutex
	bitmaps map[int64][]byte
}

type span struct {
	start, end, at int64
	what           string
}

func open(src disk.Source, c *disk.Chain) (disk.Layer, error) {
	name := src.Name
	l := &Layer{Path: name, src: src}
	if src.Size < 1*mib {
		return nil, disk.Corrupt(name, "file identifier", 0, "a %d-byte file is too short for a VHDX", src.Size)
	}
	if err := l.readHeaders(); err != nil {
		return nil, err
	}
	regions, used, err := l.readRegions()
	if err != nil {
		return nil, err
	}
	if err := l.readMetadata(regions[RegionMetadata]); err != nil {
		return nil, err
	}
	if err := l.readBAT(regions[RegionBAT], used); err != nil {
		return nil, err
	}
	if l.HasParent {
		l.bitmaps = map[int64][]byte{}
		if err := l.openParent(c); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// readHeaders picks the valid header with the highest sequence number.
func (l *Layer) readHeaders() error {
	b := make([]byte, headerSize)
	var best *Header
	var why []string
	for _, at := range []int64{64 << 10, 128 << 10} {
		if err := imgio.Read(l.src, b, at, "header"); err != nil {
			return err
		}
		le := binary.LittleEndian
		switch {
		case string(b[:4]) != "head":
			why = append(why, fmt.Sprintf("at %d: no signature", at))
			continue
		case !crcOK(b):
			why = append(why, fmt.Sprintf("at %d: bad CRC-32C", at))
			continue
		}
		h := Header{Sequence: le.Uint64(b[8:]), LogVersion: le.Uint16(b[64:]), Version: le.Uint16(b[66:]),
			LogLength: le.Uint32(b[68:]), LogOffset: le.Uint64(b[72:]), At: at}
		copy(h.FileWriteGUID[:], b[16:])
		copy(h.DataWriteGUID[:], b[32:])
		copy(h.LogGUID[:], b[48:])
		if h.Version != 1 {
			why = append(why, fmt.Sprintf("at %d: version %d", at, h.Version))
			continue
		}
		if best == nil || h.Sequence > best.Sequence {
			best = &h
		}
	}
	if best == nil {
		return disk.Corrupt(l.Path, "header", 64<<10, "no valid header (%s)", strings.Join(why, "; "))
	}
	h := *best
	if h.LogLength%mib != 0 || h.LogOffset%mib != 0 || h.LogOffset < mib || h.LogOffset > uint64(l.src.Size) || uint64(h.LogLength) > uint64(l.src.Size)-h.LogOffset {
		return disk.Corrupt(l.Path, "header log", h.At+68, "log of %d bytes at %#x (1 MiB aligned, inside the %d-byte file)", h.LogLength, h.LogOffset, l.src.Size)
	}
	if h.LogGUID != (GUID{}) {
		return disk.Unsupported(l.Path, "header log GUID", h.At+48, "log needs replay (log GUID %s): replay is not implemented (QEMU refuses it read-only too)", h.LogGUID)
	}
	l.Header = h
	return nil
}

// readRegions reads the region tables (the first valid one) and checks
// the regions: aligned, inside the file, not overlapping.
func (l *Layer) readRegions() (map[GUID]span, []span, error) {
	b := make([]byte, regionTableSize)
	var why []string
	for _, at := range []int64{192 << 10, 256 << 10} {
		if err := imgio.Read(l.src, b, at, "region table"); err != nil {
			return nil, nil, err
		}
		if string(b[:4]) != "regi" {
			why = append(why, fmt.Sprintf("at %d: no signature", at))
			continue
		}
		if !crcOK(b) {
			why = append(why, fmt.Sprintf("at %d: bad CRC-32C", at))
			continue
		}
		le := binary.LittleEndian
		n := le.Uint32(b[8:])
		if n > maxEntries {
			return nil, nil, disk.Corrupt(l.Path, "region table", at+8, "%d entries (at most %d)", n, maxEntries)
		}
		regions := map[GUID]span{}
		used := []span{{0, mib, 0, "headers"}}
		if l.Header.LogLength > 0 {
			used = append(used, span{int64(l.Header.LogOffset), int64(l.Header.LogOffset) + int64(l.Header.LogLength), l.Header.At + 72, "log"})
		}
		for i := range int64(n) {
			e := b[16+32*i:]
			var g GUID
			copy(g[:], e)
			off, length, req := le.Uint64(e[16:]), int64(le.Uint32(e[24:])), le.Uint32(e[28:])&1 != 0
			eat := at + 16 + 32*i
			if g != RegionBAT && g != RegionMetadata {
				if req {
					return nil, nil, disk.Unsupported(l.Path, "region table entry", eat, "unknown required region %s", g)
				}
				continue
			}
			if _, dup := regions[g]; dup {
				return nil, nil, disk.Corrupt(l.Path, "region table entry", eat, "region %s twice", g)
			}
			if off%mib != 0 || length%mib != 0 || length == 0 || off < mib || off > uint64(l.src.Size) || length > l.src.Size-int64(off) {
				return nil, nil, disk.Corrupt(l.Path, "region table entry", eat, "region %s of %d bytes at %#x (1 MiB aligned, inside the %d-byte file)", g, length, off, l.src.Size)
			}
			s := span{int64(off), int64(off) + length, eat, "region " + g.String()}
			regions[g] = s
			used = append(used, s)
		}
		if _, ok := regions[RegionBAT]; !ok {
			return nil, nil, disk.Corrupt(l.Path, "region table", at, "no BAT region")
		}
		if _, ok := regions[RegionMetadata]; !ok {
			return nil, nil, disk.Corrupt(l.Path, "region table", at, "no metadata region")
		}
		if err := l.checkOverlaps(used); err != nil {
			return nil, nil, err
		}
		return regions, used, nil
	}
	return nil, nil, disk.Corrupt(l.Path, "region table", 192<<10, "no valid region table (%s)", strings.Join(why, "; "))
}

func (l *Layer) checkOverlaps(used []span) error {
	s := slices.Clone(used)
	slices.SortFunc(s, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	for i := 1; i < len(s); i++ {
		if s[i].start < s[i-1].end {
			return disk.Corrupt(l.Path, s[i].what, s[i].at, "at %#x overlaps %s at %#x", s[i].start, s[i-1].what, s[i-1].start)
		}
	}
	return nil
}

// readMetadata reads the metadata table and the items the reader needs.
func (l *Layer) readMetadata(r span) error {
	tbl := make([]byte, 64<<10)
	if err := imgio.Read(l.src, tbl, r.start, "metadata table"); err != nil {
		return err
	}
	if string(tbl[:8]) != "metadata" {
		return disk.Corrupt(l.Path, "metadata table", r.start, "no signature")
	}
	le := binary.LittleEndian
	n := int64(le.Uint16(tbl[10:]))
	if n > maxEntries {
		return disk.Corrupt(l.Path, "metadata table", r.start+10, "%d entries (at most %d)", n, maxEntries)
	}
	items := map[GUID][]byte{}
	itemAt := map[GUID]int64{}
	for i := range n {
		e := tbl[32+32*i:]
		eat := r.start + 32 + 32*i
		var g GUID
		copy(g[:], e)
		off, length, flags := int64(le.Uint32(e[16:])), int64(le.Uint32(e[20:])), le.Uint32(e[24:])
		known := slices.Contains([]GUID{MetaFileParameters, MetaVirtualDiskSize, MetaVirtualDiskID, MetaLogicalSectorSize, MetaPhysicalSectorSize, MetaParentLocator}, g)
		if !known {
			if flags&4 != 0 {
				return disk.Unsupported(l.Path, "metadata table entry", eat, "unknown required metadata item %s", g)
			}
			continue
		}
		if _, dup := items[g]; dup {
			return disk.Corrupt(l.Path, "metadata table entry", eat, "item %s twice", g)
		}
		if off < 64<<10 || length > 1*mib || off > r.end-r.start || length > r.end-r.start-off {
			return disk.Corrupt(l.Path, "metadata table entry", eat, "item %s of %d bytes at %d outside the %d-byte region", g, length, off, r.end-r.start)
		}
		b := make([]byte, length)
		if err := imgio.Read(l.src, b, r.start+off, "metadata item"); err != nil {
			return err
		}
		items[g], itemAt[g] = b, r.start+off
	}
	need := func(g GUID, what string, size int) ([]byte, error) {
		b, ok := items[g]
		if !ok {
			return nil, disk.Corrupt(l.Path, "metadata", r.start, "no %s item", what)
		}
		if len(b) < size {
			return nil, disk.Corrupt(l.Path, "metadata "+what, itemAt[g], "%d bytes, %d needed", len(b), size)
		}
		return b, nil
	}
	fp, err := need(MetaFileParameters, "file parameters", 8)
	if err != nil {
		return err
	}
	vs, err := need(MetaVirtualDiskSize, "virtual disk size", 8)
	if err != nil {
		return err
	}
	ls, err := need(MetaLogicalSectorSize, "logical sector size", 4)
	if err != nil {
		return err
	}
	l.BlockSize = int64(le.Uint32(fp))
	l.HasParent = le.Uint32(fp[4:])&2 != 0
	if bs := l.BlockSize; bs < mib || bs > 256*mib || bs&(bs-1) != 0 {
		return disk.Corrupt(l.Path, "metadata file parameters", itemAt[MetaFileParameters], "block size %d (a power of two in [1 MiB, 256 MiB])", bs)
	}
	l.LogicalSectorSize = int64(le.Uint32(ls))
	if l.LogicalSectorSize != 512 && l.LogicalSectorSize != 4096 {
		return disk.Corrupt(l.Path, "metadata logical sector size", itemAt[MetaLogicalSectorSize], "%d", l.LogicalSectorSize)
	}
	size := le.Uint64(vs)
	if size > maxVirtualSize || size%uint64(l.LogicalSectorSize) != 0 {
		return disk.Corrupt(l.Path, "metadata virtual disk size", itemAt[MetaVirtualDiskSize], "%d bytes (at most %d, a multiple of the %d-byte sector)", size, int64(maxVirtualSize), l.LogicalSectorSize)
	}
	l.size = int64(size)
	l.chunkRatio = (1 << 23) * l.LogicalSectorSize / l.BlockSize
	if l.HasParent {
		pl, err := need(MetaParentLocator, "parent locator", 20)
		if err != nil {
			return err
		}
		if err := l.parseLocator(pl, itemAt[MetaParentLocator]); err != nil {
			return err
		}
	}
	return nil
}

// parseLocator reads the key/value pairs of the parent locator item b
// (at file offset at).
func (l *Layer) parseLocator(b []byte, at int64) error {
	le := binary.LittleEndian
	var typ GUID
	copy(typ[:], b)
	if typ != LocatorVHDX {
		return disk.Unsupported(l.Path, "parent locator", at, "locator type %s", typ)
	}
	n := int64(le.Uint16(b[18:]))
	if n > maxKV || 20+12*n > int64(len(b)) {
		return disk.Corrupt(l.Path, "parent locator", at+18, "%d entries in a %d-byte item", n, len(b))
	}
	str := func(off, length int64, what string, eat int64) (string, error) {
		if length%2 != 0 || off > int64(len(b)) || length > int64(len(b))-off {
			return "", disk.Corrupt(l.Path, "parent locator "+what, eat, "%d bytes at %d outside the %d-byte item", length, off, len(b))
		}
		u := make([]uint16, length/2)
		for i := range u {
			u[i] = le.Uint16(b[off+2*int64(i):])
		}
		return string(utf16.Decode(u)), nil
	}
	l.ParentLocator = map[string]string{}
	for i := range n {
		e := b[20+12*i:]
		eat := at + 20 + 12*i
		k, err := str(int64(le.Uint32(e)), int64(le.Uint16(e[8:])), "key", eat)
		if err != nil {
			return err
		}
		v, err := str(int64(le.Uint32(e[4:])), int64(le.Uint16(e[10:])), "value", eat)
		if err != nil {
			return err
		}
		l.ParentLocator[k] = v
	}
	l.ParentLinkage = l.ParentLocator["parent_linkage"]
	if _, ok := parseGUID(l.ParentLinkage); !ok {
		return disk.Corrupt(l.Path, "parent locator parent_linkage", at, "%q is not a GUID", l.ParentLinkage)
	}
	return nil
}

// readBAT reads the whole BAT and checks every present block.
func (l *Layer) readBAT(r span, used []span) error {
	blocks := (l.size + l.BlockSize - 1) / l.BlockSize
	var total int64
	if l.HasParent {
		chunks := (blocks + l.chunkRatio - 1) / l.chunkRatio
		total = chunks * (l.chunkRatio + 1)
	} else if blocks > 0 {
		total = blocks + (blocks-1)/l.chunkRatio
	}
	if total*8 > r.end-r.start {
		return disk.Corrupt(l.Path, "BAT", r.start, "%d entries do not fit the %d-byte region", total, r.end-r.start)
	}
	raw, err := imgio.Alloc(l.src, total*8, maxBATBytes, r.start, "BAT")
	if err != nil {
		return disk.Unsupported(l.Path, "BAT", r.start, "%d entries (at most %d bytes read)", total, maxBATBytes)
	}
	if err := imgio.Read(l.src, raw, r.start, "BAT"); err != nil {
		return err
	}
	l.batAt = r.start
	l.bat = make([]uint64, total)
	for i := range l.bat {
		e := binary.LittleEndian.Uint64(raw[8*i:])
		l.bat[i] = e
		at := r.start + 8*int64(i)
		state := e & 7
		off := int64(e>>20) * mib
		bitmap := int64(i)%(l.chunkRatio+1) == l.chunkRatio
		switch {
		case bitmap && state == 6:
			if off < mib || off > l.src.Size-mib {
				return disk.Corrupt(l.Path, "BAT entry", at, "sector bitmap block at %#x outside the %d-byte file", off, l.src.Size)
			}
			used = append(used, span{off, off + mib, at, "sector bitmap block"})
		case bitmap && state != 0:
			return disk.Corrupt(l.Path, "BAT entry", at, "sector bitmap block state %d", state)
		case bitmap:
		case state == FullyPresent || state == PartiallyPresent:
			if state == PartiallyPresent && !l.HasParent {
				return disk.Corrupt(l.Path, "BAT entry", at, "partially present block in a disk without a parent")
			}
			if off < mib || off > l.src.Size-l.BlockSize {
				return disk.Corrupt(l.Path, "BAT entry", at, "payload block at %#x outside the %d-byte file", off, l.src.Size)
			}
			used = append(used, span{off, off + l.BlockSize, at, "payload block"})
		case state == NotPresent || state == Undefined || state == Zero || state == Unmapped:
		default:
			return disk.Corrupt(l.Path, "BAT entry", at, "payload block state %d", state)
		}
	}
	if l.HasParent {
		// A partially present block needs its chunk's bitmap.
		for b := range blocks {
			if l.bat[l.batIndex(b)]&7 == PartiallyPresent && l.bat[l.bitmapIndex(b)]&7 != 6 {
				return disk.Corrupt(l.Path, "BAT entry", r.start+8*l.batIndex(b), "partially present block %d without a sector bitmap block", b)
			}
		}
	}
	return l.checkOverlaps(used)
}

func (l *Layer) batIndex(block int64) int64 { return block + block/l.chunkRatio }
func (l *Layer) bitmapIndex(block int64) int64 {
	return block/l.chunkRatio*(l.chunkRatio+1) + l.chunkRatio
}

// openParent opens the parent named by the locator and checks its linkage.
func (l *Layer) openParent(c *disk.Chain) error {
	var errs []error
	for _, key := range []string{"relative_path", "absolute_win32_path"} {
		ref := l.ParentLocator[key]
		if ref == "" {
			continue
		}
		ref = strings.TrimPrefix(strings.ReplaceAll(ref, `\`, "/"), "./")
		if len(ref) >= 3 && ref[1] == ':' && ref[2] == '/' {
			continue // a Windows drive letter: a path of another host
		}
		b, err := c.Backing(l.Path, ref, Name)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			return err
		}
		p, ok := b.(*Layer)
		if !ok {
			return disk.ChainError(l.Path, "parent locator "+key, "parent %s is not a VHDX", b.Name())
		}
		want, _ := parseGUID(l.ParentLinkage)
		if p.Header.DataWriteGUID != want {
			return disk.ChainError(l.Path, "parent locator parent_linkage", "parent %s has data write GUID %s, the child expects %s", b.Name(), p.Header.DataWriteGUID, want)
		}
		l.backing, l.ParentRef = b, ref
		return nil
	}
	return disk.ChainError(l.Path, "parent locator", "no parent found: %w", errors.Join(errs...))
}

// FileBytes is the size of the file.
func (l *Layer) FileBytes() int64 { return l.src.Size }

func (l *Layer) Size() int64         { return l.size }
func (l *Layer) Backing() disk.Layer { return l.backing }
func (l *Layer) Format() string      { return Name }
func (l *Layer) Name() string        { return l.Path }

// ReadAt reads the guest disk as this layer sees it.
func (l *Layer) ReadAt(p []byte, off int64) (int, error) {
	return imgio.GuestRead(l.Path, l.size, p, off, l.fill)
}

func (l *Layer) fill(q []byte, off int64) error {
	bs := l.BlockSize
	for len(q) > 0 {
		b := off / bs
		in := off % bs
		chunk := q[:min(int64(len(q)), bs-in)]
		e := l.bat[l.batIndex(b)]
		host := int64(e>>20) * mib
		var err error
		switch e & 7 {
		case FullyPresent:
			err = imgio.Read(l.src, chunk, host+in, "payload block")
		case PartiallyPresent:
			err = l.fillPartial(chunk, off, b, host+in)
		case NotPresent:
			if l.HasParent {
				err = imgio.Below(l.Path, l.backing, chunk, off)
				break
			}
			clear(chunk)
		default:
			clear(chunk)
		}
		if err != nil {
			return err
		}
		q = q[len(chunk):]
		off += int64(len(chunk))
	}
	return nil
}

// fillPartial reads chunk of partially present block b (host: the file
// offset of chunk's first byte): runs of sectors set in the bitmap from
// the file, the others from the parent.
func (l *Layer) fillPartial(chunk []byte, off, b, host int64) error {
	bm, err := l.bitmap(b)
	if err != nil {
		return err
	}
	ss := l.LogicalSectorSize
	for len(chunk) > 0 {
		s := off / ss
		set := l.bit(bm, s)
		n := ss - off%ss
		for s2 := s + 1; n < int64(len(chunk)) && l.bit(bm, s2) == set; s2++ {
			n += ss
		}
		n = min(n, int64(len(chunk)))
		if set {
			err = imgio.Read(l.src, chunk[:n], host, "payload block")
		} else {
			err = imgio.Below(l.Path, l.backing, chunk[:n], off)
		}
		if err != nil {
			return err
		}
		chunk = chunk[n:]
		off += n
		host += n
	}
	return nil
}

// bit reports the bitmap bit of guest sector s in its chunk's bitmap.
func (l *Layer) bit(bm []byte, s int64) bool {
	i := s % (1 << 23)
	return bm[i/8]&(1<<(i%8)) != 0
}

// bitmap returns the 1 MiB sector bitmap block of block b's chunk.
func (l *Layer) bitmap(b int64) ([]byte, error) {
	ci := b / l.chunkRatio
	l.mu.Lock()
	bm, ok := l.bitmaps[ci]
	l.mu.Unlock()
	if ok {
		return bm, nil
	}
	e := l.bat[l.bitmapIndex(b)]
	bm = make([]byte, mib)
	if err := imgio.Read(l.src, bm, int64(e>>20)*mib, "sector bitmap block"); err != nil {
		return nil, err
	}
	l.mu.Lock()
	if len(l.bitmaps) >= bitmapCacheMax {
		clear(l.bitmaps)
	}
	l.bitmaps[ci] = bm
	l.mu.Unlock()
	return bm, nil
}

// Allocated is what the file holds itself, as qemu-img map reports it: the
// whole disk without a parent; with one, the fully present, zero and
// unmapped blocks and the set sectors of partially present blocks.
func (l *Layer) Allocated(ctx context.Context) (rangeset.Set, error) {
	var s rangeset.Set
	if !l.HasParent {
		s.Add(0, l.size)
		return s, nil
	}
	blocks := (l.size + l.BlockSize - 1) / l.BlockSize
	ss := l.LogicalSectorSize
	for b := range blocks {
		start := b * l.BlockSize
		switch l.bat[l.batIndex(b)] & 7 {
		case FullyPresent, Zero, Unmapped:
			s.Add(start, start+l.BlockSize)
		case PartiallyPresent:
			if err := ctx.Err(); err != nil {
				return s, err
			}
			bm, err := l.bitmap(b)
			if err != nil {
				return s, err
			}
			for sec := start / ss; sec < (start+l.BlockSize)/ss; sec++ {
				if l.bit(bm, sec) {
					s.Add(sec*ss, sec*ss+ss)
				}
			}
		}
	}
	return s.Clip(0, l.size), nil
}

// DataRanges is the present payload blocks: outside them the file holds
// no data (zeros, or its parent's, which DataRanges of the parent covers).
func (l *Layer) DataRanges(ctx context.Context) (rangeset.Set, error) {
	var s rangeset.Set
	blocks := (l.size + l.BlockSize - 1) / l.BlockSize
	for b := range blocks {
		if st := l.bat[l.batIndex(b)] & 7; st == FullyPresent || st == PartiallyPresent {
			s.Add(b*l.BlockSize, (b+1)*l.BlockSize)
		}
	}
	return s.Clip(0, l.size), nil
}

// String describes the layer.
func (l *Layer) String() string {
	kind := "dynamic"
	if l.HasParent {
		kind = "differencing"
	}
	return fmt.Sprintf("vhdx %s %s (%d bytes, %d-byte blocks)", kind, l.Path, l.size, l.BlockSize)
}
