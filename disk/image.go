package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// DefaultMaxChainDepth is the default cap on the number of layers in a chain.
const DefaultMaxChainDepth = 64

// rawCacheUnit is the unit of the small-read cache over a layer without
// clusters (raw).
const rawCacheUnit = 64 << 10

type options struct {
	maxDepth      int
	refuseCorrupt bool
	name          string
}

// Option changes how Open and New work.
type Option func(*options)

// WithMaxChainDepth caps the number of layers (the top file counts as one);
// a deeper chain gives ErrChain. n < 1 is taken as 1.
func WithMaxChainDepth(n int) Option {
	return func(o *options) { o.maxDepth = max(n, 1) }
}

// WithRefuseCorrupt makes a format refuse, with ErrCorrupt, a layer whose
// header says it is corrupt (the qcow2 "corrupt" bit). By default such a
// layer is opened, as QEMU opens it read-only, and the format reports the
// bit.
func WithRefuseCorrupt() Option {
	return func(o *options) { o.refuseCorrupt = true }
}

// WithName names the top layer given to New (for errors and Layer.Name).
func WithName(name string) Option {
	return func(o *options) { o.name = name }
}

// Opener opens the backing file that the layer called from names ref (as
// written in its header): it resolves ref and returns the file's bytes,
// size and the name to give its layer. When the returned reader is an
// io.Closer, Image.Close closes it.
type Opener func(from, ref string) (Source, error)

// Image is a guest disk: the top layer of a chain, read with its backing
// chain merged, and the files to close. ReadAt is safe for concurrent use.
type Image struct {
	layers  []Layer
	cache   *clusterCache
	closers []io.Closer
	closed  atomic.Bool
	once    sync.Once
	err     error
}

// Open opens the image at path and its whole backing chain, every file
// O_RDONLY and only if it is a regular file or a block device. The format
// of each file is detected by content (or taken from its overlay's record);
// backing names resolve as QEMU resolves a plain file name: absolute as
// written, else relative to the directory of the overlay.
func Open(path string, opts ...Option) (*Image, error) {
	fo := &fileOpener{}
	src, err := fo.open(path)
	if err != nil {
		return nil, err
	}
	return build(src, fo.opener, fo.closeAll, opts)
}

// New reads the image in r (size bytes). opener resolves and opens backing
// files; nil refuses any (ErrChain). Closing the Image closes what opener
// returned, not r.
func New(r io.ReaderAt, size int64, opener Opener, opts ...Option) (*Image, error) {
	if size < 0 {
		return nil, Corrupt("", "size", -1, "negative size %d", size)
	}
	o := newOptions(opts)
	var mu sync.Mutex
	var opened []io.Closer
	op := opener
	if op == nil {
		op = func(from, ref string) (Source, error) {
			return Source{}, ChainError(from, "backing file "+ref, "no opener for backing files")
		}
	}
	wrapped := func(from, ref string) (Source, error) {
		s, err := op(from, ref)
		if c, ok := s.R.(io.Closer); ok && err == nil {
			mu.Lock()
			opened = append(opened, c)
			mu.Unlock()
		}
		return s, err
	}
	closeAll := func() []io.Closer { return opened }
	return build(Source{R: r, Size: size, Name: o.name}, wrapped, closeAll, opts)
}

