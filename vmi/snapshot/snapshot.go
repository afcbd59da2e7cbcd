// Package snapshot opens memory snapshot files as guest-physical memory
// (vmi.Memory): QEMU/libvirt ELF cores (dump-guest-memory, virsh dump
// --memory-only), kdump-compressed files (QEMU's kdump-zlib/-lzo/-snappy, makedumpfile's -c/-l/-p/-z, plain
// or in makedumpfile's flattened form), LiME files and raw flat images. The
// format is detected from the content.
//
// A Snapshot is an io.ReaderAt over guest-physical addresses. Memory a
// format does not hold reads as a *vmi.HoleError (wrapping
// vmi.ErrNotPresent); Ranges lists what is present. CPUs returns the saved
// vCPU state where the format has it (ELF notes, kdump notes).
//
// The file is hostile input: every count and size read from it is checked
// against the file's size and a fixed cap before it sizes an allocation or
// a loop; errors name the structure and its file offset and wrap ErrCorrupt
// or ErrUnsupported. The file is only ever read.
package snapshot

import (
	"fmt"
	"github.com/vmscope/vmscope/vmerr"
	"io"
	"os"
	"sort"

	"github.com/vmscope/vmscope/vmi"
)

var (
	// ErrCorrupt is a snapshot that breaks its format's rules.
	ErrCorrupt = vmerr.New("snapshot: corrupt", vmerr.ErrCorrupt)
	// ErrUnsupported is a valid snapshot using something this package does
	// not read (a kdump page of an unknown compression, a 32-bit ELF core).
	ErrUnsupported = vmerr.New("snapshot: unsupported", vmerr.ErrUnsupported)
)

// Format is a snapshot file format.
type Format int

const (
	Raw Format = iota
	ELF
	Kdump
	LiME
)

