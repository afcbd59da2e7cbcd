package fsparse

import (
	"context"
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
	"unicode/utf8"

	"github.com/diskfs/go-diskfs/filesystem/fat32"

	"github.com/vmscope/vmscope/fsparse/ext4"
	"github.com/vmscope/vmscope/vmerr"
)

// Volume is one filesystem of a disk.
type Volume struct {
	ID        string    `json:"id"` // "p1", or "disk" for a filesystem on the whole disk
	Partition Partition `json:"partition"`
	Type      string    `json:"type"` // "ext2", "ext3", "ext4", "vfat"
	Label     string    `json:"label,omitempty"`
	UUID      string    `json:"uuid,omitempty"`
	BlockSize int       `json:"block_size"`
	Blocks    uint64    `json:"blocks,omitempty"`
	Inodes    uint64    `json:"inodes,omitempty"`
	Features  []string  `json:"features,omitempty"`

	// FS is the volume's files through io/fs.
	FS fs.FS `json:"-"`
	// Ext4 is the ext parser when Type is ext2/3/4, for callers that need
	// inodes and extents; nil otherwise.
	Ext4 *ext4.FS `json:"-"`
	// Device is the partition's bytes.
	Device *io.SectionReader `json:"-"`

	fat *fatFS
}

// openVolume opens the filesystem of partition p, or returns nil, nil when
// the partition holds nothing this package reads (swap, LVM, empty...).
func openVolume(r io.ReaderAt, p Partition) (*Volume, error) {
	dev := io.NewSectionReader(r, p.Start, p.Size)
	kind, err := probe(dev, 0)
	if err != nil {
		return nil, fmt.Errorf("probing the filesystem at offset %d: %w", p.Start, err)
	}
	v := &Volume{ID: p.ID(), Partition: p, Device: dev}
	switch kind {
	case "ext":
		e, err := ext4.Open(dev, p.Size)
		if err != nil {
			return nil, err
		}
		sb := e.Super()
		v.Type = sb.Kind()
		v.Label = sb.Label
		v.UUID = sb.UUIDString()
		v.BlockSize = sb.BlockSize
		v.Blocks = sb.BlocksCount
		v.Inodes = uint64(sb.InodesCount)
		v.Features = sb.Features()
		v.FS = e
		v.Ext4 = e
	case "vfat":
		f, err := openFAT(dev, p.Size)
		if err != nil {
			return nil, err
		}
		v.Type = "vfat"
		v.Label = f.label
		v.UUID = f.serial
		v.BlockSize = f.clusterSize
		v.FS = f
		v.fat = f
	case "":
		return nil, nil
	default:
		return nil, fmt.Errorf("%s at offset %d: %w", kind, p.Start, ErrUnsupported)
	}
	return v, nil
}

// Entry is what ls shows of one file: the metadata every filesystem has,
// with zero values where a filesystem lacks a field (FAT has no inodes,
// owners or links).
type Entry struct {
	Volume    string      `json:"volume"`
	Path      string      `json:"path"` // absolute guest path, "/etc/passwd"
	Ino       uint64      `json:"inode"`
	Type      string      `json:"type"` // "file", "dir", "symlink", "fifo", "socket", "char", "block"
	Mode      fs.FileMode `json:"-"`
	Perm      string      `json:"mode"` // octal permission bits with setuid/setgid/sticky, "0755"
	Uid       uint32      `json:"uid"`
	Gid       uint32      `json:"gid"`
	Size      int64       `json:"size"`
	Links     uint32      `json:"links"`
	Mtime     time.Time   `json:"mtime"`
	Atime     time.Time   `json:"atime"`
	Ctime     time.Time   `json:"ctime"`
	Crtime    *time.Time  `json:"crtime,omitempty"`
	Target    string      `json:"target,omitempty"` // symlink target
	Err       error       `json:"-"`
	ErrString string      `json:"error,omitempty"`
	// Problem is set when the entry's name cannot be a path element (it
	// holds '/' or NUL, is empty, or is "." or ".." outside its slot): the
	// directory inode and the record's offset. Path then ends in the name
	// as EscapeName writes it.
	Problem *vmerr.Problem `json:"problem,omitempty"`
	// Shown is the path as ls -b shows it (every element through
	// EscapeName), set only when an element of Path is escaped: Path alone
	// cannot tell an escaped name from a name that holds the same
	// backslashes.
	Shown string `json:"-"`
}

// EscapeName writes a name that cannot be a path element as one that can,
// reversibly, with the escapes of ls -b: '\' becomes "\\"; '/', NUL,
// control bytes, DEL and bytes that are not UTF-8 become "\ooo" (three
// octal digits); a name made of dots only ("." or "..") has each dot
// written "\056"; the empty name is "\-". Every result is a valid, non-
// empty path element that is neither "." nor "..", and two different names
// never give the same result.
func EscapeName(name string) string {
	if name == "" {
		return `\-`
	}
	var b strings.Builder
	dots := strings.Trim(name, ".") == ""
	for i := 0; i < len(name); {
		r, n := utf8.DecodeRuneInString(name[i:])
		switch {
		case r == utf8.RuneError && n == 1, r < 0x20, r == 0x7f, r == '/', dots:
			fmt.Fprintf(&b, "\\%03o", name[i])
		case r == '\\':
			b.WriteString(`\\`)
		default:
			b.WriteString(name[i : i+n])
		}
		i += n
	}
	return b.String()
}