func newOptions(opts []Option) options {
	o := options{maxDepth: DefaultMaxChainDepth}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

func build(src Source, opener Opener, closers func() []io.Closer, opts []Option) (*Image, error) {
	o := newOptions(opts)
	c := &Chain{o: &o, opener: opener}
	top, err := c.open(src, "")
	cl := closers()
	if err != nil {
		for _, x := range cl {
			x.Close()
		}
		return nil, err
	}
	im := &Image{closers: cl}
	for l := top; l != nil; l = l.Backing() {
		im.layers = append(im.layers, l)
	}
	unit := rawCacheUnit
	if cl, ok := top.(Clustered); ok && cl.ClusterBytes() > 0 {
		unit = cl.ClusterBytes()
	}
	im.cache = newClusterCache(unit)
	return im, nil
}

// Chain is handed to Format.Open: the options of the open and the way to
// the layer below.
type Chain struct {
	o      *options
	opener Opener
	names  []string // the layers above, top first
}

// RefuseCorrupt reports whether WithRefuseCorrupt was given.
func (c *Chain) RefuseCorrupt() bool { return c.o.refuseCorrupt }

// Backing opens the backing file that the layer called from names ref,
// with format (the overlay's record of it, "" to detect). The depth cap and
// loops are checked here; an error that is not already a categorized
// *Error of the file below is wrapped in ErrChain naming from and ref.
func (c *Chain) Backing(from, ref, format string) (Layer, error) {
	depth := len(c.names)
	if depth >= c.o.maxDepth {
		return nil, ChainError(from, "backing file "+ref, "chain deeper than %d layers", c.o.maxDepth)
	}
	src, err := c.opener(from, ref)
	if err != nil {
		return nil, wrapBelow(from, ref, err)
	}
	if slices.Contains(c.names, src.Name) {
		return nil, ChainError(from, "backing file "+ref, "loop: %s is already in the chain", src.Name)
	}
	below := &Chain{o: c.o, opener: c.opener, names: c.names}
	l, err := below.open(src, format)
	if err != nil {
		return nil, wrapBelow(from, ref, err)
	}
	return l, nil
}

// OpenFile opens a file that the layer called from names ref as a part of
// itself (a VMDK extent), read-only through the chain's opener, as
// Backing opens a backing file: ref is resolved relative to from, protocol
// and json: names are refused, and a file already in the chain (the
// layer's own file, a layer above, or, for Open, any file opened so far,
// by identity) is a loop (ErrChain). The file is closed with the Image.
func (c *Chain) OpenFile(from, ref string) (Source, error) {
	src, err := c.opener(from, ref)
	if err != nil {
		return Source{}, wrapBelow(from, ref, err)
	}
	if slices.Contains(c.names, src.Name) {
		return Source{}, ChainError(from, "file "+ref, "loop: %s is already in the chain", src.Name)
	}
	return src, nil
}

// wrapBelow keeps the error of a file below when it already names that
// file with a category (corrupt, unsupported, or a chain error of its own)
// and wraps any other (an OS error, a missing file) in ErrChain naming the
// overlay and its reference.
func wrapBelow(from, ref string, err error) error {
	var e *Error
	if errors.As(err, &e) && (errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnsupported) || errors.Is(err, ErrChain)) {
		return err
	}
	return ChainError(from, "backing file "+ref, "%w", err)
}

// open detects the format of src (or checks the recorded one) and opens it.
func (c *Chain) open(src Source, format string) (Layer, error) {
	c.names = append(slices.Clip(c.names), src.Name)
	var f Format
	switch format {
	case RawFormat:
		return NewRaw(src), nil
	case "":
		name, err := Detect(src.R, src.Size)
		if err != nil {
			return nil, &Error{Path: src.Name, What: "format", Offset: 0, Err: err}
		}
		if name == RawFormat {
			return NewRaw(src), nil
		}
		f, _ = lookup(name)
	default:
		var ok bool
		if f, ok = lookup(format); !ok {
			return nil, Unsupported(src.Name, "backing format", -1, "backing format %q", format)
		}
		var head [HeadSize]byte
		n, err := src.R.ReadAt(head[:], 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, &Error{Path: src.Name, What: "header", Offset: 0, Err: err}
		}
		tail, ok := readTail(src.R, src.Size)
		if !f.Match(head[:n]) && (f.MatchTail == nil || !ok || !f.MatchTail(tail)) {
			return nil, Corrupt(src.Name, "header", 0, "recorded as %s by its overlay but has no %s header", format, format)
		}
	}
	return f.Open(src, c)
}

// fileOpener opens image files read-only and remembers them, for loop
// checks by file identity and for Close.
type fileOpener struct {
	mu    sync.Mutex
	files []*os.File
	stats []os.FileInfo
}

func (fo *fileOpener) closeAll() []io.Closer {
	fo.mu.Lock()
	defer fo.mu.Unlock()
	out := make([]io.Closer, len(fo.files))
	for i, f := range fo.files {
		out[i] = f
	}
	return out
}

// opener resolves ref from the overlay from and opens it.
func (fo *fileOpener) opener(from, ref string) (Source, error) {
	p, err := ResolveBacking(from, ref)
	if err != nil {
		return Source{}, err
	}
	fo.mu.Lock()
	n := len(fo.stats)
	fo.mu.Unlock()
	src, err := fo.open(p)
	if err != nil {
		return src, err
	}
	fo.mu.Lock()
	defer fo.mu.Unlock()
	st := fo.stats[len(fo.stats)-1]
	for _, prev := range fo.stats[:n] {
		if os.SameFile(prev, st) {
			return Source{}, ChainError(from, "backing file "+ref, "loop: %s is already in the chain", src.Name)
		}
	}
	return src, nil
}

