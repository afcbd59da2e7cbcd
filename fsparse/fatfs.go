package fsparse

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/diskfs/go-diskfs/filesystem/fat32"

	"github.com/vmscope/vmscope/fsparse/internal/fsfile"
)

// fatFS wraps go-diskfs's FAT32 reader: it implements fs.FS with io/fs
// paths, and ReaderAt access to files under a lock (go-diskfs files are
// Seek+Read only).
type fatFS struct {
	mu          sync.Mutex
	fs          *fat32.FileSystem
	label       string
	serial      string
	clusterSize int
}

// maxFATBytes caps the FAT that go-diskfs reads into memory in one piece.
const maxFATBytes = 512 << 20

func openFAT(dev io.ReaderAt, size int64) (*fatFS, error) {
	bs := make([]byte, 512)
	if _, err := dev.ReadAt(bs, 0); err != nil {
		return nil, fmt.Errorf("FAT boot sector: %w", err)
	}
	bps := int64(binary.LittleEndian.Uint16(bs[11:]))
	spc := int64(bs[13])
	reserved := int64(binary.LittleEndian.Uint16(bs[14:]))
	nfats := int64(bs[16])
	spf := int64(binary.LittleEndian.Uint32(bs[36:]))
	fsinfo := int64(binary.LittleEndian.Uint16(bs[48:]))
	switch {
	case bps != 512 && bps != 1024 && bps != 2048 && bps != 4096,
		spc == 0 || spc&(spc-1) != 0,
		nfats < 1 || nfats > 2, reserved == 0,
		spf == 0 || spf*bps > maxFATBytes || (reserved+nfats*spf)*bps > size,
		fsinfo == 0 || fsinfo >= reserved:
		return nil, fmt.Errorf("FAT32 boot sector at offset 0: %d bytes/sector, %d sectors/cluster, %d FATs of %d sectors: %w", bps, spc, nfats, spf, ErrCorrupt)
	}
	var f *fat32.FileSystem
	err := protect(func() error {
		var err error
		f, err = fat32.Read(newBackend(dev, size), size, 0, bps)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("FAT32: %v: %w", err, ErrCorrupt)
	}
	serial := binary.LittleEndian.Uint32(bs[67:])
	return &fatFS{
		fs:          f,
		label:       strings.TrimSpace(string(bs[71:82])),
		serial:      fmt.Sprintf("%04X-%04X", serial>>16, serial&0xffff),
		clusterSize: int(bps * spc),
	}, nil
}

// fatPath is the path go-diskfs takes: it speaks io/fs paths too.
func fatPath(name string) string { return name }

// Open implements fs.FS with files of our own: go-diskfs's own fs.File
// values are not io/fs conformant (a directory is not an fs.ReadDirFile).
func (f *fatFS) Open(name string) (fs.File, error) {
	fi, err := f.Stat(name)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		ents, err := f.readDir(name)
		if err != nil {
			return nil, err
		}
		return &fatDirFile{info: fi, ents: ents}, nil
	}
	rf, err := f.OpenFile(name)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return &fatOpenFile{SectionReader: io.NewSectionReader(rf, 0, rf.Size()), info: fi}, nil
}

// fatDirFile is an open FAT directory.
type fatDirFile struct {
	info fs.FileInfo
	ents []fs.DirEntry
	dir  fsfile.Dir
}

func (d *fatDirFile) Stat() (fs.FileInfo, error) { return d.info, nil }
func (d *fatDirFile) Close() error               { return nil }
func (d *fatDirFile) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.info.Name(), Err: errors.New("is a directory")}
}

func (d *fatDirFile) ReadDir(n int) ([]fs.DirEntry, error) {
	return d.dir.ReadDir(n, func() ([]fs.DirEntry, error) { return d.ents, nil })
}

// rawOpen opens name with go-diskfs.
func (f *fatFS) rawOpen(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var file fs.File
	err := protect(func() error {
		var err error
		file, err = f.fs.Open(fatPath(name))
		return err
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fmt.Errorf("%v: %w", err, fs.ErrNotExist)}
	}
	return file, nil
}

// fatOpenFile is an open FAT regular file.
type fatOpenFile struct {
	*io.SectionReader
	info fs.FileInfo
}

func (f *fatOpenFile) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *fatOpenFile) Close() error               { return nil }

func (f *fatFS) readDir(name string) ([]fs.DirEntry, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrInvalid}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var ents []fs.DirEntry
	err := protect(func() error {
		var err error
		ents, err = f.fs.ReadDir(fatPath(name))
		return err
	})
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fmt.Errorf("%v: %w", err, fs.ErrNotExist)}
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	for i := range ents {
		ents[i] = fatDirEntry{ents[i]}
	}
	return ents, nil
}