// TypeName names the file type bits of m as ls users expect.
func TypeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "dir"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "char"
	case m&fs.ModeDevice != 0:
		return "block"
	}
	return "file"
}

// UnixPerm is the octal permission word of m, with setuid/setgid/sticky.
func UnixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

func guestPath(name string) string {
	if name == "." {
		return "/"
	}
	return "/" + name
}

// Lstat describes the file at name without following a final symlink.
func (v *Volume) Lstat(name string) (Entry, error) {
	if v.Ext4 != nil {
		ino, err := v.Ext4.Lookup(name)
		if err != nil {
			return Entry{}, err
		}
		return v.extEntry(guestPath(name), ino)
	}
	fi, err := fs.Stat(v.FS, name)
	if err != nil {
		return Entry{}, err
	}
	return v.fatEntry(guestPath(name), fi), nil
}

func (v *Volume) extEntry(p string, ino uint32) (Entry, error) {
	in, err := v.Ext4.Inode(ino)
	if err != nil {
		return Entry{Volume: v.ID, Path: p, Ino: uint64(ino)}, err
	}
	m := in.FileMode()
	e := Entry{
		Volume: v.ID, Path: p, Ino: uint64(ino), Mode: m, Type: TypeName(m),
		Perm: fmt.Sprintf("%04o", UnixPerm(m)), Uid: in.Uid, Gid: in.Gid,
		Size: int64(in.Size), Links: uint32(in.Links),
		Mtime: in.Mtime, Atime: in.Atime, Ctime: in.Ctime,
	}
	if in.HasCrtime {
		t := in.Crtime
		e.Crtime = &t
	}
	if m&fs.ModeSymlink != 0 {
		t, err := v.Ext4.ReadlinkInode(ino)
		if err != nil {
			e.Err = err
		}
		e.Target = t
	}
	return e, nil
}

func (v *Volume) fatEntry(p string, fi fs.FileInfo) Entry {
	// FAT has no Unix modes; go-diskfs reports none. Show what the Linux
	// vfat driver shows with its default umask.
	m := fi.Mode()
	size := fi.Size()
	if fi.IsDir() {
		m, size = fs.ModeDir|0o755, 0
	} else if m.Perm() == 0 {
		m |= 0o644
	}
	return Entry{
		Volume: v.ID, Path: p, Mode: m, Type: TypeName(m),
		Perm: fmt.Sprintf("%04o", UnixPerm(m)), Size: size, Links: 1,
		Mtime: fi.ModTime(), Atime: fi.ModTime(), Ctime: fi.ModTime(),
	}
}

// ReadDir lists directory name, sorted by name; "." and ".." are left out.
func (v *Volume) ReadDir(name string) ([]Entry, error) {
	dir := guestPath(name)
	var out []Entry
	if v.Ext4 != nil {
		ino, err := v.Ext4.Lookup(name)
		if err != nil {
			return nil, err
		}
		return v.extReadDir(ino, dir, "")
	}
	ents, err := fs.ReadDir(v.FS, name)
	if err != nil {
		return nil, err
	}
	for _, de := range ents {
		e := Entry{Volume: v.ID, Path: path.Join(dir, de.Name())}
		fi, err := de.Info()
		if err != nil {
			e.Err = err
		} else {
			e = v.fatEntry(e.Path, fi)
		}
		out = append(out, e)
	}
	sortEntries(out)
	return out, nil
}

// extReadDir lists ext directory inode ino, whose path is dir (shown as
// shown when an element of dir is escaped, else ""). A name that cannot be a
// path element is never joined as it is: its entry's path ends in
// EscapeName(name) and carries the Problem.
func (v *Volume) extReadDir(ino uint32, dir, shown string) ([]Entry, error) {
	ents, err := v.Ext4.ReadDirInode(ino)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(ents))
	for _, de := range ents {
		name := de.Name
		var pb *vmerr.Problem
		if de.Problem != nil {
			name = EscapeName(name)
			var p vmerr.Problem
			if !errors.As(de.Problem, &p) {
				p = vmerr.Problem{Where: fmt.Sprintf("directory inode %d", ino), Offset: de.Offset, Err: de.Problem}
			}
			pb = &p
		}
		e, err := v.extEntry(path.Join(dir, name), de.Ino)
		if err != nil {
			e.Err = err
		}
		e.Problem = pb
		if pb != nil || shown != "" {
			sd := shown
			if sd == "" {
				sd = showPath(dir)
			}
			e.Shown = path.Join(sd, EscapeName(de.Name))
		}
		out = append(out, e)
	}
	sortEntries(out)
	return out, nil
}

