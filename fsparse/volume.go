package fsparse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/vmerr"
)

// Volume is one filesystem of a disk: its own address space (Device, the
// volume's bytes from offset 0), where those bytes lie on the disk
// (Segments), and its Filesystem.
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

	// FS is the volume's filesystem.
	FS Filesystem `json:"-"`
	// Device is the volume's bytes.
	Device *io.SectionReader `json:"-"`
	// Segments place the volume's bytes on the disk, in volume order: one
	// for a partition, several for a logical volume made of extents.
	Segments []Segment `json:"-"`
}

// Segment is a run of a volume's bytes on the disk: volume offsets
// [Off, Off+Len) are disk offsets [DiskOff, DiskOff+Len). Image names
// another disk of the machine when the run lies there (an LV spanning
// disks, see WithPVDisks); "" is this disk.
type Segment struct {
	Off, DiskOff, Len int64
	Image             string
}

// FromDisk translates disk byte ranges into the volume's byte ranges (the
// parts of r that hold the volume), for the dirty-file mapper.
func (v *Volume) FromDisk(r rangeset.Set) rangeset.Set {
	var out rangeset.Set
	for _, s := range v.Segments {
		if s.Image != "" {
			continue
		}
		for _, x := range r.Clip(s.DiskOff, s.DiskOff+s.Len).Ranges() {
			out.Add(x.Start-s.DiskOff+s.Off, x.End-s.DiskOff+s.Off)
		}
	}
	return out
}

// ToDisk translates the volume's byte ranges into disk byte ranges (those
// on this disk).
func (v *Volume) ToDisk(r rangeset.Set) rangeset.Set {
	var out rangeset.Set
	for _, s := range v.Segments {
		if s.Image != "" {
			continue
		}
		for _, x := range r.Clip(s.Off, s.Off+s.Len).Ranges() {
			out.Add(x.Start-s.Off+s.DiskOff, x.End-s.Off+s.DiskOff)
		}
	}
	return out
}

// openVolume opens the filesystem of partition p, or returns nil, nil when
// the partition holds nothing this package recognises (empty, unknown).
func openVolume(r io.ReaderAt, p Partition) (*Volume, error) {
	dev := io.NewSectionReader(r, p.Start, p.Size)
	f, kind, err := detect(dev, 0)
	if err != nil {
		return nil, fmt.Errorf("probing the filesystem at offset %d: %w", p.Start, err)
	}
	switch {
	case f == nil && kind == "":
		return nil, nil
	case f == nil:
		return nil, fmt.Errorf("%s at offset %d: %w", kind, p.Start, ErrUnsupported)
	}
	fsys, err := f.Open(dev, p.Size)
	if err != nil {
		return nil, err
	}
	v := &Volume{ID: p.ID(), Partition: p, Device: dev, FS: fsys,
		Segments: []Segment{{Off: 0, DiskOff: p.Start, Len: p.Size}}}
	in := fsys.Info()
	v.Type, v.Label, v.UUID, v.BlockSize = in.Type, in.Label, in.UUID, in.BlockSize
	v.Blocks, v.Inodes, v.Features = in.Blocks, in.Inodes, in.Features
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

	// Stream names an NTFS alternate data stream: Path is then
	// "/dir/file:stream" and Ino the file's MFT record.
	Stream string `json:"stream,omitempty"`
	// FNTimes are the $FILE_NAME times of an NTFS file (Mtime, Atime,
	// Ctime and Crtime are its $STANDARD_INFORMATION times): the two sets
	// differ when the times were set by hand (timestomping).
	FNTimes *Times `json:"fn_times,omitempty"`
	// Attrs are the format's own file attributes that change how a file
	// reads ("compressed", "sparse", "encrypted", "reparse", "hidden",
	// "system", "readonly").
	Attrs []string `json:"attributes,omitempty"`
}

