package ntfs

import (
	"encoding/binary"
	"fmt"
	"io"
)

// DirEntry is one entry of a $I30 index: the file's record and its
// $FILE_NAME key.
type DirEntry struct {
	Record uint64
	Seq    uint16
	FileName
}

// ReadIndex lists the $I30 index of directory record num: every entry of
// the index root and of the INDX blocks the tree reaches, DOS names
// (namespace 2) left out, in index order.
func (f *FS) ReadIndex(num uint64) ([]DirEntry, error) {
	x, err := f.file(num)
	if err != nil {
		return nil, err
	}
	return f.readIndex(x)
}

func (f *FS) readIndex(x *File) ([]DirEntry, error) {
	what := fmt.Sprintf("MFT record %d", x.Rec.Num)
	var root *Attr
	for i := range x.attrs {
		if x.attrs[i].Type == attrIndexRoot && x.attrs[i].Name == "$I30" {
			root = &x.attrs[i]
		}
	}
	if root == nil || !root.Resident {
		return nil, fmt.Errorf("%w: %s is not a directory (no $I30 index root)", ErrNotExist, what)
	}
	v := root.Value
	if len(v) < 32 {
		return nil, corrupt(what, -1, "$I30 index root of %d bytes", len(v))
	}
	bsize := int64(binary.LittleEndian.Uint32(v[8:]))
	w := &indexWalk{f: f, what: what, rec: x.Rec.Num, bsize: bsize, seen: map[uint64]bool{}}
	if alloc := x.streamOf(attrIndexAlloc, "$I30"); alloc != nil {
		if bsize < 512 || bsize > maxIndexBlock || bsize&(bsize-1) != 0 {
			return nil, corrupt(what, -1, "$I30 index block size %d", bsize)
		}
		w.alloc = f.streamReader(alloc, x.Rec.Num)
	}
	if err := w.node(v[16:], -1, 0); err != nil {
		return nil, err
	}
	return w.out, nil
}

type indexWalk struct {
	f     *FS
	what  string
	rec   uint64
	bsize int64
	alloc *streamReader
	seen  map[uint64]bool
	out   []DirEntry
	nodes int
}

// node walks one index node (b starts at its node header; boff is its
// offset in the volume or -1 for the root), in key order.
func (w *indexWalk) node(b []byte, boff int64, depth int) error {
	if depth > maxIndexDepth {
		return corrupt(w.what, boff, "$I30 index deeper than %d levels", maxIndexDepth)
	}
	if w.nodes++; w.nodes > maxIndexNodes {
		return corrupt(w.what, boff, "$I30 index of more than %d nodes", maxIndexNodes)
	}
	if len(b) < 16 {
		return corrupt(w.what, boff, "index node header of %d bytes", len(b))
	}
	start := int(binary.LittleEndian.Uint32(b[0:]))
	end := int(binary.LittleEndian.Uint32(b[4:]))
	if start < 16 || end > len(b) || start > end {
		return corrupt(w.what, boff, "index entries [%d, %d) in a node of %d bytes", start, end, len(b))
	}
	for p := start; ; {
		if p+16 > end {
			return corrupt(w.what, boff, "index entry at %d runs past the node's entries (%d) without a last entry", p, end)
		}
		elen := int(binary.LittleEndian.Uint16(b[p+8:]))
		klen := int(binary.LittleEndian.Uint16(b[p+10:]))
		flags := binary.LittleEndian.Uint32(b[p+12:])
		if elen < 16 || elen%8 != 0 || p+elen > end || 16+klen > elen {
			return corrupt(w.what, boff, "index entry at %d of length %d (key %d, node entries end at %d)", p, elen, klen, end)
		}
		e := b[p : p+elen]
		if flags&1 != 0 { // subnode
			if elen < 16+klen+8 {
				return corrupt(w.what, boff, "index entry at %d has a subnode but %d bytes", p, elen)
			}
			vcn := binary.LittleEndian.Uint64(e[elen-8:])
			if err := w.child(vcn, depth); err != nil {
				return err
			}
		}
		if flags&2 != 0 {
			return nil
		}
		if klen > 0 {
			ref := binary.LittleEndian.Uint64(e[0:])
			fn, ok := parseFileName(e[16 : 16+klen])
			if !ok {
				return corrupt(w.what, boff, "index entry at %d: $FILE_NAME key of %d bytes", p, klen)
			}
			if fn.Namespace != 2 {
				w.out = append(w.out, DirEntry{Record: ref & 0xFFFFFFFFFFFF, Seq: uint16(ref >> 48), FileName: fn})
			}
		}
		p += elen
	}
}

// child reads and walks the INDX block at vcn of the index allocation.
func (w *indexWalk) child(vcn uint64, depth int) error {
	if w.alloc == nil {
		return corrupt(w.what, -1, "$I30 entry points to index block VCN %d but there is no index allocation", vcn)
	}
	cs := w.f.ClusterSize
	var off int64
	if w.bsize >= cs {
		off = int64(vcn) * cs
	} else {
		off = int64(vcn) * 512 // blocks smaller than a cluster are addressed in 512-byte units
	}
	if vcn > uint64(w.alloc.Size()) || off < 0 || off+w.bsize > w.alloc.Size() {
		return corrupt(w.what, -1, "$I30 index block VCN %d past the index allocation (%d bytes)", vcn, w.alloc.Size())
	}
	if w.seen[uint64(off)] {
		return corrupt(w.what, -1, "$I30 index block VCN %d reached twice (loop)", vcn)
	}
	w.seen[uint64(off)] = true
	b := make([]byte, w.bsize)
	if n, err := w.alloc.ReadAt(b, off); n < len(b) {
		return fmt.Errorf("%s: $I30 index block VCN %d: %w", w.what, vcn, errOr(err, io.ErrUnexpectedEOF))
	}
	what := fmt.Sprintf("%s $I30 INDX block VCN %d", w.what, vcn)
	if string(b[:4]) != "INDX" {
		return corrupt(what, -1, "magic %q, want INDX", b[:4])
	}
	if err := applyFixups(b, what, -1); err != nil {
		return err
	}
	if got := binary.LittleEndian.Uint64(b[16:]); got != vcn {
		return corrupt(what, -1, "block says VCN %d", got)
	}
	return w.node(b[24:], -1, depth+1)
}
