package dirty

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"path"
	"sort"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/ext4"
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
)

// FileRec is what the index remembers of one live inode.
type FileRec struct {
	Ino      uint32 `json:"ino"`
	Mode     uint16 `json:"mode"` // raw i_mode (type and permission bits)
	Uid      uint32 `json:"uid"`
	Gid      uint32 `json:"gid"`
	Size     uint64 `json:"size"`
	Links    uint16 `json:"links"`
	Flags    uint32 `json:"flags"`
	Gen      uint32 `json:"gen"`
	Atime    int64  `json:"atime"` // Unix nanoseconds
	Mtime    int64  `json:"mtime"`
	Ctime    int64  `json:"ctime"`
	Crtime   int64  `json:"crtime"`
	Xattr    uint64 `json:"xattr,omitempty"`
	Target   string `json:"target,omitempty"` // symlink target
	Extents  uint64 `json:"extents"`          // FNV-64 of the block map
	Runs     []Run  `json:"runs,omitempty"`   // the block → inode index, per inode
	Names    []Link `json:"names,omitempty"`
	SHA256   string `json:"sha256,omitempty"` // content digest, when known
	Verdict  string `json:"verdict,omitempty"`
	ReadErr  string `json:"err,omitempty"` // the inode's map could not be read
	Inline   bool   `json:"inline,omitempty"`
	children []uint32
}

// IsDir and IsRegular test the type bits.
func (r *FileRec) IsDir() bool     { return r.Mode&0xF000 == 0x4000 }
func (r *FileRec) IsRegular() bool { return r.Mode&0xF000 == 0x8000 }

// TypeName names the file type as fsparse does.
func (r *FileRec) TypeName() string {
	switch r.Mode & 0xF000 {
	case 0x4000:
		return "dir"
	case 0xA000:
		return "symlink"
	case 0x1000:
		return "fifo"
	case 0xC000:
		return "socket"
	case 0x2000:
		return "char"
	case 0x6000:
		return "block"
	}
	return "file"
}

