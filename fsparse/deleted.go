package fsparse

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"time"

	"github.com/vmscope/vmscope/fsparse/ext4"
	"github.com/vmscope/vmscope/vmerr"
)

// Deleted is a deleted name, or an inode that no name reaches, found by
// ScanDeleted. Entry holds the name's path and the metadata of the inode
// it names as that inode is now (zero when the record names none).
type Deleted struct {
	Entry
	// NameType is the type the directory record gives (NameTypeKnown false
	// when it gives none: an orphan inode, or no filetype feature).
	NameType      fs.FileMode `json:"-"`
	NameTypeKnown bool        `json:"-"`
	// MetaKnown says Entry's metadata was read from the inode (Ino != 0).
	MetaKnown bool `json:"-"`
	// Realloc: the named inode is in use again (allocated in the bitmap),
	// so its metadata is another file's.
	Realloc bool `json:"realloc,omitempty"`
	// Orphan: a freed inode that no name (live or deleted) names, listed
	// as the Sleuth Kit lists it: /$OrphanFiles/OrphanFile-N.
	Orphan bool `json:"orphan,omitempty"`
	// Unlinked: an inode in use that no live name names (removed while
	// open, or unlinked without being freed); OrphanList says it is on the
	// superblock's orphan list.
	Unlinked   bool `json:"unlinked,omitempty"`
	OrphanList bool `json:"orphan_list,omitempty"`
	// Dtime is the inode's deletion time (nil when 0); Generation its
	// i_generation.
	Dtime      *time.Time `json:"dtime,omitempty"`
	Generation uint32     `json:"generation"`
	// Slack: the record was found in the unused space of another record.
	Slack  bool  `json:"slack,omitempty"`
	Offset int64 `json:"offset"`
}

// DeletedScan is what ScanDeleted found.
type DeletedScan struct {
	// Deleted lists deleted names (marked as fls -rd lists them) and, for
	// a scan from the root, the freed inodes no name names (Orphan),
	// sorted by path and inode.
	Deleted []Deleted
	// Unlinked lists, for a scan from the root, the inodes in use that no
	// live name names (ils -a less what fls -r names), by inode.
	Unlinked []Deleted
	// Problems are what could not be read; the scan went on.
	Problems []vmerr.Problem
}

// ErrNoDeleted is the error of ScanDeleted on a filesystem it cannot
// search for deleted files (not ext2/3/4).
var ErrNoDeleted = vmerr.New("fsparse: deleted files are found on ext2/3/4 only", vmerr.ErrUnsupported)

