// Package vmdk reads VMware VMDK images for vmscope and registers the
// "vmdk" format with package disk: a hosted sparse file ("KDMV":
// monolithicSparse, streamOptimized, a delta disk) or a text descriptor
// ("# Disk DescriptorFile": monolithicFlat, twoGbMaxExtentSparse,
// twoGbMaxExtentFlat, or any list of FLAT, SPARSE and ZERO extents).
//
// What it promises:
//
//   - Read-only. Extent files are opened through the chain's opener
//     (disk.Chain.OpenFile): relative to the descriptor, read-only, a
//     protocol or json: name refused, a file already in the chain (the
//     descriptor itself, or, for disk.Open, any file already opened, by
//     identity) refused as a loop.
//   - The guest is hostile. The descriptor text is bounded (1 MiB, 20,000
//     lines of 4 KiB, 4,096 extents) and its numbers range checked; a
//     sparse header's grain size (power of two up to 32 MiB), grain table
//     size (up to 65,536 entries), capacity, descriptor and directory
//     offsets are checked; the grain directory (up to 64 MiB) is read
//     whole at open and every grain table it points to must lie inside the
//     file without overlapping the header, the directory or another table;
//     every grain is checked against the file when it is read; a
//     compressed grain is read with one bounded read (its marker's size, at
//     most two grains) and inflated to at most one grain, its marker's LBA
//     must be its own. Errors are *disk.Error naming the file, the
//     structure and its offset, wrapping disk.ErrCorrupt, ErrUnsupported or
//     ErrChain.
//   - Reads equal `qemu-img convert -f vmdk -O raw`. Allocated has the
//     semantics of `qemu-img map --output=json` for the file alone: the
//     allocated and zeroed grains of a sparse extent (a zeroed grain of a
//     delta hides its parent), the whole of a FLAT extent; a ZERO extent
//     counts as allocated (it hides a parent too; QEMU skips ZERO extents
//     altogether, so for them the reference is the test's own).
//   - Delta disks: a descriptor whose parentCID is not ffffffff names its
//     parent by parentFileNameHint; the parent is opened with
//     disk.Chain.Backing as "vmdk" (depth and loops checked) and its CID
//     must equal the child's parentCID (else ErrChain: the delta was made
//     on another disk). Unallocated grains read from the parent.
//   - Refused with ErrUnsupported: COWD (ESX vmfsSparse), SESPARSE,
//     VMFSRAW/VMFSRDM and NOACCESS extents, compression other than
//     deflate, versions above 3.
package vmdk

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/internal/imgio"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// Name is the format's name as QEMU spells it.
const Name = "vmdk"

const descMagic = "# Disk DescriptorFile"

func init() {
	disk.Register(disk.Format{Name: Name, Match: match, Open: open})
}

func match(head []byte) bool {
	return len(head) >= 4 && (string(head[:4]) == magicKDMV || string(head[:4]) == magicCOWD) ||
		len(head) >= len(descMagic) && string(head[:len(descMagic)]) == descMagic
}

// Extent kinds.
const (
	KindFlat   = "FLAT"
	KindSparse = "SPARSE"
	KindZero   = "ZERO"
)

// Extent is one extent of the disk, as opened.
type Extent struct {
	Kind   string // KindFlat, KindSparse or KindZero
	Start  int64  // guest byte offset
	Size   int64  // bytes
	File   string // path of the extent file ("" for ZERO)
	Offset int64  // FLAT: byte offset of the extent in its file

	src disk.Source
	sp  *sparse
}

// Layer is one VMDK disk (a descriptor and its extents, or a hosted sparse
// file). It implements disk.Layer.
type Layer struct {
	Path       string
	Descriptor *Descriptor // nil for a sparse file without an embedded descriptor
	Extents    []*Extent
	ParentRef  string // parentFileNameHint, when the parent was opened

	size     int64
	fileSize int64
	backing  disk.Layer
}