// Index is the file index of one ext filesystem: every live inode with its
// metadata, names and blocks. It is what a poll compares against.
type Index struct {
	Volume    string              `json:"volume"`
	UUID      string              `json:"uuid"`
	BlockSize int64               `json:"block_size"`
	Files     map[uint32]*FileRec `json:"files"`

	owners []owner // sorted by start; built by index()
	maxLen uint64

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
	for _, r := range x.Files {
		r.children = r.children[:0]
	}
	for ino, r := range x.Files {
		for _, run := range r.Runs {
			x.owners = append(x.owners, owner{run.Start, run.Len, ino, run.Kind})
			x.maxLen = max(x.maxLen, run.Len)
		}
		for _, l := range r.Names {
			if p := x.Files[l.Parent]; p != nil && l.Parent != ino {
				p.children = append(p.children, ino)
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
	var walk func(ino uint32, suffix string, depth int)
	walk = func(ino uint32, suffix string, depth int) {
		if ino == rootIno {
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

const rootIno = 2

// BuildIndex reads every live inode of the volume (the used part of each
// group's inode table) with its block map, and every directory, into an
// index. It reads metadata only: inode tables, extent trees, directories.
func BuildIndex(ctx context.Context, v *fsparse.Volume) (*Index, error) {
	if v.Ext4() == nil {
		return nil, fmt.Errorf("dirty: volume %s is %s: %w", v.ID, v.Type, ErrUnsupportedFS)
	}
	g := readGeometry(v.Ext4())
	x := &Index{Volume: v.ID, UUID: v.UUID, BlockSize: g.bs, Files: map[uint32]*FileRec{}}
	per := g.bs / g.isz
	buf := make([]byte, 16*g.bs)
	x.itab = map[uint64][]uint64{}
	for grp := range g.itable {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		nused := uint64(g.used[grp])
		nblk := (nused + uint64(per) - 1) / uint64(per)
		for b := uint64(0); b < nblk; b += 16 {
			n := min(16, nblk-b)
			p := buf[:int64(n)*g.bs]
			blk := g.itable[grp] + b
			if k, err := v.Device.ReadAt(p, int64(blk)*g.bs); k < len(p) {
				return nil, fmt.Errorf("dirty: %s: inode table of group %d at block %d: %v: %w", v.ID, grp, blk, err, ext4.ErrCorrupt)
			}
			for j := uint64(0); j < n; j++ {
				x.itab[blk+j] = slotSums(g, uint32(grp), blk+j, p[int64(j)*g.bs:int64(j+1)*g.bs])
			}
			for s := uint64(0); s < n*uint64(per); s++ {
				idx := b*uint64(per) + s
				if idx >= nused {
					break
				}
				ino := uint32(uint64(grp)*uint64(g.ipg) + idx + 1)
				if ino > g.ninodes {
					break
				}
				if !tracked(g, ino) || !rawInUse(p[int64(s)*g.isz:]) {
					continue
				}
				r, err := readRec(v, ino)
				if err != nil {
					return nil, err
				}
				if r != nil {
					x.Files[ino] = r
				}
			}
		}
	}
	for ino, r := range x.Files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !r.IsDir() || r.ReadErr != "" {
			continue
		}
		ents, err := v.Ext4().ReadDirInode(ino)
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

func sortLinks(ls []Link) {
	sort.Slice(ls, func(i, j int) bool {
		if ls[i].Parent != ls[j].Parent {
			return ls[i].Parent < ls[j].Parent
		}
		return ls[i].Name < ls[j].Name
	})
}

// tracked reports whether inode ino is a file of the user's tree: the root
// and every inode from the first non-reserved one (the journal, resize and
// other reserved inodes are not files).
func tracked(g *geometry, ino uint32) bool {
	return ino == rootIno || (ino >= g.first && ino != g.journal)
}

// readRec reads inode ino of the volume into a record, or nil when the slot
// holds no live inode. A block map that cannot be read is noted in ReadErr
// (one bad file does not stop a poll).
func readRec(v *fsparse.Volume, ino uint32) (*FileRec, error) {
	in, err := v.Ext4().Inode(ino)
	if err != nil {
		return nil, err
	}
	if in.Mode == 0 || in.Links == 0 {
		return nil, nil
	}
	r := &FileRec{
		Ino: ino, Mode: in.Mode, Uid: in.Uid, Gid: in.Gid, Size: in.Size, Links: in.Links,
		Flags: in.Flags, Gen: in.Generation, Atime: nanos(in.Atime), Mtime: nanos(in.Mtime),
		Ctime: nanos(in.Ctime), Xattr: in.XattrBlock, Inline: in.HasInlineData(),
	}
	if in.HasCrtime {
		r.Crtime = nanos(in.Crtime)
	}
	if in.IsSymlink() {
		if t, err := v.Ext4().ReadlinkInode(ino); err == nil {
			r.Target = t
		} else {
			r.ReadErr = err.Error()
		}
	}
	ext, err := v.Ext4().Extents(ino)
	if err != nil {
		r.ReadErr = err.Error()
		return r, nil
	}
	meta, err := v.Ext4().MetadataBlocks(ino)
	if err != nil {
		r.ReadErr = err.Error()
		return r, nil
	}
	h := fnv.New64a()
	var b [25]byte
	kind := KindData
	if in.IsDir() {
		kind = KindDir
	}
	for _, e := range ext {
		binary.LittleEndian.PutUint64(b[0:], e.Logical)
		binary.LittleEndian.PutUint64(b[8:], e.Physical)
		binary.LittleEndian.PutUint64(b[16:], e.Len)
		b[24] = 0
		if e.Unwritten {
			b[24] = 1
		}
		h.Write(b[:])
		r.Runs = append(r.Runs, Run{e.Physical, e.Len, kind})
	}
	for _, m := range meta {
		binary.LittleEndian.PutUint64(b[0:], m)
		h.Write(b[:8])
		r.Runs = append(r.Runs, Run{m, 1, KindExtent})
	}
	if in.XattrBlock != 0 {
		r.Runs = append(r.Runs, Run{in.XattrBlock, 1, KindXattr})
	}
	r.Extents = h.Sum64()
	return r, nil
}

func nanos(t interface{ UnixNano() int64 }) int64 { return t.UnixNano() }

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

var _ fs.FileMode
