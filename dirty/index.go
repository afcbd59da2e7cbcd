package dirty

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/vmerr"
)

// Link is one directory entry naming an inode.
type Link struct {
	Parent uint32 `json:"parent"`
	Name   string `json:"name"`
}

// Run is a run of filesystem blocks an inode owns, and what they hold.
type Run struct {
	Start uint64 `json:"start"`
	Len   uint64 `json:"len"`
	Kind  Kind   `json:"kind"`
}

// Kind is the kind of block that made a file due, or that a run holds.
type Kind string

const (
	KindInode     Kind = "inode-table" // the inode itself changed
	KindData      Kind = "data"        // file content blocks
	KindDir       Kind = "directory"   // directory blocks (entries)
	KindExtent    Kind = "extent-tree" // extent tree / indirect blocks
	KindXattr     Kind = "xattr"       // external extended attribute block
	KindParentDir Kind = "parent-directory"
	KindRules     Kind = "rules-changed"
	KindFull      Kind = "first-poll"
	// KindUnscanned: changed since its last scan, found by a poll that
	// scanned nothing (vmscope dirty).
	KindUnscanned Kind = "unscanned"
)

// FileRec is what the index remembers of one live inode.
type FileRec struct {
	Ino     uint32      `json:"ino"`
	Mode    fs.FileMode `json:"mode"` // type and permission bits
	Uid     uint32      `json:"uid"`
	Gid     uint32      `json:"gid"`
	Size    uint64      `json:"size"`
	Links   uint16      `json:"links"`
	Flags   uint32      `json:"flags"`
	Gen     uint32      `json:"gen"`
	Atime   int64       `json:"atime"` // Unix nanoseconds
	Mtime   int64       `json:"mtime"`
	Ctime   int64       `json:"ctime"`
	Crtime  int64       `json:"crtime"`
	Xattr   uint64      `json:"xattr,omitempty"`
	Target  string      `json:"target,omitempty"` // symlink target
	Extents uint64      `json:"extents"`          // FNV-64 of the block map
	Runs    []Run       `json:"runs,omitempty"`   // the block → inode index, per inode
	Names   []Link      `json:"names,omitempty"`
	SHA256  string      `json:"sha256,omitempty"` // content digest, when known
	Verdict string      `json:"verdict,omitempty"`
	ReadErr string      `json:"err,omitempty"` // the inode's map could not be read
	Inline  bool        `json:"inline,omitempty"`
}

// IsDir and IsRegular test the type bits.
func (r *FileRec) IsDir() bool     { return r.Mode.IsDir() }
func (r *FileRec) IsRegular() bool { return r.Mode.IsRegular() }

// TypeName names the file type as fsparse does.
func (r *FileRec) TypeName() string { return fsparse.TypeName(r.Mode) }

// Index is the file index of one filesystem: every live inode with its
// metadata, names and blocks. It is what a poll compares against.
type Index struct {
	Volume    string              `json:"volume"`
	UUID      string              `json:"uuid"`
	BlockSize int64               `json:"block_size"`
	Files     map[uint32]*FileRec `json:"files"`
	// Root is the root directory's inode when it is not 2 (XFS).
	Root uint32 `json:"root,omitempty"`

	owners []owner // sorted by start; built by index()
	maxLen uint64
	// children: the inodes named in each directory; built by index(),
	// kept here and not in the records, which an index derived by a poll
	// shares with the index it was derived from.
	children map[uint32][]uint32

	// A stored index or a delta (stored.go).
	src     IndexSource
	missing map[uint32]bool // inodes src does not hold
	all     bool            // every record of src is in Files
	base    *Index
	gone    map[uint32]bool
	err     error // the first error reading src
	// itab: per inode-table block, a digest of each inode slot (slotSum;
	// 0: unknown). A poll reads only the slots whose digest changed.
	itab map[uint64][]uint64
}

type owner struct {
	start, n uint64
	ino      uint32
	kind     Kind
}

// index builds the in-memory block → inode lookup from the runs.
func (x *Index) index() {
	x.owners = x.owners[:0]
	x.maxLen = 0
	x.children = map[uint32][]uint32{}
	for ino, r := range x.Files {
		for _, run := range r.Runs {
			x.owners = append(x.owners, owner{run.Start, run.Len, ino, run.Kind})
			x.maxLen = max(x.maxLen, run.Len)
		}
		for _, l := range r.Names {
			if x.Files[l.Parent] != nil && l.Parent != ino {
				x.children[l.Parent] = append(x.children[l.Parent], ino)
			}
		}
	}
	sort.Slice(x.owners, func(i, j int) bool { return x.owners[i].start < x.owners[j].start })
}

// owned calls fn for every inode run overlapping blocks [lo, hi).
func (x *Index) owned(lo, hi uint64, fn func(o owner)) {
	from := uint64(0)
	if lo > x.maxLen {
		from = lo - x.maxLen
	}
	i := sort.Search(len(x.owners), func(k int) bool { return x.owners[k].start >= from })
	for ; i < len(x.owners) && x.owners[i].start < hi; i++ {
		o := x.owners[i]
		if o.start+o.n > lo {
			fn(o)
		}
	}
}