func (f Format) String() string {
	switch f {
	case Raw:
		return "raw"
	case ELF:
		return "elf"
	case Kdump:
		return "kdump"
	case LiME:
		return "lime"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// Caps on what a header may ask for.
const (
	maxSegments = 1 << 16  // PT_LOADs, LiME ranges
	maxNotes    = 16 << 20 // bytes of ELF notes
	maxCPUs     = 1 << 12
)

// segment maps guest-physical [start, start+size) to file bytes at off;
// bytes past fileSize (ELF p_memsz > p_filesz) read as zeros.
type segment struct {
	start    vmi.PA
	size     uint64
	off      int64
	fileSize uint64
}

// Snapshot is a memory snapshot opened read-only.
type Snapshot struct {
	format Format
	r      io.ReaderAt
	size   int64
	closer io.Closer

	segs []segment // sorted, disjoint (raw, ELF, LiME)
	kd   *kdump
	cpus []vmi.CPU
}

// Open opens the snapshot file at path read-only and detects its format.
func Open(path string) (*Snapshot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	s, err := New(f, fi.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s.closer = f
	return s, nil
}

// New reads a snapshot of size bytes from r and detects its format. A
// file of no known format is taken as raw.
func New(r io.ReaderAt, size int64) (*Snapshot, error) {
	if size < 0 {
		return nil, fmt.Errorf("snapshot: negative size: %w", ErrCorrupt)
	}
	s := &Snapshot{r: r, size: size}
	var magic [16]byte
	n, _ := r.ReadAt(magic[:], 0)
	m := magic[:n]
	var err error
	switch {
	case len(m) >= 4 && string(m[:4]) == "\x7fELF":
		s.format = ELF
		err = s.openELF()
	case len(m) >= 8 && string(m[:8]) == kdumpSig:
		s.format = Kdump
		s.kd, err = openKdump(r, size, size)
	case len(m) >= 12 && string(m[:12]) == flatSig:
		s.format = Kdump
		var fr io.ReaderAt
		var fsize int64
		if fr, fsize, err = openFlattened(r, size); err == nil {
			s.kd, err = openKdump(fr, fsize, size)
		}
	case len(m) >= 4 && le.Uint32(m) == limeMagic:
		s.format = LiME
		err = s.openLiME()
	default:
		s.format = Raw
		if size > 0 {
			s.segs = []segment{{start: 0, size: uint64(size), off: 0, fileSize: uint64(size)}}
		}
	}
	if err != nil {
		return nil, err
	}
	if s.kd != nil {
		s.cpus = s.kd.cpus
	}
	return s, nil
}

// Close closes the file Open opened.
func (s *Snapshot) Close() error {
	if s.closer != nil {
		return s.closer.Close()
	}
	return nil
}

// Format is the detected format.
func (s *Snapshot) Format() Format { return s.format }

// CPUs returns the saved vCPU states, nil when the format has none.
func (s *Snapshot) CPUs() []vmi.CPU { return append([]vmi.CPU(nil), s.cpus...) }

// Ranges returns the present guest-physical ranges, sorted and disjoint
// (adjacent ranges merged).
func (s *Snapshot) Ranges() []vmi.Range {
	if s.kd != nil {
		return s.kd.ranges()
	}
	var out []vmi.Range
	for _, g := range s.segs {
		if n := len(out); n > 0 && out[n-1].End() == g.start {
			out[n-1].Size += g.size
			continue
		}
		out = append(out, vmi.Range{Start: g.start, Size: g.size})
	}
	return out
}

// ReadAt reads guest-physical memory at address off. Bytes up to the first
// hole are returned with a *vmi.HoleError for the hole.
func (s *Snapshot) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &vmi.HoleError{Addr: vmi.PA(off)}
	}
	if s.kd != nil {
		return s.kd.readAt(p, vmi.PA(off))
	}
	return readSegments(s.r, s.segs, p, vmi.PA(off))
}

func readSegments(r io.ReaderAt, segs []segment, p []byte, pa vmi.PA) (int, error) {
	n := 0
	for n < len(p) {
		a, ok := pa.Add(uint64(n))
		if !ok {
			return n, &vmi.HoleError{Addr: pa}
		}
		i := sort.Search(len(segs), func(i int) bool { return segs[i].start+vmi.PA(segs[i].size-1) >= a })
		if i == len(segs) || a < segs[i].start {
			return n, &vmi.HoleError{Addr: a}
		}
		g := segs[i]
		rel := uint64(a - g.start)
		want := uint64(len(p) - n)
		if left := g.size - rel; want > left {
			want = left
		}
		if rel < g.fileSize {
			fw := want
			if left := g.fileSize - rel; fw > left {
				fw = left
			}
			m, err := r.ReadAt(p[n:n+int(fw)], g.off+int64(rel))
			n += m
			if m < int(fw) {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return n, fmt.Errorf("snapshot: reading guest-physical %#x at file offset %#x: %w", uint64(a), g.off+int64(rel), err)
			}
			want -= fw
		}
		clear(p[n : n+int(want)])
		n += int(want)
	}
	return n, nil
}

// addSegments sorts segs, checks they are disjoint and inside the file,
// and drops empty ones.
func (s *Snapshot) addSegments(segs []segment, what string) error {
	out := segs[:0]
	for _, g := range segs {
		if g.size == 0 {
			continue
		}
		if _, ok := g.start.Add(g.size); !ok {
			return fmt.Errorf("snapshot: %s at guest-physical %#x size %#x wraps: %w", what, uint64(g.start), g.size, ErrCorrupt)
		}
		if g.fileSize > g.size || g.off < 0 || uint64(g.off) > uint64(s.size) || g.fileSize > uint64(s.size)-uint64(g.off) {
			return fmt.Errorf("snapshot: %s at file offset %#x size %#x past the end of the file (%#x): %w", what, g.off, g.fileSize, s.size, ErrCorrupt)
		}
		out = append(out, g)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].start < out[j].start })
	for i := 1; i < len(out); i++ {
		if out[i].start < out[i-1].start+vmi.PA(out[i-1].size) {
			return fmt.Errorf("snapshot: %s at guest-physical %#x overlaps the one at %#x: %w", what, uint64(out[i].start), uint64(out[i-1].start), ErrCorrupt)
		}
	}
	s.segs = out
	return nil
}
