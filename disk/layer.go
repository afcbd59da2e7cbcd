package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// Layer is one file of a disk image's backing chain.
type Layer interface {
	// ReadAt reads the guest disk as this layer presents it: its own data
	// over its backing chain (for a backing file, the disk as it was when
	// the overlay above was made). io.SectionReader semantics at Size: a
	// read past the end is short with io.EOF. Safe for concurrent use.
	io.ReaderAt
	// Size is the guest disk size in bytes.
	Size() int64
	// Allocated is the set of guest byte ranges this file holds itself, as
	// `qemu-img map --output=json` reports them for the file alone (depth
	// 0, present true). Ranges lie within [0, Size()).
	Allocated(ctx context.Context) (rangeset.Set, error)
	// Backing is the layer below, or nil for the base of the chain.
	Backing() Layer
	// Format is the registered name of the format ("raw", "qcow2").
	Format() string
	// Name is the path of the file as opened (absolute, for Open), or the
	// name an Opener gave.
	Name() string
}

// DataLayer is implemented by a layer that can tell, more cheaply than by
// reading, the ranges outside which its own bytes are zeros (a raw file's
// SEEK_DATA/SEEK_HOLE). Image.DataRanges uses it instead of Allocated.
type DataLayer interface {
	DataRanges(ctx context.Context) (rangeset.Set, error)
}

// Clustered is implemented by a layer with a natural read unit (a qcow2
// cluster); Image serves reads shorter than it from whole cached units.
type Clustered interface {
	ClusterBytes() int
}

// Source is a file handed to a format: its bytes, size and name.
type Source struct {
	R    io.ReaderAt
	Size int64
	Name string
}

// Format is a disk image format. A format package registers itself in its
// init function; detection then knows its magic.
type Format struct {
	// Name is the format's name as QEMU spells it ("qcow2"); it is also
	// the backing format an overlay may record.
	Name string
	// Match reports whether head, the first bytes of a file (up to
	// HeadSize, fewer for a shorter file), is this format's header. It
	// must not claim a file on a partial match it then cannot open.
	Match func(head []byte) bool
	// MatchTail, when set, reports whether tail, the last TailSize bytes
	// of a file that no format claimed by its head, is this format's
	// footer (a fixed VHD has only a footer at its end). It sees nothing
	// for a file shorter than TailSize or of unknown size, and must check
	// enough (a checksum) not to claim a raw disk whose last sector looks
	// alike by chance.
	MatchTail func(tail []byte) bool
	// Open makes the layer of src. A format with backing files opens the
	// layer below with c.Backing; it must bound every length and offset
	// read from src and report errors as *Error naming the structure.
	Open func(src Source, c *Chain) (Layer, error)
}

// HeadSize is how many bytes of a file Match sees.
const HeadSize = 512

// TailSize is how many bytes at the end of a file MatchTail sees.
const TailSize = 512

var (
	regMu   sync.RWMutex
	formats []Format
)

// Register adds a format to detection. Registering a name twice panics.
func Register(f Format) {
	regMu.Lock()
	defer regMu.Unlock()
	if f.Name == "" || f.Name == RawFormat || f.Match == nil || f.Open == nil {
		panic("disk: Register of an incomplete format or of raw")
	}
	if slices.ContainsFunc(formats, func(g Format) bool { return g.Name == f.Name }) {
		panic("disk: format " + f.Name + " registered twice")
	}
	formats = append(formats, f)
}

// Formats lists the registered formats' names, raw last.
func Formats() []string {
	regMu.RLock()
	defer regMu.RUnlock()
	var out []string
	for _, f := range formats {
		out = append(out, f.Name)
	}
	return append(out, RawFormat)
}

func lookup(name string) (Format, bool) {
	regMu.RLock()
	defer regMu.RUnlock()
	for _, f := range formats {
		if f.Name == name {
			return f, true
		}
	}
	return Format{}, false
}

