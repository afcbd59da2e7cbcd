package ntfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/internal/fsfile"
	"github.com/vmscope/vmscope/vmerr"
)

// Reparse tags that are links.
const (
	tagMountPoint = 0xA0000003
	tagSymlink    = 0xA000000C
)

// SI file attribute flags.
var attrNames = []struct {
	bit  uint32
	name string
}{
	{0x0001, "readonly"}, {0x0002, "hidden"}, {0x0004, "system"}, {0x0200, "sparse"},
	{0x0400, "reparse"}, {0x0800, "compressed"}, {0x4000, "encrypted"},
}

// listing caches the last directory listings (lookups walk them).
func (f *FS) listing(num uint64) ([]DirEntry, error) {
	f.mu.Lock()
	if f.dirs == nil {
		f.dirs = map[uint64][]DirEntry{}
	}
	if d, ok := f.dirs[num]; ok {
		f.mu.Unlock()
		return d, nil
	}
	f.mu.Unlock()
	d, err := f.ReadIndex(num)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	if len(f.dirs) > 256 {
		clear(f.dirs)
	}
	f.dirs[num] = d
	f.mu.Unlock()
	return d, nil
}

// target is what a path names: a record, one of its $FILE_NAMEs, and a
// stream ("" for the unnamed one).
type target struct {
	rec    uint64
	fn     *FileName
	stream string
	hasStr bool
}