// open opens one file O_RDONLY if it is a regular file or a block device
// (a hostile backing name must not make Open block on a FIFO or a
// terminal, or read a character device).
func (fo *fileOpener) open(path string) (Source, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Source{}, &Error{Path: path, What: "path", Offset: -1, Err: err}
	}
	okMode := func(m fs.FileMode) bool { return m.IsRegular() || (m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0) }
	if st, err := os.Stat(abs); err == nil && !okMode(st.Mode()) {
		return Source{}, Unsupported(abs, "open", -1, "not a regular file or block device (%s)", st.Mode().Type())
	}
	f, err := os.OpenFile(abs, os.O_RDONLY, 0)
	if err != nil {
		return Source{}, &Error{Path: abs, What: "open", Offset: -1, Err: err}
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return Source{}, &Error{Path: abs, What: "stat", Offset: -1, Err: err}
	}
	if !okMode(st.Mode()) {
		f.Close()
		return Source{}, Unsupported(abs, "open", -1, "not a regular file or block device (%s)", st.Mode().Type())
	}
	// The size of a regular file or of a block device.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return Source{}, &Error{Path: abs, What: "size", Offset: -1, Err: err}
	}
	fo.mu.Lock()
	fo.files = append(fo.files, f)
	fo.stats = append(fo.stats, st)
	fo.mu.Unlock()
	return Source{R: f, Size: size, Name: abs}, nil
}

// ResolveBacking resolves a backing file name as QEMU does for a plain
// file: absolute as written, relative to the directory of the overlay.
// json: specifications and protocols (nbd:, http: ...) are refused.
func ResolveBacking(overlay, ref string) (string, error) {
	if strings.HasPrefix(ref, "json:") {
		return "", Unsupported(overlay, "backing file name", -1, "json: backing specification %q", ref)
	}
	if i := strings.IndexByte(ref, ':'); i > 0 && !strings.ContainsRune(ref[:i], '/') {
		return "", Unsupported(overlay, "backing file name", -1, "backing file %q uses protocol %q", ref, ref[:i])
	}
	if strings.IndexByte(ref, 0) >= 0 {
		return "", Corrupt(overlay, "backing file name", -1, "NUL byte in %q", ref)
	}
	if filepath.IsAbs(ref) {
		return ref, nil
	}
	return filepath.Join(filepath.Dir(overlay), ref), nil
}

// ReadAt reads the guest disk. Reads past Size return io.EOF as an
// io.SectionReader does. Safe for concurrent use.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	if im.closed.Load() {
		return 0, &Error{Path: im.layers[0].Name(), What: "guest read", Offset: off, Err: os.ErrClosed}
	}
	if off >= 0 && int64(len(p)) < im.cache.cluster {
		return im.cachedReadAt(p, off)
	}
	return im.layers[0].ReadAt(p, off)
}

// ReadAtDirect is ReadAt for a read the caller makes once and whose
// neighbours it does not read next (a directory of a walk): on a
// raw image it goes straight to the file, so a short read costs its own
// bytes, not a cache unit's. On an image with clusters (where a cluster
// may cost a decompression) it is ReadAt. Safe for concurrent use.
func (im *Image) ReadAtDirect(p []byte, off int64) (int, error) {
	if _, ok := im.layers[0].(*Raw); !ok || im.closed.Load() {
		return im.ReadAt(p, off)
	}
	return im.layers[0].ReadAt(p, off)
}

// Size is the guest disk size in bytes (the top layer's).
func (im *Image) Size() int64 { return im.layers[0].Size() }

// Format is the format of the top file.
func (im *Image) Format() string { return im.layers[0].Format() }

// Top is the top layer (the file given to Open).
func (im *Image) Top() Layer { return im.layers[0] }

// Layers returns the chain: [0] is the top, the last is the base.
func (im *Image) Layers() []Layer { return slices.Clone(im.layers) }

// DataRanges returns guest byte ranges outside which the disk reads as
// zeros: the union of what every layer may hold (DataLayer.DataRanges when
// a layer has it, else Allocated). It may say more than there is (a file
// system that does not report holes makes a raw layer all data), never
// less. A reader of the whole disk (the block-hash index) skips the rest.
func (im *Image) DataRanges(ctx context.Context) (rangeset.Set, error) {
	var out rangeset.Set
	for _, l := range im.layers {
		var s rangeset.Set
		var err error
		if d, ok := l.(DataLayer); ok {
			s, err = d.DataRanges(ctx)
		} else {
			s, err = l.Allocated(ctx)
		}
		if err != nil {
			return out, err
		}
		out = rangeset.Union(out, s)
	}
	return out.Clip(0, im.Size()), nil
}

// Close closes every file of the chain. It is safe to call more than once.
func (im *Image) Close() error {
	im.once.Do(func() {
		im.closed.Store(true)
		var errs []error
		for _, c := range im.closers {
			if err := c.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		im.err = errors.Join(errs...)
	})
	return im.err
}

// String names the chain, top first.
func (im *Image) String() string {
	var b strings.Builder
	for i, l := range im.layers {
		if i > 0 {
			b.WriteString(" <- ")
		}
		fmt.Fprintf(&b, "%s (%s)", l.Name(), l.Format())
	}
	return b.String()
}
