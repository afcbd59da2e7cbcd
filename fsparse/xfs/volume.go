package xfs

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/vmerr"
)

func init() {
	fsparse.Register(fsparse.Format{Name: "xfs", Probe: Probe, Open: openVolume})
}

// Probe recognises an XFS superblock at the start of a volume.
func Probe(head []byte) bool {
	return len(head) >= 512 && binary.BigEndian.Uint32(head) == sbMagic
}

// volumeFS is an XFS filesystem as an fsparse.InodeFS. It embeds the
// parser: Of returns it for the dirty-file mapper.
type volumeFS struct {
	*FS
}

func openVolume(dev io.ReaderAt, size int64) (fsparse.Filesystem, error) {
	f, err := Open(dev, size)
	if err != nil {
		return nil, err
	}
	return volumeFS{f}, nil
}

// Of returns the XFS parser of volume v, or nil when v holds another
// filesystem.
func Of(v *fsparse.Volume) *FS {
	if x, ok := v.FS.(volumeFS); ok {
		return x.FS
	}
	return nil
}

func (x volumeFS) Info() fsparse.Info {
	sb := x.sb
	feat := sb.Features()
	if st, err := x.LogState(); err == nil && st.Dirty {
		feat = append(feat, "log-needs-recovery")
	}
	return fsparse.Info{Type: "xfs", Label: sb.Label, UUID: sb.UUIDString(), BlockSize: int(sb.BlockSize),
		Blocks: sb.DBlocks, Inodes: sb.ICount, Features: feat}
}

func guestPath(name string) string {
	if name == "." {
		return "/"
	}
	return "/" + name
}

func (x volumeFS) Lstat(name string) (fsparse.Entry, error) {
	ino, err := x.Lookup(name)
	if err != nil {
		return fsparse.Entry{}, err
	}
	return x.StatInode(guestPath(name), ino)
}

// StatInode describes inode ino found at path p.
func (x volumeFS) StatInode(p string, ino uint64) (fsparse.Entry, error) {
	in, err := x.Inode(ino)
	if err != nil {
		return fsparse.Entry{Path: p, Ino: ino}, err
	}
	return x.entry(p, in), nil
}

func (x volumeFS) entry(p string, in *Inode) fsparse.Entry {
	m := in.FileMode()
	e := fsparse.Entry{
		Path: p, Ino: in.Ino, Mode: m, Type: fsparse.TypeName(m),
		Perm: fmt.Sprintf("%04o", fsparse.UnixPerm(m)), Uid: in.Uid, Gid: in.Gid,
		Size: int64(min(in.Size, 1<<62)), Links: in.Nlink,
		Mtime: in.Mtime, Atime: in.Atime, Ctime: in.Ctime,
	}
	if in.HasCrtime {
		t := in.Crtime
		e.Crtime = &t
	}
	if in.IsSymlink() {
		t, err := x.Readlink(in)
		if err != nil {
			e.Err = err
		}
		e.Target = t
	}
	if in.Realtime() && in.IsRegular() {
		e.Err = fmt.Errorf("xfs: inode %d: realtime file: %w", in.Ino, ErrUnsupported)
	}
	return e
}

// ReadDir lists directory name as fsparse entries.
func (x volumeFS) ReadDir(name string) ([]fsparse.Entry, error) {
	ino, err := x.Lookup(name)
	if err != nil {
		return nil, err
	}
	return x.ListInode(ino, guestPath(name), "")
}

// ListInode lists directory inode ino, whose path is dir (shown as shown
// when an element of dir is escaped). A name that cannot be a path
// element gets an escaped path and a Problem.
func (x volumeFS) ListInode(ino uint64, dir, shown string) ([]fsparse.Entry, error) {
	ents, err := x.ReadDirInode(ino)
	if err != nil {
		return nil, err
	}
	out := make([]fsparse.Entry, 0, len(ents))
	for _, de := range ents {
		name := de.Name
		var pb *vmerr.Problem
		if de.Problem != nil {
			name = fsparse.EscapeName(name)
			pb = &vmerr.Problem{Where: fmt.Sprintf("xfs directory inode %d", ino), Offset: de.Offset, Err: de.Problem}
		}
		e, err := x.StatInode(path.Join(dir, name), de.Ino)
		if err != nil {
			e.Err = err
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
	}
	return out, nil
}

// OpenFile returns the content of the regular file at name.
func (x volumeFS) OpenFile(name string) (fsparse.File, error) {
	ino, err := x.Lookup(name)
	if err != nil {
		return nil, err
	}
	return x.OpenInode(ino)
}

// OpenInode returns the content of regular file inode ino.
func (x volumeFS) OpenInode(ino uint64) (fsparse.File, error) {
	in, err := x.Inode(ino)
	if err != nil {
		return nil, err
	}
	if !in.IsRegular() {
		return nil, fmt.Errorf("xfs: inode %d is a %s, not a regular file", ino, fsparse.TypeName(in.FileMode()))
	}
	fl, err := x.openInode(in, "")
	if err != nil {
		return nil, err
	}
	return fl, nil
}

// showPath is p with every element through fsparse.EscapeName.
func showPath(p string) string {
	els := strings.Split(p, "/")
	for i, e := range els {
		if e != "" {
			els[i] = fsparse.EscapeName(e)
		}
	}
	return strings.Join(els, "/")
}

var (
	_ fsparse.InodeFS = volumeFS{}
	_ fs.FS           = volumeFS{}
)
