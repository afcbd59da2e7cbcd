package xfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vmscope/vmscope/fsparse/internal/fsfile"
)

// File is an open inode. It implements fs.File, fs.ReadDirFile (for
// directories), io.ReaderAt, io.Reader and io.Seeker. ReadAt is safe for
// concurrent use; Read, Seek and ReadDir keep a position and are not.
// Reading a regular file gives its data (holes and unwritten extents read
// as zeros); reading a symlink gives its target; reading a directory,
// device, FIFO or socket gives nothing.
type File struct {
	fsys *FS
	in   *Inode
	name string
	size int64
	ext  []Extent
	data []byte
	mem  bool // data holds the content

	cur fsfile.Cursor
	dir fsfile.Dir
}

// OpenInode opens inode ino for reading.
func (f *FS) OpenInode(ino uint64) (*File, error) {
	in, err := f.Inode(ino)
	if err != nil {
		return nil, err
	}
	return f.openInode(in, "")
}

func (f *FS) openInode(in *Inode, name string) (*File, error) {
	fl := &File{fsys: f, in: in, name: name}
	switch {
	case in.IsSymlink():
		t, err := f.Readlink(in)
		if err != nil {
			return nil, err
		}
		fl.data, fl.mem = []byte(t), true
	case in.IsRegular() && in.Format == fmtLocal:
		fl.data, fl.mem = in.data[:in.Size], true
	case in.IsRegular():
		if in.Size > 1<<62 {
			return nil, inoErr(in.Ino, in.off+56, "size %d", in.Size)
		}
		m, err := f.mapFork(in)
		if err != nil {
			return nil, err
		}
		fl.ext, fl.size = m.ext, int64(in.Size)
	default: // directories, devices, FIFOs, sockets: no data here
		fl.mem = true
	}
	if fl.mem {
		fl.size = int64(len(fl.data))
	}
	return fl, nil
}

// Inode returns the file's inode. The caller must not modify it.
func (fl *File) Inode() *Inode { return fl.in }

// Size is the number of bytes Read delivers.
func (fl *File) Size() int64 { return fl.size }

// Extents returns the file's data block map (nil for in-inode data).
func (fl *File) Extents() []Extent { return fl.ext }

// Stat describes the file (not a symlink's target).
func (fl *File) Stat() (fs.FileInfo, error) {
	return fileInfo{name: fl.name, in: fl.in, size: fl.size}, nil
}

// Close does nothing; a File holds no resources.
func (fl *File) Close() error { return nil }

// ReadAt reads len(p) bytes at off.
func (fl *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &fs.PathError{Op: "read", Path: fl.name, Err: fs.ErrInvalid}
	}
	if off >= fl.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > fl.size-off {
		p = p[:fl.size-off]
		eof = io.EOF
	}
	if fl.mem {
		copy(p, fl.data[off:])
		return len(p), eof
	}
	if err := fl.readMapped(p, uint64(off)); err != nil {
		return 0, err
	}
	return len(p), eof
}

func (fl *File) readMapped(p []byte, off uint64) error {
	f := fl.fsys
	bs := uint64(f.bs)
	ext := fl.ext
	i := sort.Search(len(ext), func(i int) bool { return (ext[i].Logical+ext[i].Len)*bs > off })
	for len(p) > 0 {
		if i >= len(ext) || ext[i].Logical*bs >= off+uint64(len(p)) {
			clear(p)
			return nil
		}
		e := ext[i]
		start := e.Logical * bs
		if start > off { // a hole before the extent
			n := start - off
			clear(p[:n])
			p, off = p[n:], start
			continue
		}
		n := min(uint64(len(p)), start+e.Len*bs-off)
		if e.Unwritten {
			clear(p[:n])
		} else {
			dev := e.Physical*bs + (off - start)
			if err := f.readAt(p[:n], int64(dev)); err != nil {
				return fmt.Errorf("xfs: data of inode %d at block %d: %w", fl.in.Ino, dev/bs, err)
			}
		}
		p, off = p[n:], off+n
		i++
	}
	return nil
}

// Read reads from the current position.
func (fl *File) Read(p []byte) (int, error) { return fl.cur.Read(p, fl.size, fl.ReadAt) }

// Seek sets the position for Read.
func (fl *File) Seek(offset int64, whence int) (int64, error) {
	return fl.cur.SeekIn(offset, whence, fl.size, fl.name)
}