// resolve finds the record (and stream) of io/fs path name.
func (f *FS) resolve(name string) (target, error) {
	if name == "." {
		return target{rec: RootRecord}, nil
	}
	if !fs.ValidPath(name) {
		return target{}, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	els := strings.Split(name, "/")
	cur := target{rec: RootRecord}
	for i, el := range els {
		de, err := f.lookup(cur.rec, el)
		if err != nil && i == len(els)-1 {
			if k := strings.IndexByte(el, ':'); k > 0 {
				if de2, err2 := f.lookup(cur.rec, el[:k]); err2 == nil {
					fn := de2.FileName
					return target{rec: de2.Record, fn: &fn, stream: el[k+1:], hasStr: true}, nil
				}
			}
		}
		if err != nil {
			return target{}, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		fn := de.FileName
		cur = target{rec: de.Record, fn: &fn}
	}
	return cur, nil
}

// lookup finds name in directory record dir: the exact name, else the one
// name that equals it ignoring case (NTFS's Win32 names do).
func (f *FS) lookup(dir uint64, name string) (DirEntry, error) {
	ents, err := f.listing(dir)
	if err != nil {
		return DirEntry{}, err
	}
	if dir == RootRecord && (name == "." || name == "..") {
		return DirEntry{}, fs.ErrNotExist
	}
	var fold *DirEntry
	for i := range ents {
		e := &ents[i]
		if dir == RootRecord && hiddenMeta(e) {
			continue
		}
		if e.Name == name {
			return *e, nil
		}
		if fold == nil && strings.EqualFold(e.Name, name) {
			fold = e
		}
	}
	if fold != nil {
		return *fold, nil
	}
	return DirEntry{}, fs.ErrNotExist
}

// hiddenMeta: root entries that name metadata files, and the root itself.
func hiddenMeta(e *DirEntry) bool {
	return e.Record < firstUser || e.Record == RootRecord
}

// Lstat describes the file at name (a "file:stream" name describes the
// stream).
func (f *FS) Lstat(name string) (fsparse.Entry, error) {
	t, err := f.resolve(name)
	if err != nil {
		return fsparse.Entry{}, err
	}
	x, err := f.file(t.rec)
	if err != nil {
		return fsparse.Entry{Path: guestPath(name), Ino: t.rec}, err
	}
	if t.hasStr {
		s := x.stream(t.stream)
		if s == nil {
			return fsparse.Entry{}, &fs.PathError{Op: "lstat", Path: name, Err: fs.ErrNotExist}
		}
		base := guestPath(name)
		return f.streamEntry(strings.TrimSuffix(base, ":"+t.stream), x, s, t.fn), nil
	}
	return f.entry(guestPath(name), x, t.fn), nil
}

func guestPath(name string) string {
	if name == "." {
		return "/"
	}
	return "/" + name
}

// StatInode describes MFT record ino under path p.
func (f *FS) StatInode(p string, ino uint64) (fsparse.Entry, error) {
	x, err := f.file(ino)
	if err != nil {
		return fsparse.Entry{Path: p, Ino: ino}, err
	}
	return f.entry(p, x, nil), nil
}

// entry describes file x found at path p under name fn (nil: its first
// name).
func (f *FS) entry(p string, x *File, fn *FileName) fsparse.Entry {
	e := fsparse.Entry{Path: p, Ino: x.Rec.Num}
	names := x.Names()
	links := 0
	for i := range names {
		if names[i].Namespace != 2 {
			links++
			if fn == nil {
				fn = &names[i]
			}
		}
	}
	e.Links = uint32(links)
	si, flags, ok := x.StdInfo()
	if ok {
		e.Mtime, e.Atime, e.Ctime = si.Mtime, si.Atime, si.Ctime
		c := si.Crtime
		e.Crtime = &c
	} else {
		e.Err = corrupt(fmt.Sprintf("MFT record %d", x.Rec.Num), -1, "no $STANDARD_INFORMATION")
	}
	// The times of the record's own $FILE_NAME for this name (the copy in
	// the directory index may have been updated with the
	// $STANDARD_INFORMATION times, as ntfs-3g does).
	if fn != nil {
		for i := range names {
			if names[i].Parent == fn.Parent && names[i].Name == fn.Name {
				fn = &names[i]
				break
			}
		}
		e.FNTimes = &fsparse.Times{Mtime: fn.Times.Mtime, Atime: fn.Times.Atime, Ctime: fn.Times.Ctime, Crtime: fn.Times.Crtime}
	}
	for _, a := range attrNames {
		if flags&a.bit != 0 {
			e.Attrs = append(e.Attrs, a.name)
		}
	}
	perm := fs.FileMode(0o644)
	if flags&1 != 0 {
		perm = 0o444
	}
	switch {
	case x.Rec.IsDir():
		e.Mode = fs.ModeDir | 0o755
	default:
		e.Mode = perm
		if s := x.stream(""); s != nil {
			e.Size = s.size
		}
	}
	if tag, data, ok := f.Reparse(x); ok {
		if !hasAttr(e.Attrs, "reparse") {
			e.Attrs = append(e.Attrs, "reparse")
		}
		e.Attrs = append(e.Attrs, fmt.Sprintf("reparse-tag=%#08x", tag))
		if tag == tagSymlink || tag == tagMountPoint {
			e.Mode = fs.ModeSymlink | 0o777
			e.Target = reparseTarget(tag, data)
		}
	} else if flags&0x4 != 0 && !x.Rec.IsDir() && e.Size >= 8 && e.Size <= 4096 {
		// An Interix symlink (ntfs-3g's default): a system file whose
		// data is "IntxLNK\x01" and the UTF-16 target.
		if t, ok := f.interixTarget(x); ok {
			e.Mode = fs.ModeSymlink | 0o777
			e.Target = t
			e.Size = int64(len(t))
		}
	}
	e.Type = fsparse.TypeName(e.Mode)
	e.Perm = fmt.Sprintf("%04o", fsparse.UnixPerm(e.Mode))
	return e
}

func hasAttr(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// streamEntry describes named stream s of file x, whose path is p.
func (f *FS) streamEntry(p string, x *File, s *Stream, fn *FileName) fsparse.Entry {
	e := f.entry(p, x, fn)
	e.Path = p + ":" + s.Name
	e.Stream = s.Name
	e.Mode = 0o644
	e.Type, e.Perm, e.Target = "file", "0644", ""
	e.Size = s.size
	return e
}

func (f *FS) interixTarget(x *File) (string, bool) {
	s := x.stream("")
	if s == nil {
		return "", false
	}
	b := make([]byte, s.size)
	if n, _ := f.streamReader(s, x.Rec.Num).ReadAt(b, 0); n != len(b) || !bytes.HasPrefix(b, []byte("IntxLNK\x01")) {
		return "", false
	}
	return utf16String(b[8:]), true
}

// reparseTarget is the print name (else the substitute name) of a symlink
// or junction's reparse data.
func reparseTarget(tag uint32, d []byte) string {
	hdr := 8
	if tag == tagSymlink {
		hdr = 12
	}
	if len(d) < hdr {
		return ""
	}
	so, sl := int(binary.LittleEndian.Uint16(d[0:])), int(binary.LittleEndian.Uint16(d[2:]))
	po, pl := int(binary.LittleEndian.Uint16(d[4:])), int(binary.LittleEndian.Uint16(d[6:]))
	buf := d[hdr:]
	if pl > 0 && po+pl <= len(buf) {
		return utf16String(buf[po : po+pl])
	}
	if so+sl <= len(buf) {
		return utf16String(buf[so : so+sl])
	}
	return ""
}

// ReadDir lists directory name.
func (f *FS) ReadDir(name string) ([]fsparse.Entry, error) {
	t, err := f.resolve(name)
	if err != nil {
		return nil, err
	}
	if t.hasStr {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: errors.New("not a directory")}
	}
	return f.ListInode(t.rec, guestPath(name), "")
}

// ListInode lists directory record ino found at path dir: each file, and
// after it each of its named streams as "name:stream". Names that cannot
// be a path element are escaped and carry a Problem.
func (f *FS) ListInode(ino uint64, dir, shown string) ([]fsparse.Entry, error) {
	ents, err := f.listing(ino)
	if err != nil {
		return nil, err
	}
	out := make([]fsparse.Entry, 0, len(ents))
	seen := map[string]bool{}
	for i := range ents {
		de := &ents[i]
		if de.Record == ino || ino == RootRecord && hiddenMeta(de) {
			continue
		}
		if seen[de.Name] {
			continue // a name in two namespaces (POSIX and Win32)
		}
		seen[de.Name] = true
		name := de.Name
		var pb *vmerr.Problem
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			name = fsparse.EscapeName(name)
			pb = &vmerr.Problem{Where: fmt.Sprintf("directory MFT record %d", ino), Offset: -1,
				Err: fmt.Errorf("%w: name %q cannot be a path element", ErrCorrupt, de.Name)}
		}
		p := path.Join(dir, name)
		x, err := f.file(de.Record)
		if err == nil && x.Rec.Seq != de.Seq && de.Seq != 0 {
			err = corrupt(fmt.Sprintf("MFT record %d", de.Record), -1, "sequence %d, the directory entry %q names %d (stale entry)", x.Rec.Seq, de.Name, de.Seq)
		}
		var e fsparse.Entry
		if err != nil {
			e = fsparse.Entry{Path: p, Ino: de.Record, Err: err, Type: "file"}
			if de.Flags&0x10000000 != 0 {
				e.Type = "dir"
			}
		} else {
			fn := de.FileName
			e = f.entry(p, x, &fn)
		}
		e.Problem = pb
		if pb != nil || shown != "" {
			sd := shown
			if sd == "" {
				sd = showPath(dir)
			}
			e.Shown = path.Join(sd, fsparse.EscapeName(de.Name))
		}
		out = append(out, e)
		if err != nil {
			continue
		}
		for _, s := range x.Streams() {
			if s.Name == "" {
				continue
			}
			fn := de.FileName
			se := f.streamEntry(p, x, s, &fn)
			if e.Shown != "" {
				se.Shown = e.Shown + ":" + s.Name
			}
			out = append(out, se)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func showPath(p string) string {
	els := strings.Split(p, "/")
	for i, e := range els {
		if e != "" {
			els[i] = fsparse.EscapeName(e)
		}
	}
	return strings.Join(els, "/")
}

// OpenFile returns the content of the file (or "file:stream") at name.
func (f *FS) OpenFile(name string) (fsparse.File, error) {
	t, err := f.resolve(name)
	if err != nil {
		return nil, err
	}
	return f.OpenStream(t.rec, t.stream)
}

// OpenInode returns the unnamed $DATA stream of MFT record ino.
func (f *FS) OpenInode(ino uint64) (fsparse.File, error) { return f.OpenStream(ino, "") }

// OpenStream returns $DATA stream name ("" the unnamed one) of MFT record
// ino. A directory has no unnamed stream.
func (f *FS) OpenStream(ino uint64, name string) (fsparse.File, error) {
	x, err := f.file(ino)
	if err != nil {
		return nil, err
	}
	if name == "" && x.Rec.IsDir() {
		return nil, fmt.Errorf("ntfs: MFT record %d is a directory, not a regular file", ino)
	}
	s := x.stream(name)
	if s == nil {
		if name == "" {
			return emptyFile{}, nil // a file without $DATA reads as empty
		}
		return nil, fmt.Errorf("%w: MFT record %d has no stream %q", ErrNotExist, ino, name)
	}
	return f.streamReader(s, ino), nil
}

// StreamNames returns the names of the named $DATA streams of MFT record
// ino, sorted.
func (f *FS) StreamNames(ino uint64) ([]string, error) {
	x, err := f.file(ino)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range x.Streams() {
		if s.Name != "" {
			out = append(out, s.Name)
		}
	}
	return out, nil
}

type emptyFile struct{}

func (emptyFile) ReadAt([]byte, int64) (int, error) { return 0, io.EOF }
func (emptyFile) Size() int64                       { return 0 }

// Open implements fs.FS.
func (f *FS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	e, err := f.Lstat(name)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, err
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	fi := info{e}
	if e.Type == "dir" {
		return &dirFile{f: f, name: name, fi: fi}, nil
	}
	var data fsparse.File = emptyFile{}
	if e.Type == "file" {
		if data, err = f.OpenFile(name); err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
	}
	return &regFile{fi: fi, r: io.NewSectionReader(data, 0, data.Size())}, nil
}

type info struct{ e fsparse.Entry }

func (i info) Name() string {
	if i.e.Path == "/" {
		return "."
	}
	return path.Base(i.e.Path)
}
func (i info) Size() int64        { return i.e.Size }
func (i info) Mode() fs.FileMode  { return i.e.Mode }
func (i info) ModTime() time.Time { return i.e.Mtime }
func (i info) IsDir() bool        { return i.e.Mode.IsDir() }
func (i info) Sys() any           { return i.e }
func (i info) Type() fs.FileMode  { return i.e.Mode.Type() }
func (i info) Info() (fs.FileInfo, error) {
	return i, nil
}

type regFile struct {
	fi info
	r  *io.SectionReader
}

func (r *regFile) Stat() (fs.FileInfo, error)                { return r.fi, nil }
func (r *regFile) Read(p []byte) (int, error)                { return r.r.Read(p) }
func (r *regFile) ReadAt(p []byte, off int64) (int, error)   { return r.r.ReadAt(p, off) }
func (r *regFile) Seek(off int64, whence int) (int64, error) { return r.r.Seek(off, whence) }
func (r *regFile) Close() error                              { return nil }

type dirFile struct {
	f    *FS
	name string
	fi   info
	dir  fsfile.Dir
}

func (d *dirFile) Stat() (fs.FileInfo, error) { return d.fi, nil }
func (d *dirFile) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.name, Err: errors.New("is a directory")}
}
func (d *dirFile) Close() error { return nil }

func (d *dirFile) ReadDir(n int) ([]fs.DirEntry, error) {
	return d.dir.ReadDir(n, func() ([]fs.DirEntry, error) {
		ents, err := d.f.ListInode(d.fi.e.Ino, d.fi.e.Path, "")
		if err != nil {
			return nil, err
		}
		var out []fs.DirEntry
		for _, e := range ents {
			if e.Problem != nil {
				continue // no io/fs name reaches it
			}
			out = append(out, info{e})
		}
		return out, nil
	})
}