// showPath is p with every element through EscapeName.
func showPath(p string) string {
	els := strings.Split(p, "/")
	for i, e := range els {
		if e != "" {
			els[i] = EscapeName(e)
		}
	}
	return strings.Join(els, "/")
}

func sortEntries(out []Entry) {
	sort.SliceStable(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	for i := range out {
		if out[i].Err != nil {
			out[i].ErrString = out[i].Err.Error()
		}
	}
}

// WalkFunc is called for every entry of a walk, in depth-first order of
// sorted names. A non-nil err means the entry's directory could not be read
// (the walk goes on with its siblings); returning an error stops the walk,
// and fs.SkipDir skips the entry's directory.
type WalkFunc func(e Entry, err error) error

// Walk visits root and everything below it. A directory that cannot be
// read is reported to fn with its error and the walk continues, as fls -r
// and find do. Directories are entered once per inode, so a corrupt tree
// that links a directory into itself cannot loop.
func (v *Volume) Walk(ctx context.Context, root string, fn WalkFunc) error {
	start, err := v.Lstat(root)
	if err != nil {
		return err
	}
	seen := map[uint64]string{}
	return v.walk(ctx, strings.TrimPrefix(start.Path, "/"), start, fn, seen, 0)
}

const maxDepth = 4096

// ErrDirLink is the error a walk reports for a directory reached a second
// time under another name (a hard link to a directory, which ext4 forbids):
// it is listed, not entered again.
var ErrDirLink = vmerr.New("fsparse: second name for a directory", vmerr.ErrCorrupt)

func (v *Volume) walk(ctx context.Context, name string, e Entry, fn WalkFunc, seen map[uint64]string, depth int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := fn(e, e.Err); err != nil {
		if errors.Is(err, fs.SkipDir) {
			return nil
		}
		return err
	}
	if e.Type != "dir" {
		return nil
	}
	if e.Ino != 0 {
		if first, ok := seen[e.Ino]; ok {
			if e.Problem != nil {
				return nil // reported already (a ".." in another slot)
			}
			err := fmt.Errorf("%w: directory inode %d is %s already", ErrDirLink, e.Ino, first)
			if err := fn(e, err); err != nil && !errors.Is(err, fs.SkipDir) {
				return err
			}
			return nil
		}
		seen[e.Ino] = e.Path
	}
	if depth >= maxDepth {
		return fn(e, fmt.Errorf("fsparse: %s: directory tree deeper than %d", e.Path, maxDepth))
	}
	if name == "" {
		name = "."
	}
	var kids []Entry
	var err error
	if v.Ext4 != nil && e.Ino != 0 && e.Ino <= uint64(^uint32(0)) {
		// By inode: a path may hold escaped names that no lookup finds.
		kids, err = v.extReadDir(uint32(e.Ino), e.Path, e.Shown)
	} else {
		kids, err = v.ReadDir(name)
	}
	if err != nil {
		if err := fn(e, err); err != nil && !errors.Is(err, fs.SkipDir) {
			return err
		}
		return nil
	}
	for _, k := range kids {
		if err := v.walk(ctx, strings.TrimPrefix(k.Path, "/"), k, fn, seen, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// File is a file's content: random access plus its size.
type File interface {
	io.ReaderAt
	Size() int64
}

// Open returns the content of the regular file at name.
func (v *Volume) Open(name string) (File, error) {
	if v.Ext4 != nil {
		ino, err := v.Ext4.Lookup(name)
		if err != nil {
			return nil, err
		}
		return v.OpenInode(uint64(ino))
	}
	return v.fat.openFile(name)
}

// OpenInode returns the content of the regular file with inode ino (ext only).
func (v *Volume) OpenInode(ino uint64) (File, error) {
	if v.Ext4 == nil || ino == 0 || ino > uint64(^uint32(0)) {
		return nil, fmt.Errorf("fsparse: %s: no inode %d", v.ID, ino)
	}
	in, err := v.Ext4.Inode(uint32(ino))
	if err != nil {
		return nil, err
	}
	if !in.IsRegular() {
		return nil, fmt.Errorf("fsparse: %s: inode %d is a %s, not a regular file", v.ID, ino, TypeName(in.FileMode()))
	}
	return v.Ext4.OpenInode(uint32(ino))
}

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

func openFAT(dev *io.SectionReader, size int64) (*fatFS, error) {
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

func (f *fatFS) Open(name string) (fs.File, error) {
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

func (f *fatFS) ReadDir(name string) ([]fs.DirEntry, error) {
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
	return ents, nil
}

func (f *fatFS) Stat(name string) (fs.FileInfo, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrInvalid}
	}
	if name == "." {
		return rootInfo{}, nil
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
	return fi, nil
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

func (f *fatFS) openFile(name string) (File, error) {
	fi, err := f.Stat(name)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("fsparse: %s: not a regular file", name)
	}
	file, err := f.Open(name)
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
