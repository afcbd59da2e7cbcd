package fsparse

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/vmscope/vmscope/fsparse/ext4"
	"github.com/vmscope/vmscope/vmerr"
)

// extFS is ext2/3/4 (package ext4) as a Filesystem. It embeds the parser,
// so the inode, extent and layout methods that the dirty-file mapper needs
// are reachable through an interface assertion on the volume's FS.
type extFS struct {
	*ext4.FS
}

func openExt(dev io.ReaderAt, size int64) (Filesystem, error) {
	e, err := ext4.Open(dev, size)
	if err != nil {
		return nil, err
	}
	return extFS{e}, nil
}

// permStrings holds "0000" to "7777": Entry.Perm of every permission word,
// made once so a walk of many files does not format each.
var permStrings = func() *[0o10000]string {
	var t [0o10000]string
	for p := range t {
		t[p] = string([]byte{'0' + byte(p>>9&7), '0' + byte(p>>6&7), '0' + byte(p>>3&7), '0' + byte(p&7)})
	}
	return &t
}()

// PermString is UnixPerm(m) in four octal digits ("0755"), as Entry.Perm
// shows it.
func PermString(m fs.FileMode) string { return permStrings[UnixPerm(m)&0o7777] }

// Ext4 returns the ext parser of the volume, or nil when the volume holds
// another filesystem.
func (v *Volume) Ext4() *ext4.FS {
	if x, ok := v.FS.(extFS); ok {
		return x.FS
	}
	return nil
}

// WithExt4 returns v with its ext filesystem replaced by e read from
// dev (the journal-recovered view of the same volume).
func (v *Volume) WithExt4(dev io.ReaderAt, size int64, e *ext4.FS) *Volume {
	nv := *v
	nv.Device = io.NewSectionReader(dev, 0, size)
	nv.FS = extFS{e}
	return &nv
}

func (x extFS) Info() Info {
	sb := x.Super()
	return Info{Type: sb.Kind(), Label: sb.Label, UUID: sb.UUIDString(), BlockSize: sb.BlockSize,
		Blocks: sb.BlocksCount, Inodes: uint64(sb.InodesCount), Features: sb.Features()}
}

func (x extFS) Lstat(name string) (Entry, error) {
	ino, err := x.Lookup(name)
	if err != nil {
		return Entry{}, err
	}
	return x.StatInode(guestPath(name), uint64(ino))
}

func (x extFS) StatInode(p string, ino uint64) (Entry, error) {
	if ino == 0 || ino > uint64(^uint32(0)) {
		return Entry{Path: p, Ino: ino}, fmt.Errorf("ext4: no inode %d: %w", ino, ext4.ErrCorrupt)
	}
	var in ext4.Inode // not kept: decoded without an allocation
	if err := x.InodeInto(uint32(ino), &in); err != nil {
		return Entry{Path: p, Ino: ino}, err
	}
	m := in.FileMode()
	e := Entry{
		Path: p, Ino: ino, Mode: m, Type: TypeName(m),
		Perm: PermString(m), Uid: in.Uid, Gid: in.Gid,
		Size: int64(in.Size), Links: uint32(in.Links),
		Mtime: in.Mtime, Atime: in.Atime, Ctime: in.Ctime,
	}
	if in.HasCrtime {
		t := in.Crtime
		e.Crtime = &t
	}
	if m&fs.ModeSymlink != 0 {
		t, err := x.ReadlinkInode(uint32(ino))
		if err != nil {
			e.Err = err
		}
		e.Target = t
	}
	return e, nil
}

func (x extFS) ReadDir(name string) ([]Entry, error) {
	ino, err := x.Lookup(name)
	if err != nil {
		return nil, err
	}
	return x.ListInode(uint64(ino), guestPath(name), "")
}

// ListInode lists directory inode ino, whose path is dir (shown as shown
// when an element of dir is escaped, else ""). A name that cannot be a path
// element is never joined as it is: its entry's path ends in
// EscapeName(name) and carries the Problem.
func (x extFS) ListInode(ino uint64, dir, shown string) ([]Entry, error) {
	return x.appendListing(nil, ino, dir, shown)
}

// dirEntries holds the directory listings appendListing reads into.
var dirEntries = sync.Pool{New: func() any { return new([]ext4.DirEntry) }}

// appendListing is ListInode appending to out (a walk reuses one slice per
// depth instead of making one per directory).
func (x extFS) appendListing(out []Entry, ino uint64, dir, shown string) ([]Entry, error) {
	if ino == 0 || ino > uint64(^uint32(0)) {
		return nil, fmt.Errorf("ext4: no inode %d: %w", ino, ext4.ErrCorrupt)
	}
	bp := dirEntries.Get().(*[]ext4.DirEntry)
	defer dirEntries.Put(bp)
	ents, err := x.AppendDirInode((*bp)[:0], uint32(ino))
	if err != nil {
		return nil, err
	}
	*bp = ents
	defer clear(ents) // the pool keeps no names
	out = slices.Grow(out, len(ents))
	// dir + "/" + name is path.Join(dir, name) when dir is a clean
	// absolute path and name a path element (an entry without a Problem).
	clean := strings.HasPrefix(dir, "/") && path.Clean(dir) == dir
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
		var p string
		switch {
		case !clean || pb != nil:
			p = path.Join(dir, name)
		case dir == "/":
			p = "/" + name
		default:
			p = dir + "/" + name
		}
		e, err := x.StatInode(p, uint64(de.Ino))
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
	return out, nil
}

func (x extFS) OpenFile(name string) (File, error) {
	ino, err := x.Lookup(name)
	if err != nil {
		return nil, err
	}
	return x.OpenInode(uint64(ino))
}

func (x extFS) OpenInode(ino uint64) (File, error) {
	if ino == 0 || ino > uint64(^uint32(0)) {
		return nil, fmt.Errorf("ext4: no inode %d: %w", ino, ext4.ErrCorrupt)
	}
	in, err := x.Inode(uint32(ino))
	if err != nil {
		return nil, err
	}
	if !in.IsRegular() {
		return nil, fmt.Errorf("ext4: inode %d is a %s, not a regular file", ino, TypeName(in.FileMode()))
	}
	return x.FS.OpenInode(uint32(ino))
}