// ScanDeleted searches the directories below root for deleted names (the
// records a delete leaves in directory slack, or whose inode it cleared),
// enters deleted directories whose freed inode still maps their blocks,
// and, when root is the filesystem's root, lists the inodes no name
// reaches, entering the orphan directories among them as fls -r does
// (their records listed as /$OrphanFiles/OrphanFile-N/NAME). Each deleted name carries the inode it names as it is now and
// whether that inode was reused. Bounded: each directory inode is scanned
// once.
func (v *Volume) ScanDeleted(ctx context.Context, root string) (*DeletedScan, error) {
	e := v.Ext4()
	if e == nil {
		return nil, fmt.Errorf("%s (%s): %w", v.ID, v.Type, ErrNoDeleted)
	}
	start, err := v.Lstat(root)
	if err != nil {
		return nil, err
	}
	if start.Type != "dir" {
		return nil, fmt.Errorf("%s: %s: not a directory", v.ID, start.Path)
	}
	out := &DeletedScan{}
	var named, liveNamed, seen inoSet // named: by any name, live or deleted
	type dir struct {
		ino     uint32
		path    string
		deleted bool
	}
	stack := []dir{{uint32(start.Ino), start.Path, false}}
	named.add(uint32(start.Ino))
	liveNamed.add(uint32(start.Ino))
	// walk scans the directories on the stack and those they lead to,
	// counting the scans (bounded in the walks of orphan directories).
	scans, orphanWalk := 0, false
	walk := func() error {
		for len(stack) > 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			d := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if seen.has(d.ino) {
				continue
			}
			seen.add(d.ino)
			if scans++; orphanWalk && scans > maxOrphanDirScans {
				stack = stack[:0]
				return nil
			}
			err := e.ScanDirFunc(d.ino, d.deleted, func(s *ext4.DirSlot, name []byte) {
				if s.Ino != 0 {
					named.add(s.Ino)
				}
				if !s.Deleted {
					liveNamed.add(s.Ino)
					isDir := s.TypeKnown && s.Type.IsDir()
					if !s.TypeKnown {
						if in, err := e.Inode(s.Ino); err == nil {
							isDir = in.IsDir()
						}
					}
					if isDir {
						stack = append(stack, dir{s.Ino, childPath(d.path, name), false})
					}
					return
				}
				de := v.deletedEntry(e, childPath(d.path, name), s.Ino)
				de.NameType, de.NameTypeKnown = s.Type, s.TypeKnown
				de.Slack, de.Offset = s.Slack, s.Offset
				out.Deleted = append(out.Deleted, de)
				if de.MetaKnown && !de.Realloc && de.Type == "dir" {
					stack = append(stack, dir{s.Ino, de.Path, true})
				}
			})
			if err != nil && !d.deleted {
				out.Problems = append(out.Problems, vmerr.Problem{Where: fmt.Sprintf("%s: directory %s (inode %d)", v.ID, d.path, d.ino), Offset: -1, Err: err})
			}
		}
		return nil
	}
	if err := walk(); err != nil {
		return nil, err
	}
	if start.Ino == 2 {
		onList := map[uint32]bool{}
		if l, err := e.OrphanList(); err != nil {
			out.Problems = append(out.Problems, vmerr.Problem{Where: v.ID + ": orphan list", Offset: -1, Err: err})
		} else {
			for _, ino := range l {
				onList[ino] = true
			}
		}
		first := e.Super().FirstIno
		var orphans []uint32 // freed inodes no name names, in inode order
		err := e.ScanInodes(func(ino uint32, alloc bool, ctime uint32, _ []byte) {
			switch {
			case !alloc && !named.has(ino) && ctime != 0:
				orphans = append(orphans, ino)
			case alloc && ino >= first && !liveNamed.has(ino):
				de := v.deletedEntry(e, "/$OrphanFiles/OrphanFile-"+strconv.FormatUint(uint64(ino), 10), ino)
				de.Unlinked, de.OrphanList, de.Realloc = true, onList[ino], false
				out.Unlinked = append(out.Unlinked, de)
			}
		})
		if err != nil {
			out.Problems = append(out.Problems, vmerr.Problem{Where: v.ID + ": inode tables", Offset: -1, Err: err})
		}
		// Each orphan is listed as the Sleuth Kit lists it, and an orphan
		// directory whose freed inode still maps its blocks is entered as a
		// deleted directory: its records name what it held, listed below
		// it. As fls -r does, each orphan directory is walked on its own
		// (a directory is entered once per orphan walk, so a loop ends),
		// and an orphan named inside another orphan directory is still an
		// orphan of its own. The walks together scan at most
		// maxOrphanDirScans directories.
		scans, orphanWalk = 0, true
		for _, ino := range orphans {
			de := v.deletedEntry(e, "/$OrphanFiles/OrphanFile-"+strconv.FormatUint(uint64(ino), 10), ino)
			de.Orphan = true
			out.Deleted = append(out.Deleted, de)
			if !de.MetaKnown || de.Realloc || de.Type != "dir" {
				continue
			}
			if scans >= maxOrphanDirScans {
				out.Problems = append(out.Problems, vmerr.Problem{Where: fmt.Sprintf("%s: orphan directory %s", v.ID, de.Path), Offset: -1,
					Err: fmt.Errorf("not entered: the orphan directories took %d directory scans: %w", scans, ext4.ErrCorrupt)})
				continue
			}
			seen = inoSet{}
			stack = append(stack, dir{ino, de.Path, true})
			if err := walk(); err != nil {
				return nil, err
			}
		}
	}
	sort.SliceStable(out.Deleted, func(i, j int) bool {
		a, b := &out.Deleted[i], &out.Deleted[j]
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return a.Ino < b.Ino
	})
	return out, nil
}