// Times is a second set of file times (NTFS $FILE_NAME).
type Times struct {
	Mtime  time.Time `json:"mtime"`
	Atime  time.Time `json:"atime"`
	Ctime  time.Time `json:"ctime"`
	Crtime time.Time `json:"crtime"`
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
	e, err := v.FS.Lstat(name)
	e.Volume = v.ID
	return e, err
}

// ReadDir lists directory name, sorted by name; "." and ".." are left out.
func (v *Volume) ReadDir(name string) ([]Entry, error) {
	out, err := v.FS.ReadDir(name)
	if err != nil {
		return nil, err
	}
	v.sortEntries(out)
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

// sortEntries sorts a listing by path and fills in the volume and the
// error strings.
func (v *Volume) sortEntries(out []Entry) {
	sortByPath(out)
	for i := range out {
		out[i].Volume = v.ID
		if out[i].Err != nil {
			out[i].ErrString = out[i].Err.Error()
		}
	}
}

// sortByPath sorts entries by path, stably, moving each entry (a large
// struct) at most once: the order is found on indices (ties kept in
// listing order), then applied cycle by cycle.
func sortByPath(out []Entry) {
	if slices.IsSortedFunc(out, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) }) {
		return
	}
	idx := make([]int, len(out))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		if c := strings.Compare(out[a].Path, out[b].Path); c != 0 {
			return c
		}
		return a - b
	})
	// out[i] becomes the old out[idx[i]]; each step places one entry.
	for i := range out {
		if idx[i] == i {
			continue
		}
		tmp := out[i]
		j := i
		for idx[j] != i {
			k := idx[j]
			out[j] = out[k]
			idx[j] = j
			j = k
		}
		out[j] = tmp
		idx[j] = j
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
	w := &walker{seen: map[uint64]string{}}
	return v.walk(ctx, strings.TrimPrefix(start.Path, "/"), start, fn, w, 0)
}

// walker is the state of one Walk: the directories entered, and a listing
// buffer per depth, reused from one directory to the next.
type walker struct {
	seen map[uint64]string
	bufs [][]Entry
}

// listAppender is an InodeFS that lists into a slice it is given.
type listAppender interface {
	appendListing(out []Entry, ino uint64, dir, shown string) ([]Entry, error)
}

const maxDepth = 4096

// ErrDirLink is the error a walk reports for a directory reached a second
// time under another name (a hard link to a directory, which ext4 forbids):
// it is listed, not entered again.
var ErrDirLink = vmerr.New("fsparse: second name for a directory", vmerr.ErrCorrupt)

func (v *Volume) walk(ctx context.Context, name string, e Entry, fn WalkFunc, w *walker, depth int) error {
	seen := w.seen
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
	if x, ok := v.FS.(listAppender); ok && e.Ino != 0 {
		for len(w.bufs) <= depth {
			w.bufs = append(w.bufs, nil)
		}
		kids, err = x.appendListing(w.bufs[depth][:0], e.Ino, e.Path, e.Shown)
		if err == nil {
			w.bufs[depth] = kids
			v.sortEntries(kids)
		}
	} else if x, ok := v.FS.(InodeFS); ok && e.Ino != 0 {
		// By inode: a path may hold escaped names that no lookup finds.
		kids, err = x.ListInode(e.Ino, e.Path, e.Shown)
		if err == nil {
			v.sortEntries(kids)
		}
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
		if err := v.walk(ctx, strings.TrimPrefix(k.Path, "/"), k, fn, w, depth+1); err != nil {
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
func (v *Volume) Open(name string) (File, error) { return v.FS.OpenFile(name) }

// OpenInode returns the content of the regular file with inode ino, on a
// filesystem with inodes.
func (v *Volume) OpenInode(ino uint64) (File, error) {
	x, ok := v.FS.(InodeFS)
	if !ok {
		return nil, fmt.Errorf("fsparse: %s: %s has no inodes (inode %d)", v.ID, v.Type, ino)
	}
	return x.OpenInode(ino)
}
