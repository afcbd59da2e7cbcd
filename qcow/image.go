package qcow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/lima-vm/go-qcow2reader/image"
	qcow2 "github.com/lima-vm/go-qcow2reader/image/qcow2"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// rawCacheUnit is the unit of the small-read cache of a raw image.
const rawCacheUnit = 64 << 10

// DefaultMaxChainDepth is the default cap on the number of layers in a chain.
const DefaultMaxChainDepth = 64

type options struct {
	maxDepth      int
	refuseCorrupt bool
}

// Option changes how Open works.
type Option func(*options)

// WithMaxChainDepth caps the number of layers (the top file counts as one);
// a deeper chain gives ErrChain. n < 1 is taken as 1.
func WithMaxChainDepth(n int) Option {
	return func(o *options) { o.maxDepth = max(n, 1) }
}

// WithRefuseCorrupt makes Open refuse, with ErrCorrupt, a qcow2 layer whose
// header has the "corrupt" incompatible bit set. By default such a layer is
// opened, as QEMU opens it read-only, and Layer.Corrupt reports the bit.
func WithRefuseCorrupt() Option {
	return func(o *options) { o.refuseCorrupt = true }
}

// Layer is one file of an image's backing chain.
type Layer struct {
	Path          string // absolute path of the file, as resolved
	BackingRef    string // backing file name as written in this layer's header ("" if none)
	BackingFormat string // backing format recorded in the header extension ("" if none)
	Format        Format
	Version       int   // qcow2 version (2 or 3); 0 for raw
	VirtualSize   int64 // guest disk size in bytes
	ClusterSize   int   // 0 for raw
	Compression   string
	FileSize      int64
	Dirty         bool // qcow2 v3 dirty bit (refcounts may be stale; reads are fine)
	Corrupt       bool // qcow2 v3 corrupt bit (QEMU opens such an image read-only)
	ExtendedL2    bool // qcow2 v3 extended L2 entries (subclusters)
	Bitmaps       []BitmapInfo

	f    *os.File
	st   os.FileInfo
	h    *header
	l1   []uint64
	img  image.Image // library image (qcow2) or rawImage; reads the merged view
	lib  *qcow2.Qcow2
	once sync.Once
}

// Image is a guest disk: an io.ReaderAt over the virtual disk of the top
// layer with its backing chain merged. ReadAt is safe for concurrent use.
type Image struct {
	layers []*Layer
	cache  *clusterCache // nil for a raw top layer
	once   sync.Once
	err    error
}

// Open opens the image at path and its whole backing chain, every file
// O_RDONLY. The format is detected by content.
func Open(path string, opts ...Option) (im *Image, err error) {
	o := options{maxDepth: DefaultMaxChainDepth}
	for _, opt := range opts {
		opt(&o)
	}
	var layers []*Layer
	defer func() {
		if err != nil {
			for _, l := range layers {
				l.close()
			}
		}
	}()
	cur, hint, ref := path, "", ""
	for depth := 0; ; depth++ {
		if depth >= o.maxDepth {
			return nil, chainErr(layers[depth-1].Path, "backing file "+ref, "chain deeper than %d layers", o.maxDepth)
		}
		l, err := openLayer(cur, hint, depth > 0, &o)
		if err != nil {
			if depth > 0 {
				var e *Error
				if !errors.As(err, &e) || (!errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported)) {
					err = chainErr(layers[depth-1].Path, "backing file "+ref, "%w", err)
				}
			}
			return nil, err
		}
		for _, prev := range layers {
			if os.SameFile(prev.st, l.st) {
				l.close()
				return nil, chainErr(layers[depth-1].Path, "backing file "+ref, "loop: %s is already in the chain", l.Path)
			}
		}
		layers = append(layers, l)
		if l.Format == Raw || l.BackingRef == "" {
			break
		}
		ref = l.BackingRef
		cur, err = resolveBacking(l.Path, ref)
		if err != nil {
			return nil, err
		}
		hint = l.BackingFormat
	}
	// Hand the validated chain to go-qcow2reader, base first, so that each
	// layer's backing image is the already opened layer below it.
	for i := len(layers) - 1; i >= 0; i-- {
		var below *Layer
		if i+1 < len(layers) {
			below = layers[i+1]
		}
		if err := layers[i].openLib(below); err != nil {
			return nil, err
		}
	}
	im = &Image{layers: layers}
	switch top := layers[0]; top.Format {
	case Qcow2:
		im.cache = newClusterCache(top.ClusterSize)
	case Raw:
		// One pread per inode or directory block is a system call per
		// file; 64 KiB units serve whole runs of inode table.
		im.cache = newClusterCache(rawCacheUnit)
	}
	return im, nil
}

