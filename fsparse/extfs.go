package fsparse

import (
	"fmt"
	"io"
	"io/fs"
	"path"

	"github.com/vmscope/vmscope/fsparse/ext4"
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
	in, err := x.Inode(uint32(ino))
	if err != nil {
		return Entry{Path: p, Ino: ino}, err
	}
	m := in.FileMode()
	e := Entry{
		Path: p, Ino: ino, Mode: m, Type: TypeName(m),
		Perm: fmt.Sprintf("%04o", UnixPerm(m)), Uid: in.Uid, Gid: in.Gid,
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
	ents, err := x.ReadDirInode(ino)
	if err != nil {
		return nil, err
	}
	dir := guestPath(name)
	out := make([]Entry, 0, len(ents))
	for _, de := range ents {
		e, err := x.StatInode(path.Join(dir, de.Name), uint64(de.Ino))
		if err != nil {
			e.Err = err
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