// ReadDir lists a directory as fs.ReadDirFile does, in on-disk order.
func (fl *File) ReadDir(n int) ([]fs.DirEntry, error) {
	if !fl.in.IsDir() {
		return nil, &fs.PathError{Op: "readdir", Path: fl.name, Err: ErrNotDir}
	}
	return fl.dir.ReadDir(n, func() ([]fs.DirEntry, error) {
		ents, err := fl.fsys.readDir(fl.in)
		if err != nil {
			return nil, &fs.PathError{Op: "readdir", Path: fl.name, Err: err}
		}
		out := make([]fs.DirEntry, 0, len(ents))
		for _, e := range ents {
			if e.Problem == nil {
				out = append(out, dirEntry{fsys: fl.fsys, e: e})
			}
		}
		return out, nil
	})
}

type fileInfo struct {
	name string
	in   *Inode
	size int64
}

func (fi fileInfo) Name() string       { return fi.name }
func (fi fileInfo) Size() int64        { return fi.size }
func (fi fileInfo) Mode() fs.FileMode  { return fi.in.FileMode() }
func (fi fileInfo) ModTime() time.Time { return fi.in.Mtime }
func (fi fileInfo) IsDir() bool        { return fi.in.IsDir() }
func (fi fileInfo) Sys() any           { return fi.in }

type dirEntry struct {
	fsys *FS
	e    DirEntry
}

func (d dirEntry) Name() string { return d.e.Name }
func (d dirEntry) IsDir() bool  { return d.Type().IsDir() }
func (d dirEntry) Type() fs.FileMode {
	if d.e.TypeKnown {
		return d.e.Type
	}
	in, err := d.fsys.Inode(d.e.Ino)
	if err != nil {
		return fs.ModeIrregular
	}
	return in.FileMode().Type()
}
func (d dirEntry) Info() (fs.FileInfo, error) {
	in, err := d.fsys.Inode(d.e.Ino)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: d.e.Name, Err: err}
	}
	fi, err := d.fsys.statFile(in, d.e.Name)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: d.e.Name, Err: err}
	}
	return fi, nil
}
func (d dirEntry) String() string { return fs.FormatDirEntry(d) }

// statFile describes in; its size is what Open+Read delivers.
func (f *FS) statFile(in *Inode, name string) (fs.FileInfo, error) {
	if in.IsRegular() {
		return fileInfo{name: name, in: in, size: int64(min(in.Size, 1<<62))}, nil
	}
	fl, err := f.openInode(in, name)
	if err != nil {
		return nil, err
	}
	return fl.Stat()
}

func baseName(name string) string {
	if name == "." {
		return "."
	}
	return path.Base(name)
}

// Open opens the named file (fs.FS). It follows no symlinks: opening a
// symlink gives a file whose content is the link target.
func (f *FS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	in, err := f.lookup("open", name)
	if err != nil {
		return nil, err
	}
	fl, err := f.openInode(in, baseName(name))
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return fl, nil
}

// Stat describes the named file without following a final symlink.
func (f *FS) Stat(name string) (fs.FileInfo, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrInvalid}
	}
	in, err := f.lookup("stat", name)
	if err != nil {
		return nil, err
	}
	fi, err := f.statFile(in, baseName(name))
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	return fi, nil
}

// Lstat is Stat (fs.ReadLinkFS).
func (f *FS) Lstat(name string) (fs.FileInfo, error) {
	fi, err := f.Stat(name)
	var pe *fs.PathError
	if errors.As(err, &pe) {
		pe.Op = "lstat"
	}
	return fi, err
}

// ReadLink returns the target of the named symlink (fs.ReadLinkFS).
func (f *FS) ReadLink(name string) (string, error) {
	if !fs.ValidPath(name) {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}
	in, err := f.lookup("readlink", name)
	if err != nil {
		return "", err
	}
	if !in.IsSymlink() {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}
	t, err := f.Readlink(in)
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: err}
	}
	return t, nil
}

// ReadDir lists the named directory sorted by name (fs.ReadDirFS).
func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrInvalid}
	}
	in, err := f.lookup("readdir", name)
	if err != nil {
		return nil, err
	}
	if !in.IsDir() {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: ErrNotDir}
	}
	ents, err := f.readDir(in)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	out := make([]fs.DirEntry, 0, len(ents))
	for _, e := range ents {
		if e.Problem == nil {
			out = append(out, dirEntry{fsys: f, e: e})
		}
	}
	slices.SortFunc(out, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return out, nil
}

var (
	_ fs.FS          = (*FS)(nil)
	_ fs.ReadDirFS   = (*FS)(nil)
	_ fs.StatFS      = (*FS)(nil)
	_ fs.ReadLinkFS  = (*FS)(nil)
	_ fs.ReadDirFile = (*File)(nil)
	_ io.ReaderAt    = (*File)(nil)
	_ io.Seeker      = (*File)(nil)
)