// openLayer opens and validates one file. hint is the backing format
// recorded by the overlay ("" to detect).
func openLayer(path, hint string, backing bool, o *options) (*Layer, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &Error{Path: path, What: "path", Offset: -1, Err: err}
	}
	// Only regular files and block devices: a hostile backing name must not
	// make Open block on a FIFO or a terminal, or read a character device.
	if st, err := os.Stat(abs); err == nil && !st.Mode().IsRegular() && (st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0) {
		return nil, unsupported(abs, "open", -1, "not a regular file or block device (%s)", st.Mode().Type())
	}
	f, err := os.OpenFile(abs, os.O_RDONLY, 0)
	if err != nil {
		return nil, &Error{Path: abs, What: "open", Offset: -1, Err: err}
	}
	l := &Layer{Path: abs, f: f}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if l.st, err = f.Stat(); err != nil {
		return nil, &Error{Path: abs, What: "stat", Offset: -1, Err: err}
	}
	if m := l.st.Mode(); !m.IsRegular() && (m&os.ModeDevice == 0 || m&os.ModeCharDevice != 0) {
		return nil, unsupported(abs, "open", -1, "not a regular file or block device (%s)", m.Type())
	}
	// The size of a regular file or of a block device.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, &Error{Path: abs, What: "size", Offset: -1, Err: err}
	}
	l.FileSize = size
	var format Format
	switch hint {
	case "raw":
		format = Raw
	case "qcow2", "":
		format, err = Detect(io.NewSectionReader(f, 0, size))
		if err != nil {
			return nil, &Error{Path: abs, What: "format", Offset: 0, Err: err}
		}
		if hint == "qcow2" && format != Qcow2 {
			return nil, corrupt(abs, "header", 0, "recorded as qcow2 by its overlay but has no qcow2 header")
		}
	default:
		return nil, unsupported(abs, "backing format", -1, "backing format %q", hint)
	}
	l.Format = format
	if format == Raw {
		l.VirtualSize = size
		l.img = &rawImage{f: f, size: size}
		ok = true
		return l, nil
	}
	h, err := parseHeader(abs, f, size)
	if err != nil {
		return nil, err
	}
	if h.incompatible&incCorrupt != 0 && o.refuseCorrupt {
		return nil, corrupt(abs, "header incompatible_features", 72, "the corrupt bit is set")
	}
	if l.l1, err = readL1(abs, f, h); err != nil {
		return nil, err
	}
	if l.Bitmaps, err = h.readBitmaps(abs, f); err != nil {
		return nil, err
	}
	l.h = h
	l.Version = int(h.version)
	l.VirtualSize = int64(h.size)
	l.ClusterSize = int(h.clusterSize)
	l.Compression = h.compressionName()
	l.Dirty = h.incompatible&incDirty != 0
	l.Corrupt = h.incompatible&incCorrupt != 0
	l.ExtendedL2 = h.extendedL2
	l.BackingRef = h.backingRef
	l.BackingFormat = h.backingFormat
	ok = true
	return l, nil
}

// resolveBacking resolves a backing file name as QEMU does for a plain file:
// absolute as written, relative to the directory of the overlay.
func resolveBacking(overlay, ref string) (string, error) {
	if strings.HasPrefix(ref, "json:") {
		return "", unsupported(overlay, "backing file name", -1, "json: backing specification %q", ref)
	}
	if i := strings.IndexByte(ref, ':'); i > 0 && !strings.ContainsRune(ref[:i], '/') {
		return "", unsupported(overlay, "backing file name", -1, "backing file %q uses protocol %q", ref, ref[:i])
	}
	if strings.IndexByte(ref, 0) >= 0 {
		return "", corrupt(overlay, "backing file name", -1, "NUL byte in %q", ref)
	}
	if filepath.IsAbs(ref) {
		return ref, nil
	}
	return filepath.Join(filepath.Dir(overlay), ref), nil
}