// childPath is path.Join(dir, EscapeName(name)).
func childPath(dir string, name []byte) string {
	return path.Join(dir, EscapeName(string(name)))
}

// inoSet is a set of inode numbers: a bitmap in pages of 4096 inodes,
// made as they are first used, so its size follows what is added, not
// the inode count a superblock claims.
type inoSet map[uint32]*[64]uint64

func (s *inoSet) add(ino uint32) {
	if *s == nil {
		*s = inoSet{}
	}
	p := (*s)[ino>>12]
	if p == nil {
		p = new([64]uint64)
		(*s)[ino>>12] = p
	}
	p[ino>>6&63] |= 1 << (ino & 63)
}

func (s inoSet) has(ino uint32) bool {
	p := s[ino>>12]
	return p != nil && p[ino>>6&63]&(1<<(ino&63)) != 0
}

// TablesBudget is how many bytes of inode tables a walk of a whole tree
// (timeline, deleted files) holds in memory by default: 512 MiB, the
// tables of about two million used 256-byte inodes.
const TablesBudget = 512 << 20

// WithInodeTables returns v with its ext2/3/4 filesystem read through a
// view that holds the inode tables and inode bitmaps in memory (see
// ext4.FS.WithInodeTables), for walks over the whole tree: the timeline
// and the deleted-file scan. Other filesystems, and tables larger than
// budget bytes, give v itself.
func (v *Volume) WithInodeTables(ctx context.Context, budget int64) (*Volume, error) {
	e := v.Ext4()
	if e == nil {
		return v, nil
	}
	t, err := e.WithInodeTables(ctx, budget)
	if err != nil || t == e {
		return v, err
	}
	nv := *v
	nv.FS = extFS{t}
	return &nv, nil
}

// maxOrphanDirScans bounds the directory scans of the walks of orphan
// directories: each orphan directory is walked on its own, so hostile
// directories naming each other could make the work grow as the square
// of their number.
const maxOrphanDirScans = 1 << 16

// deletedEntry describes inode ino as it is now, found at path p.
func (v *Volume) deletedEntry(e *ext4.FS, p string, ino uint32) Deleted {
	de := Deleted{Entry: Entry{Volume: v.ID, Path: p, Ino: uint64(ino)}, Offset: -1}
	if ino == 0 {
		return de
	}
	in, err := e.Inode(ino)
	if err != nil {
		de.Err, de.ErrString = err, err.Error()
		return de
	}
	m := in.FileMode()
	de.Mode, de.Type = m, TypeName(m)
	de.Perm = PermString(m)
	de.Uid, de.Gid, de.Size, de.Links = in.Uid, in.Gid, int64(in.Size), uint32(in.Links)
	de.Mtime, de.Atime, de.Ctime = in.Mtime, in.Atime, in.Ctime
	if in.HasCrtime {
		t := in.Crtime
		de.Crtime = &t
	}
	if in.Dtime != 0 {
		t := time.Unix(int64(in.Dtime), 0).UTC()
		de.Dtime = &t
	}
	de.Generation = in.Generation
	de.MetaKnown = true
	if alloc, err := e.InodeAllocated(ino); err == nil {
		de.Realloc = alloc
	}
	return de
}

// OpenDeleted opens the content of the deleted regular file with inode
// ino as a best effort (see ext4.FS.OpenDeleted): never a live file.
func (v *Volume) OpenDeleted(ino uint64) (File, error) {
	e := v.Ext4()
	if e == nil {
		return nil, fmt.Errorf("%s (%s): %w", v.ID, v.Type, ErrNoDeleted)
	}
	if ino == 0 || ino > uint64(^uint32(0)) {
		return nil, fmt.Errorf("ext4: no inode %d: %w", ino, ext4.ErrCorrupt)
	}
	return e.OpenDeleted(uint32(ino))
}
