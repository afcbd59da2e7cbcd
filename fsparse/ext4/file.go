package ext4

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
// Reading a directory gives its raw blocks; reading a symlink gives its
// target; reading a device, FIFO or socket gives nothing.
type File struct {
	fsys *FS
	in   *Inode
	name string
	size int64
	ext  []Extent
	data []byte // inline data or fast symlink target
	mem  bool   // data holds the content

	cur fsfile.Cursor
	dir fsfile.Dir
}

// OpenInode opens inode ino for reading.
func (f *FS) OpenInode(ino uint32) (*File, error) {
	in, err := f.Inode(ino)
	if err != nil {
		return nil, err
	}
	return f.openInode(in, "")
}

func (f *FS) openInode(in *Inode, name string) (*File, error) {
	fl := &File{fsys: f, in: in, name: name}
	switch {
	case in.HasInlineData():
		d, err := f.inlineData(in)
		if err != nil {
			return nil, err
		}
		fl.data, fl.mem = d, true
	case f.isFastSymlink(in):
		fl.data, fl.mem = in.block[:in.Size], true
	case f.hasBlockMap(in):
		m, err := f.mapInode(in)
		if err != nil {
			return nil, err
		}
		fl.ext = m.ext
	default: // devices, FIFOs, sockets: no data
		fl.mem = true
	}
	if fl.mem {
		fl.size = int64(len(fl.data))
	} else {
		if err := f.checkSize(in); err != nil {
			return nil, err
		}
		fl.size = int64(in.Size)
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

// ReadAt reads len(p) bytes at off; holes and unwritten extents read as
// zeros.
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
	bs := f.bs
	ext := fl.ext
	// First extent ending after off.
	i := sort.Search(len(ext), func(i int) bool { return (ext[i].Logical+ext[i].Len)*bs > off })
	for len(p) > 0 {
		if i >= len(ext) || ext[i].Logical*bs >= off+uint64(len(p)) {
			clear(p)
			return nil
		}
		e := ext[i]
		start := e.Logical * bs
		if start > off { // hole before the extent
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
				return fmt.Errorf("ext4: data of inode %d at block %d: %w", fl.in.Ino, dev/bs, err)
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
		ents, err := fl.fsys.ReadDirInode(fl.in.Ino)
		if err != nil {
			return nil, &fs.PathError{Op: "readdir", Path: fl.name, Err: err}
		}
		out := make([]fs.DirEntry, 0, len(ents))
		for _, e := range ents {
			if e.Problem == nil { // io/fs cannot name it (see DirEntry.Problem)
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

func (f *FS) info(in *Inode, name string) fileInfo {
	size := int64(in.Size)
	if in.Size > 1<<62 {
		size = 1 << 62
	}
	return fileInfo{name: name, in: in, size: size}
}

type dirEntry struct {
	fsys *FS
	e    DirEntry
}

func (d dirEntry) Name() string      { return d.e.Name }
func (d dirEntry) IsDir() bool       { return d.e.Type.IsDir() }
func (d dirEntry) Type() fs.FileMode { return d.e.Type }
func (d dirEntry) Info() (fs.FileInfo, error) {
	in, err := d.fsys.Inode(d.e.Ino)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: d.e.Name, Err: err}
	}
	fl, err := d.fsys.statFile(in, d.e.Name)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: d.e.Name, Err: err}
	}
	return fl, nil
}
func (d dirEntry) String() string { return fs.FormatDirEntry(d) }

// statFile builds the FileInfo of in; its size is what Open+Read delivers
// (for inline and fast-symlink inodes, the in-inode bytes).
func (f *FS) statFile(in *Inode, name string) (fs.FileInfo, error) {
	if in.HasInlineData() || f.isFastSymlink(in) || !f.hasBlockMap(in) {
		fl, err := f.openInode(in, name)
		if err != nil {
			return nil, err
		}
		return fl.Stat()
	}
	return f.info(in, name), nil
}

func baseName(name string) string {
	if name == "." {
		return "."
	}
	return path.Base(name)
}

func (f *FS) checkIOFSPath(op, name string) error {
	if !fs.ValidPath(name) {
		return &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	return nil
}

// Open opens the named file (fs.FS). It follows no symlinks: opening a
// symlink gives a file whose content is the link target.
func (f *FS) Open(name string) (fs.File, error) {
	if err := f.checkIOFSPath("open", name); err != nil {
		return nil, err
	}
	_, in, err := f.lookup("open", name)
	if err != nil {
		return nil, err
	}
	fl, err := f.openInode(in, baseName(name))
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return fl, nil
}

// Stat describes the named file without following a symlink at any path
// element (it is Lstat).
func (f *FS) Stat(name string) (fs.FileInfo, error) {
	if err := f.checkIOFSPath("stat", name); err != nil {
		return nil, err
	}
	_, in, err := f.lookup("stat", name)
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
	if err := f.checkIOFSPath("readlink", name); err != nil {
		return "", err
	}
	return f.Readlink(name)
}

// ReadDir lists the named directory sorted by name (fs.ReadDirFS).
func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	if err := f.checkIOFSPath("readdir", name); err != nil {
		return nil, err
	}
	ino, in, err := f.lookup("readdir", name)
	if err != nil {
		return nil, err
	}
	if !in.IsDir() {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: ErrNotDir}
	}
	ents, err := f.ReadDirInode(ino)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	out := make([]fs.DirEntry, 0, len(ents))
	for _, e := range ents {
		if e.Problem == nil { // io/fs cannot name it (see DirEntry.Problem)
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