// openLib opens the validated qcow2 layer with go-qcow2reader. The library
// opens the backing file itself (os.Open, read-only) and asks the callback
// for its image; the callback hands back the layer below, already validated
// and opened, after checking it is the same file.
func (l *Layer) openLib(below *Layer) (err error) {
	if l.Format != Qcow2 {
		return nil
	}
	if l.h.size == 0 {
		l.img = emptyImage{}
		return nil
	}
	open := func(ra io.ReaderAt, _ image.Type) (image.Image, error) {
		if c, ok := ra.(io.Closer); ok {
			defer c.Close()
		}
		if below == nil { // a backing pointer with an empty name: no backing
			return emptyImage{}, nil
		}
		if f, ok := ra.(*os.File); ok {
			if st, err := f.Stat(); err != nil || !os.SameFile(st, below.st) {
				return failImage{chainErr(l.Path, "backing file "+l.BackingRef, "the file opened by go-qcow2reader is not %s", below.Path)}, nil
			}
		}
		return link{below}, nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = corrupt(l.Path, "qcow2 image (go-qcow2reader)", -1, "panic: %v", r)
		}
	}()
	lib, err := qcow2.Open(l.f, open)
	if err != nil {
		return corrupt(l.Path, "qcow2 image (go-qcow2reader)", -1, "%w", err)
	}
	if err := lib.Readable(); err != nil {
		if errors.Is(err, qcow2.ErrUnsupportedFeature) || errors.Is(err, qcow2.ErrUnsupportedCompression) || errors.Is(err, qcow2.ErrUnsupportedEncryption) {
			return unsupported(l.Path, "qcow2 image (go-qcow2reader)", -1, "%w", err)
		}
		return chainErr(l.Path, "qcow2 image (go-qcow2reader)", "%w", err)
	}
	l.lib = lib
	l.img = lib
	return nil
}

// ReadAt reads the guest disk as this layer sees it: its own clusters over
// the chain below it. For a backing file that is the disk as it was when
// the overlay above it was made. io.SectionReader semantics at the end of
// the disk; safe for concurrent use.
func (l *Layer) ReadAt(p []byte, off int64) (int, error) { return l.readAt(p, off) }

// readAt reads the guest disk of this layer with its chain merged, with
// io.SectionReader semantics at the end of the disk.
func (l *Layer) readAt(p []byte, off int64) (n int, err error) {
	size := l.VirtualSize
	if off < 0 {
		return 0, &Error{Path: l.Path, What: "read", Offset: off, Err: fmt.Errorf("%w: negative offset", fs.ErrInvalid)}
	}
	if off >= size {
		return 0, io.EOF
	}
	q := p
	if int64(len(q)) > size-off {
		q = q[:size-off]
	}
	if len(q) == 0 {
		return 0, nil
	}
	defer func() {
		if r := recover(); r != nil {
			n, err = 0, corrupt(l.Path, "guest read (go-qcow2reader)", off, "panic: %v", r)
		}
	}()
	n, err = l.img.ReadAt(q, off)
	switch {
	case n == len(q):
		err = nil
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		err = corrupt(l.Path, "guest read", off, "read %d of %d bytes: data past the end of the file (%v)", n, len(q), err)
	case errors.Is(err, ErrCorrupt), errors.Is(err, ErrUnsupported), errors.Is(err, ErrChain):
		// from a layer below: already names its file
	case isOSError(err):
		err = &Error{Path: l.Path, What: "guest read", Offset: off, Err: err}
	default:
		err = corrupt(l.Path, "guest read", off, "%w", err)
	}
	if err == nil && len(q) < len(p) {
		err = io.EOF
	}
	return n, err
}

func isOSError(err error) bool {
	var pe *fs.PathError
	var errno syscall.Errno
	return errors.As(err, &pe) || errors.As(err, &errno)
}