// Paths returns every path of inode ino ("/etc/passwd"), sorted: one per
// hard link, each resolved through its parents' names.
func (x *Index) Paths(ino uint32) []string {
	var out []string
	root := x.root()
	var walk func(ino uint32, suffix string, depth int)
	walk = func(ino uint32, suffix string, depth int) {
		if ino == root {
			out = append(out, "/"+suffix)
			return
		}
		r := x.get(ino)
		if r == nil || depth > 4096 || len(out) > 1024 {
			return
		}
		for _, l := range r.Names {
			if l.Parent == ino {
				continue
			}
			s := l.Name
			if suffix != "" {
				s = l.Name + "/" + suffix
			}
			walk(l.Parent, s, depth+1)
			if len(out) > 1024 {
				return
			}
		}
	}
	walk(ino, "", 0)
	for i, p := range out {
		out[i] = path.Clean(p)
	}
	sort.Strings(out)
	return out
}

// rootIno is ext4's root; a filesystem whose root is another inode (XFS,
// NTFS's MFT record 5) says so through RootIno.
const rootIno = 2

// root is the root directory's inode: Root, or its base's, or 2.
func (x *Index) root() uint32 {
	for i := x; i != nil; i = i.base {
		if i.Root != 0 {
			return i.Root
		}
	}
	return rootIno
}

// setRoot records the root directory's inode of fsys when it is not 2.
func (x *Index) setRoot(fsys FS) {
	if r := rootOf(fsys); r != rootIno {
		x.Root = r
	}
}

// BuildIndex reads every live inode of the volume (the used part of each
// inode table) with its block map, and every directory, into an index. It
// reads metadata only: inode tables, extent trees, directories.
func BuildIndex(ctx context.Context, v *fsparse.Volume) (*Index, error) {
	fsys, err := OpenFS(v)
	if err != nil {
		return nil, err
	}
	bs := fsys.BlockSize()
	x := &Index{Volume: v.ID, UUID: v.UUID, BlockSize: bs, Files: map[uint32]*FileRec{}, itab: map[uint64][]uint64{}}
	x.setRoot(fsys)
	if err := x.readTables(ctx, v, fsys); err != nil {
		return nil, err
	}
	for ino, r := range x.Files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !r.IsDir() || r.ReadErr != "" {
			continue
		}
		ents, err := fsys.ReadDir(ino)
		if err != nil {
			r.ReadErr = err.Error()
			continue
		}
		for _, e := range ents {
			if c := x.Files[e.Ino]; c != nil {
				c.Names = append(c.Names, Link{ino, e.Name})
			}
		}
	}
	for _, r := range x.Files {
		sortLinks(r.Names)
	}
	x.index()
	return x, nil
}

// readTables reads the used part of every inode table: the slot digests of
// each block and the record of every live, tracked inode.
func (x *Index) readTables(ctx context.Context, v *fsparse.Volume, fsys FS) error {
	bs, isz := fsys.BlockSize(), fsys.SlotSize()
	per := uint64(bs / isz)
	buf := make([]byte, 16*bs)
	for _, t := range fsys.InodeTables() {
		nblk := min((uint64(t.Used)+per-1)/per, t.Len)
		for b := uint64(0); b < nblk; b += 16 {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(16, nblk-b)
			p := buf[:int64(n)*bs]
			blk := t.Start + b
			if k, err := v.Device.ReadAt(p, int64(blk)*bs); k < len(p) {
				return fmt.Errorf("dirty: %s: inode table %d at block %d: %v: %w", v.ID, t.Group, blk, err, vmerr.ErrCorrupt)
			}
			for j := uint64(0); j < n; j++ {
				raw := p[int64(j)*bs : int64(j+1)*bs]
				x.itab[blk+j] = slotSums(fsys, t, blk+j, raw)
				lo, hi := fsys.SlotsIn(t, blk+j)
				for ino := lo; ino < hi; ino++ {
					if uint64(b+j)*per+uint64(ino-lo) >= uint64(t.Used) {
						break
					}
					if !fsys.Tracked(ino) || !fsys.SlotInUse(raw[int64(ino-lo)*isz:]) {
						continue
					}
					r, err := fsys.Record(ino)
					if err != nil {
						return err
					}
					if r != nil {
						x.Files[ino] = r
					}
				}
			}
		}
	}
	return nil
}

func sortLinks(ls []Link) {
	sort.Slice(ls, func(i, j int) bool {
		if ls[i].Parent != ls[j].Parent {
			return ls[i].Parent < ls[j].Parent
		}
		return ls[i].Name < ls[j].Name
	})
}

// hashFile returns the sha256 of the regular file ino of the volume.
func hashFile(ctx context.Context, v *fsparse.Volume, ino uint32) (string, error) {
	f, err := v.OpenInode(uint64(ino))
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(ctxReader{ctx, f}, 0, f.Size())); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

type ctxReader struct {
	ctx context.Context
	r   io.ReaderAt
}

func (c ctxReader) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.ReadAt(p, off)
}