func open(src disk.Source, c *disk.Chain) (disk.Layer, error) {
	name := src.Name
	head := make([]byte, min(src.Size, int64(len(descMagic))))
	if err := imgio.Read(src, head, 0, "header"); err != nil {
		return nil, err
	}
	l := &Layer{Path: name, fileSize: src.Size}
	if len(head) < 4 {
		return nil, disk.Corrupt(name, "header", 0, "a %d-byte file", src.Size)
	}
	if string(head[:4]) == magicKDMV || string(head[:4]) == magicCOWD {
		sp, err := openSparse(src)
		if err != nil {
			return nil, err
		}
		l.Extents = []*Extent{{Kind: KindSparse, Size: sp.h.Capacity * 512, File: name, src: src, sp: sp}}
		l.size = sp.h.Capacity * 512
		if h := sp.h; h.DescOffset > 0 && h.DescSize > 0 {
			at := h.DescOffset * 512
			text, err := imgio.Alloc(src, h.DescSize*512, maxDescriptor, at, "embedded descriptor")
			if err != nil {
				return nil, err
			}
			if err := imgio.Read(src, text, at, "embedded descriptor"); err != nil {
				return nil, err
			}
			if l.Descriptor, err = parseDescriptor(name, text, at); err != nil {
				return nil, err
			}
		}
	} else {
		text, err := imgio.Alloc(src, src.Size, maxDescriptor, 0, "descriptor")
		if err != nil {
			return nil, err
		}
		if err := imgio.Read(src, text, 0, "descriptor"); err != nil {
			return nil, err
		}
		if l.Descriptor, err = parseDescriptor(name, text, 0); err != nil {
			return nil, err
		}
		if err := l.openExtents(src, c); err != nil {
			return nil, err
		}
	}
	if d := l.Descriptor; d != nil && d.HasParent() {
		if err := l.openParent(c); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// openExtents opens the extents of a descriptor file.
func (l *Layer) openExtents(src disk.Source, c *disk.Chain) error {
	d := l.Descriptor
	if len(d.Extents) == 0 {
		return disk.Corrupt(l.Path, "descriptor", 0, "no extent")
	}
	seen := map[string]bool{}
	var start int64
	for _, el := range d.Extents {
		size := el.Sectors * 512
		if start > maxSectors*512-size {
			return disk.Corrupt(l.Path, "descriptor extent", el.at, "the disk grows past %d sectors", int64(maxSectors))
		}
		e := &Extent{Start: start, Size: size}
		if el.Access == "NOACCESS" {
			return disk.Unsupported(l.Path, "descriptor extent", el.at, "NOACCESS extent")
		}
		switch el.Type {
		case "FLAT", "VMFS":
			e.Kind, e.Offset = KindFlat, el.Offset*512
		case "SPARSE":
			e.Kind = KindSparse
			if el.Offset != 0 {
				return disk.Unsupported(l.Path, "descriptor extent", el.at, "SPARSE extent at offset %d of its file", el.Offset)
			}
		case "ZERO":
			e.Kind = KindZero
		default:
			return disk.Unsupported(l.Path, "descriptor extent", el.at, "%s extent", el.Type)
		}
		if e.Kind != KindZero {
			if seen[el.File] {
				return disk.Corrupt(l.Path, "descriptor extent", el.at, "extent file %q named twice", el.File)
			}
			seen[el.File] = true
			f, err := c.OpenFile(l.Path, el.File)
			if err != nil {
				return err
			}
			e.File, e.src = f.Name, f
			if e.Kind == KindFlat {
				if e.Offset > f.Size || size > f.Size-e.Offset {
					return disk.Corrupt(f.Name, "flat extent", e.Offset, "extent of %d bytes at %d in a %d-byte file", size, e.Offset, f.Size)
				}
			} else {
				if e.sp, err = openSparse(f); err != nil {
					return err
				}
			}
		}
		l.Extents = append(l.Extents, e)
		start += size
	}
	l.size = start
	return nil
}

// openParent opens the parent of a delta disk and checks its CID.
func (l *Layer) openParent(c *disk.Chain) error {
	d := l.Descriptor
	ref := d.ParentHint
	b, err := c.Backing(l.Path, ref, Name)
	if err != nil {
		return err
	}
	p, ok := b.(*Layer)
	if !ok || p.Descriptor == nil {
		return disk.ChainError(l.Path, "parentFileNameHint "+ref, "parent %s has no VMDK descriptor", b.Name())
	}
	if p.Descriptor.CID != d.ParentCID {
		return disk.ChainError(l.Path, "parentCID", "parent %s has CID %08x, the delta expects %08x", b.Name(), p.Descriptor.CID, d.ParentCID)
	}
	l.backing, l.ParentRef = b, ref
	return nil
}

func (l *Layer) Size() int64         { return l.size }
func (l *Layer) Backing() disk.Layer { return l.backing }
func (l *Layer) Format() string      { return Name }
func (l *Layer) Name() string        { return l.Path }

// FileBytes is the size of the layer's files: the descriptor's and its
// extents'.
func (l *Layer) FileBytes() int64 {
	n := l.fileSize
	for _, e := range l.Extents {
		if e.src.Name != l.Path {
			n += e.src.Size
		}
	}
	return n
}

// CreateType is the descriptor's createType ("" without a descriptor).
func (l *Layer) CreateType() string {
	if l.Descriptor == nil {
		return ""
	}
	return l.Descriptor.CreateType
}

// ReadAt reads the guest disk as this layer sees it.
func (l *Layer) ReadAt(p []byte, off int64) (int, error) {
	return imgio.GuestRead(l.Path, l.size, p, off, l.fill)
}

// extentAt returns the index of the extent holding guest offset off.
func (l *Layer) extentAt(off int64) int {
	lo, hi := 0, len(l.Extents)
	for lo < hi {
		m := (lo + hi) / 2
		if e := l.Extents[m]; off >= e.Start+e.Size {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

func (l *Layer) fill(q []byte, off int64) error {
	for i := l.extentAt(off); len(q) > 0; i++ {
		e := l.Extents[i]
		in := off - e.Start
		chunk := q[:min(int64(len(q)), e.Size-in)]
		var err error
		switch e.Kind {
		case KindZero:
			clear(chunk)
		case KindFlat:
			err = imgio.Read(e.src, chunk, e.Offset+in, "flat extent")
		default:
			err = l.readSparse(e, chunk, in, off)
		}
		if err != nil {
			return err
		}
		q = q[len(chunk):]
		off += int64(len(chunk))
	}
	return nil
}

// readSparse reads p at byte in of sparse extent e (guest offset off).
// Runs of grains that follow each other in the file are read with one
// pread, runs of unallocated grains from the parent with one read.
func (l *Layer) readSparse(e *Extent, p []byte, in, off int64) error {
	s := e.sp
	const (
		none = iota
		data
		below
	)
	var run []byte // a run of p, consecutive (chunks are taken in order)
	kindRun, hostRun, offRun := none, int64(0), int64(0)
	flush := func() error {
		var err error
		switch kindRun {
		case data:
			err = imgio.Read(s.src, run, hostRun, "grain")
		case below:
			err = imgio.Below(l.Path, l.backing, run, offRun)
		}
		kindRun, run = none, nil
		return err
	}
	// add appends chunk to the run of kind k (host offset h for data).
	add := func(chunk []byte, k int, h, o int64) error {
		if kindRun == k && (k != data || hostRun+int64(len(run)) == h) {
			run = run[:len(run)+len(chunk)]
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		run, kindRun, hostRun, offRun = chunk, k, h, o
		return nil
	}
	var inflate []grainJob // compressed grains, inflated at the end
	for len(p) > 0 {
		gi := in / s.grain
		gin := in % s.grain
		chunk := p[:min(int64(len(p)), s.grain-gin)]
		kind, host, at := grainUnalloc, int64(0), int64(-1)
		if in < s.h.Capacity*512 {
			var err error
			if kind, host, at, err = s.entry(gi); err != nil {
				return err
			}
		}
		var err error
		switch {
		case kind == grainData && !s.compress:
			if host+gin+int64(len(chunk)) > s.src.Size {
				return disk.Corrupt(s.src.Name, "grain table entry", at, "grain %d at %#x past the end of the %d-byte file", gi, host, s.src.Size)
			}
			err = add(chunk, data, host+gin, off)
		case kind == grainData:
			if err := flush(); err != nil {
				return err
			}
			inflate = append(inflate, grainJob{chunk, gi, host, at, gin})
		case kind == grainZero:
			if err := flush(); err != nil {
				return err
			}
			clear(chunk)
		default:
			err = add(chunk, below, 0, off)
		}
		if err != nil {
			return err
		}
		p = p[len(chunk):]
		in += int64(len(chunk))
		off += int64(len(chunk))
	}
	if err := flush(); err != nil {
		return err
	}
	return s.inflateAll(inflate)
}

// grainJob is a compressed grain to serve into chunk (from byte gin of
// grain gi, stored at host; its table entry at at).
type grainJob struct {
	chunk             []byte
	gi, host, at, gin int64
}

// inflateAll serves the compressed grains of one read, on up to
// GOMAXPROCS goroutines when there are several (a 4 MiB read of a
// stream-optimized disk is 64 grains of 64 KiB to inflate).
func (s *sparse) inflateAll(jobs []grainJob) error {
	one := func(j grainJob) error {
		if j.gin == 0 && int64(len(j.chunk)) == s.grain {
			// A whole grain: inflated in place, past the cache (which
			// serves the small reads of a filesystem walk).
			k, err := s.inflate(j.gi, j.host, j.at, j.chunk)
			if err != nil {
				return err
			}
			if k < len(j.chunk) {
				return disk.Corrupt(s.src.Name, "compressed grain", j.host, "grain %d inflates to %d bytes, %d needed", j.gi, k, len(j.chunk))
			}
			return nil
		}
		g, err := s.compressed(j.gi, j.host, j.at)
		if err != nil {
			return err
		}
		if int64(len(g)) < j.gin+int64(len(j.chunk)) {
			return disk.Corrupt(s.src.Name, "compressed grain", j.host, "grain %d inflates to %d bytes, %d needed", j.gi, len(g), j.gin+int64(len(j.chunk)))
		}
		copy(j.chunk, g[j.gin:])
		return nil
	}
	workers := min(len(jobs), runtime.GOMAXPROCS(0))
	if workers <= 1 {
		for _, j := range jobs {
			if err := one(j); err != nil {
				return err
			}
		}
		return nil
	}
	var wg sync.WaitGroup
	var next atomic.Int64
	errs := make([]error, len(jobs))
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(len(jobs)); i = next.Add(1) - 1 {
				errs[i] = one(jobs[i])
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err // the first grain's error, as a serial read gives it
		}
	}
	return nil
}

// Allocated is what the file holds itself, as qemu-img map reports it:
// allocated and zeroed grains of sparse extents, FLAT and ZERO extents
// whole.
func (l *Layer) Allocated(ctx context.Context) (rangeset.Set, error) {
	var out rangeset.Set
	for _, e := range l.Extents {
		if e.Kind != KindSparse {
			out.Add(e.Start, e.Start+e.Size)
			continue
		}
		s := e.sp
		limit := min(e.Size, s.h.Capacity*512)
		for ti, gte := range s.gd {
			if gte == 0 {
				continue
			}
			if err := ctx.Err(); err != nil {
				return out, err
			}
			for j := range s.h.NumGTEs {
				gi := int64(ti)*s.h.NumGTEs + j
				if gi*s.grain >= limit {
					break
				}
				kind, _, _, err := s.entry(gi)
				if err != nil {
					return out, err
				}
				if kind != grainUnalloc {
					out.Add(e.Start+gi*s.grain, e.Start+min((gi+1)*s.grain, limit))
				}
			}
		}
	}
	return out, nil
}

// DataRanges is where the file may hold data (disk.DataLayer): the
// allocated grains of sparse extents, the data of FLAT extent files as
// their file system reports it (SEEK_DATA), no ZERO extent.
func (l *Layer) DataRanges(ctx context.Context) (rangeset.Set, error) {
	var out rangeset.Set
	for _, e := range l.Extents {
		switch e.Kind {
		case KindFlat:
			d, err := disk.NewRaw(e.src).DataRanges(ctx)
			if err != nil {
				return out, err
			}
			for _, r := range d.Clip(e.Offset, e.Offset+e.Size).Ranges() {
				out.Add(e.Start+r.Start-e.Offset, e.Start+r.End-e.Offset)
			}
		case KindSparse:
			one := &Layer{Path: l.Path, Extents: []*Extent{e}}
			a, err := one.Allocated(ctx)
			if err != nil {
				return out, err
			}
			out.AddSet(a)
		}
	}
	return out, nil
}

// String describes the layer.
func (l *Layer) String() string {
	var kinds []string
	for _, e := range l.Extents {
		kinds = append(kinds, e.Kind)
	}
	return fmt.Sprintf("vmdk %s %s [%s] (%d bytes)", l.CreateType(), l.Path, strings.Join(kinds, " "), l.size)
}