// known lists well-known formats by their magic: one that no package
// registered is refused with ErrUnsupported, never read as raw. The qcow2
// entry matters when package qcow is not linked in. LUKS is not among
// them: a LUKS file is no container around a disk but the encrypted
// volume itself, so it is read raw and the volume layer (fsparse) reports
// it, as it reports a LUKS partition.
var known = []struct {
	name  string
	off   int
	magic string
}{
	{"qcow2", 0, "QFI\xfb"},
	{"vmdk", 0, "KDMV"},
	{"vmdk (descriptor)", 0, "# Disk DescriptorFile"},
	{"vmdk (esx cowd)", 0, "COWD"},
	{"vhdx", 0, "vhdxfile"},
	{"vpc (dynamic vhd)", 0, "conectix"},
	{"vdi", 0x40, "\x7f\x10\xda\xbe"},
	{"qed", 0, "QED\x00"},
	{"parallels", 0, "WithoutFreeSpace"},
	{"parallels", 0, "WithouFreSpacExt"},
	{"bochs", 0, "Bochs Virtual HD Image"},
	{"cloop", 0, "#!/bin/sh\n#V2.0 Format"},
}

// RawFormat is the name of the raw format, the fallback of detection.
const RawFormat = "raw"

// Detect reports the format of an image of size bytes from its content:
// the first registered format whose Match accepts the first HeadSize bytes;
// a well-known format that no package registered (qcow v1, VMDK, VHDX,
// VDI, VHD with its header or only its footer, QED, Parallels, ...)
// gives ErrUnsupported; then the first registered format whose MatchTail
// accepts the last TailSize bytes (a footer-only format, when size is
// known); anything else is raw. size < 0 skips the footer checks.
func Detect(r io.ReaderAt, size int64) (string, error) {
	var buf [HeadSize]byte
	n, err := r.ReadAt(buf[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	head := buf[:n]
	regMu.RLock()
	fs := slices.Clone(formats)
	regMu.RUnlock()
	for _, f := range fs {
		if f.Match(head) {
			return f.Name, nil
		}
	}
	for _, m := range known {
		if len(head) >= m.off+len(m.magic) && bytes.Equal(head[m.off:m.off+len(m.magic)], []byte(m.magic)) {
			return "", fmt.Errorf("%w: %s image", ErrUnsupported, m.name)
		}
	}
	if len(head) >= 0x40 && bytes.HasPrefix(head, []byte("<<< ")) && bytes.Contains(head[:0x40], []byte("VirtualBox Disk Image")) {
		return "", fmt.Errorf("%w: vdi image", ErrUnsupported)
	}
	if tail, ok := readTail(r, size); ok {
		for _, f := range fs {
			if f.MatchTail != nil && f.MatchTail(tail) {
				return f.Name, nil
			}
		}
	}
	if size >= 512 {
		var foot [8]byte
		if _, err := r.ReadAt(foot[:], size-512); err == nil && string(foot[:]) == "conectix" {
			return "", fmt.Errorf("%w: vpc (fixed vhd) image", ErrUnsupported)
		}
	}
	return RawFormat, nil
}

// readTail reads the last TailSize bytes of r (size bytes), ok false for
// a shorter file, an unknown size or a read error.
func readTail(r io.ReaderAt, size int64) ([]byte, bool) {
	if size < TailSize {
		return nil, false
	}
	tail := make([]byte, TailSize)
	if n, err := r.ReadAt(tail, size-TailSize); n < TailSize || (err != nil && !errors.Is(err, io.EOF)) {
		return nil, false
	}
	return tail, true
}

// SizeOf returns the size of r when it tells it (Size() int64, or Stat()
// of a regular file as *os.File does).
func SizeOf(r io.ReaderAt) (int64, bool) {
	switch v := r.(type) {
	case interface{ Size() int64 }:
		return v.Size(), true
	case *os.File:
		st, err := v.Stat()
		if err != nil || !st.Mode().IsRegular() {
			return 0, false
		}
		return st.Size(), true
	}
	return 0, false
}