// Allocated returns the guest byte ranges this layer holds itself, as
// `qemu-img map --output=json` reports them for this file (depth 0, present):
// data clusters, compressed clusters and zero-flagged clusters (a zero
// cluster in an overlay hides the layers below, so it is a change); with
// extended L2 entries, allocated and zero subclusters. Unallocated clusters,
// read from the backing file, are not in the set. A raw layer holds all of
// its size (holes included, as qemu-img map reports a raw file present
// everywhere). The L1 table was validated at Open; each L2 table is read
// with one bounded read and each entry is checked (cluster aligned, inside
// the file) before it is counted.
func (l *Layer) Allocated(ctx context.Context) (rangeset.Set, error) {
	if l.Format == Raw {
		var s rangeset.Set
		s.Add(0, l.VirtualSize)
		return s, nil
	}
	return allocated(ctx, l.Path, l.f, l.h, l.l1)
}

func (l *Layer) close() error {
	var err error
	l.once.Do(func() {
		if l.lib != nil {
			err = l.lib.Close() // closes l.f; the backing link is a no-op
		} else {
			err = l.f.Close()
		}
	})
	return err
}

// ReadAt reads the guest disk. Reads past Size return io.EOF as an
// io.SectionReader does. Safe for concurrent use.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	if im.cache != nil && off >= 0 && int64(len(p)) < im.cache.cluster {
		return im.cachedReadAt(p, off)
	}
	return im.layers[0].readAt(p, off)
}

// Size is the guest disk size in bytes (the top layer's virtual size).
func (im *Image) Size() int64 { return im.layers[0].VirtualSize }

// Format is the format of the top file.
func (im *Image) Format() Format { return im.layers[0].Format }

// Layers returns the chain: [0] is the file given to Open, the last is the
// base.
func (im *Image) Layers() []*Layer { return append([]*Layer(nil), im.layers...) }

// Close closes every file of the chain. It is safe to call more than once.
func (im *Image) Close() error {
	im.once.Do(func() {
		var errs []error
		for _, l := range im.layers {
			if err := l.close(); err != nil {
				errs = append(errs, err)
			}
		}
		im.err = errors.Join(errs...)
	})
	return im.err
}

// rawImage is a raw layer for go-qcow2reader and for Image.
type rawImage struct {
	f    *os.File
	size int64
}

func (r *rawImage) ReadAt(p []byte, off int64) (int, error) { return r.f.ReadAt(p, off) }
func (r *rawImage) Close() error                            { return nil }
func (r *rawImage) Type() image.Type                        { return image.Type(Raw) }
func (r *rawImage) Size() int64                             { return r.size }
func (r *rawImage) Readable() error                         { return nil }
func (r *rawImage) Extent(start, length int64) (image.Extent, error) {
	return image.Extent{Start: start, Length: length, Allocated: true}, nil
}

// link is the backing image handed to go-qcow2reader: the validated layer
// below, read through its own bounds checks. Closing it is a no-op; Image
// closes every layer once.
type link struct{ l *Layer }

func (k link) ReadAt(p []byte, off int64) (int, error) { return k.l.readAt(p, off) }
func (k link) Close() error                            { return nil }
func (k link) Type() image.Type                        { return image.Type(k.l.Format) }
func (k link) Size() int64                             { return k.l.VirtualSize }
func (k link) Readable() error                         { return nil }
func (k link) Extent(start, length int64) (image.Extent, error) {
	return image.Extent{}, fmt.Errorf("%w: extents of a backing layer", ErrUnsupported)
}

// emptyImage is a zero-length disk: everything reads as zeros past its end.
type emptyImage struct{}

func (emptyImage) ReadAt(p []byte, off int64) (int, error) { return 0, io.EOF }
func (emptyImage) Close() error                            { return nil }
func (emptyImage) Type() image.Type                        { return image.Type(Raw) }
func (emptyImage) Size() int64                             { return 0 }
func (emptyImage) Readable() error                         { return nil }
func (emptyImage) Extent(start, length int64) (image.Extent, error) {
	return image.Extent{Start: start, Length: length, Zero: true}, nil
}

// failImage is a backing image that cannot be read.
type failImage struct{ err error }

func (f failImage) ReadAt(p []byte, off int64) (int, error) { return 0, f.err }
func (f failImage) Close() error                            { return nil }
func (f failImage) Type() image.Type                        { return image.Type(Raw) }
func (f failImage) Size() int64                             { return 0 }
func (f failImage) Readable() error                         { return f.err }
func (f failImage) Extent(start, length int64) (image.Extent, error) {
	return image.Extent{}, f.err
}