func (f *fatFS) Stat(name string) (fs.FileInfo, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrInvalid}
	}
	if name == "." {
		return rootInfo{}, nil
	}
	if strings.ContainsAny(name, "\\\x00") {
		// Not a FAT name character; go-diskfs would take \ as a separator.
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var fi fs.FileInfo
	err := protect(func() error {
		var err error
		fi, err = f.fs.Stat(fatPath(name))
		return err
	})
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fmt.Errorf("%v: %w", err, fs.ErrNotExist)}
	}
	return fatInfo{fi}, nil
}

// fatInfo fixes go-diskfs's FileInfo modes: FAT has no Unix modes, and
// go-diskfs reports a directory without fs.ModeDir. The mode shown is what
// the Linux vfat driver shows with its default umask; a directory's size
// is 0.
type fatInfo struct{ fs.FileInfo }

func (fi fatInfo) Mode() fs.FileMode {
	if fi.FileInfo.IsDir() {
		return fs.ModeDir | 0o755
	}
	m := fi.FileInfo.Mode()
	if m.Perm() == 0 {
		m |= 0o644
	}
	return m
}

func (fi fatInfo) Size() int64 {
	if fi.FileInfo.IsDir() {
		return 0
	}
	return fi.FileInfo.Size()
}

// fatDirEntry is a directory entry with a fatInfo.
type fatDirEntry struct{ fs.DirEntry }

func (e fatDirEntry) Type() fs.FileMode {
	if e.DirEntry.IsDir() {
		return fs.ModeDir
	}
	return e.DirEntry.Type() &^ fs.ModeDir
}

func (e fatDirEntry) Info() (fs.FileInfo, error) {
	fi, err := e.DirEntry.Info()
	if err != nil {
		return nil, err
	}
	return fatInfo{fi}, nil
}

type rootInfo struct{}

func (rootInfo) Name() string       { return "." }
func (rootInfo) Size() int64        { return 0 }
func (rootInfo) Mode() fs.FileMode  { return fs.ModeDir | 0o755 }
func (rootInfo) ModTime() time.Time { return time.Time{} }
func (rootInfo) IsDir() bool        { return true }
func (rootInfo) Sys() any           { return nil }

// fatFile gives ReaderAt access to a go-diskfs FAT file (Seek+Read) under
// the filesystem's lock.
type fatFile struct {
	f    *fatFS
	file io.ReadSeeker
	size int64
}

func (f *fatFS) OpenFile(name string) (File, error) {
	fi, err := f.Stat(name)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("fsparse: %s: not a regular file", name)
	}
	file, err := f.rawOpen(name)
	if err != nil {
		return nil, err
	}
	rs, ok := file.(io.ReadSeeker)
	if !ok {
		return nil, fmt.Errorf("fsparse: %s: FAT file does not seek", name)
	}
	return &fatFile{f: f, file: rs, size: fi.Size()}, nil
}

func (ff *fatFile) Size() int64 { return ff.size }

func (ff *fatFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fs.ErrInvalid
	}
	if off >= ff.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > ff.size-off {
		p = p[:ff.size-off]
	}
	ff.f.mu.Lock()
	defer ff.f.mu.Unlock()
	var n int
	err := protect(func() error {
		if _, err := ff.file.Seek(off, io.SeekStart); err != nil {
			return err
		}
		var err error
		n, err = io.ReadFull(ff.file, p)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("fsparse: FAT read at %d: %w", off, err)
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

func openFATFS(dev io.ReaderAt, size int64) (Filesystem, error) { return openFAT(dev, size) }

func (f *fatFS) Info() Info {
	return Info{Type: "vfat", Label: f.label, UUID: f.serial, BlockSize: f.clusterSize}
}

func (f *fatFS) Lstat(name string) (Entry, error) {
	fi, err := f.Stat(name)
	if err != nil {
		return Entry{}, err
	}
	return fatEntry(guestPath(name), fi), nil
}

func (f *fatFS) ReadDir(name string) ([]Entry, error) {
	ents, err := f.readDir(name)
	if err != nil {
		return nil, err
	}
	dir := guestPath(name)
	out := make([]Entry, 0, len(ents))
	for _, de := range ents {
		e := Entry{Path: path.Join(dir, de.Name())}
		fi, err := de.Info()
		if err != nil {
			e.Err = err
		} else {
			e = fatEntry(e.Path, fi)
		}
		out = append(out, e)
	}
	return out, nil
}

// fatEntry describes a FAT file. FAT has no Unix modes; go-diskfs reports
// none. Show what the Linux vfat driver shows with its default umask.
func fatEntry(p string, fi fs.FileInfo) Entry {
	m := fi.Mode()
	size := fi.Size()
	if fi.IsDir() {
		m, size = fs.ModeDir|0o755, 0
	} else if m.Perm() == 0 {
		m |= 0o644
	}
	return Entry{
		Path: p, Mode: m, Type: TypeName(m),
		Perm: fmt.Sprintf("%04o", UnixPerm(m)), Size: size, Links: 1,
		Mtime: fi.ModTime(), Atime: fi.ModTime(), Ctime: fi.ModTime(),
	}
}
