package dirty

import "slices"

// An Index is one of three things:
//
//   - full: every record in Files (BuildIndex, an index decoded whole, the
//     result of a poll of a full index); owners and children are built;
//   - stored: records read on demand from an IndexSource (the poll state),
//     Files is a cache of what was read;
//   - a delta over a stored base (the result of a poll of a stored index):
//     Files holds the records the poll changed, gone the inodes it deleted,
//     the rest is the base. The poll state saves only the delta.
//
// get, put and del work on all three, so a poll reads only the records the
// dirty ranges touch.

// IndexSource is a stored index read on demand (package dirty/state).
// Rec returns nil, nil for an inode the index does not hold.
type IndexSource interface {
	Rec(ino uint32) (*FileRec, error)
	// Owners calls fn for every stored run overlapping blocks [lo, hi).
	Owners(lo, hi uint64, fn func(start, n uint64, ino uint32, kind Kind)) error
	// Children returns the inodes with a name in directory dir.
	Children(dir uint32) ([]uint32, error)
	// All returns every record.
	All() (map[uint32]*FileRec, error)
	// InodeBlock returns the slot digests of inode-table block blk, nil
	// when unknown.
	InodeBlock(blk uint64) ([]uint64, error)
}

// Delta is what a poll of a stored index changed.
type Delta struct {
	Changed map[uint32]*FileRec
	Deleted []uint32
	Itab    map[uint64][]uint64 // inode-table blocks read: their slot digests
}

// StoredIndex is the index of a volume kept in a poll state.
func StoredIndex(volume, uuid string, blockSize int64, src IndexSource) *Index {
	return &Index{Volume: volume, UUID: uuid, BlockSize: blockSize, Files: map[uint32]*FileRec{},
		src: src, missing: map[uint32]bool{}}
}

// Delta returns, for the result of a poll of a stored index, what the poll
// changed; ok is false for a full index (it must be stored whole).
func (x *Index) Delta() (d *Delta, ok bool) {
	if x.base == nil {
		return nil, false
	}
	d = &Delta{Changed: x.Files, Itab: x.itab}
	for ino := range x.gone {
		d.Deleted = append(d.Deleted, ino)
	}
	return d, true
}

// InodeBlocks calls fn for the slot digests of every inode-table block of
// a full index.
func (x *Index) InodeBlocks(fn func(blk uint64, sums []uint64)) {
	for b, s := range x.itab {
		fn(b, s)
	}
}

// slotDigests returns the slot digests of inode-table block blk, nil when
// unknown.
func (x *Index) slotDigests(blk uint64) []uint64 {
	if s, ok := x.itab[blk]; ok {
		return s
	}
	switch {
	case x.base != nil:
		return x.base.slotDigests(blk)
	case x.src != nil:
		s, err := x.src.InodeBlock(blk)
		x.fail(err)
		return s
	}
	return nil
}

func (x *Index) setDigests(blk uint64, s []uint64) {
	if x.itab == nil {
		x.itab = map[uint64][]uint64{}
	}
	x.itab[blk] = s
}

func (x *Index) stored() bool { return x.src != nil || x.base != nil }

func (x *Index) fail(err error) {
	if err != nil && x.err == nil {
		x.err = err
	}
}

// get returns the record of ino, nil when there is none.
func (x *Index) get(ino uint32) *FileRec {
	if r := x.Files[ino]; r != nil {
		return r
	}
	switch {
	case x.base != nil:
		if x.gone[ino] {
			return nil
		}
		return x.base.get(ino)
	case x.src != nil:
		if x.missing[ino] || x.all {
			return nil
		}
		r, err := x.src.Rec(ino)
		if err != nil {
			x.fail(err)
			return nil
		}
		if r == nil {
			x.missing[ino] = true
			return nil
		}
		x.Files[ino] = r
		return r
	}
	return nil
}

func (x *Index) put(ino uint32, r *FileRec) {
	x.Files[ino] = r
	delete(x.gone, ino)
}

func (x *Index) del(ino uint32) {
	delete(x.Files, ino)
	if x.base != nil {
		if x.gone == nil {
			x.gone = map[uint32]bool{}
		}
		x.gone[ino] = true
	}
}

// mutable returns the record of ino to change in place: in a delta, its
// own copy (a delta saves only its own records).
func (x *Index) mutable(ino uint32) *FileRec {
	r := x.get(ino)
	if r != nil && x.base != nil && !x.own(ino) {
		r = r.clone()
		x.put(ino, r)
	}
	return r
}

// clone copies r to be changed: its own names.
func (r *FileRec) clone() *FileRec {
	c := *r
	c.Names = slices.Clone(r.Names)
	return &c
}

// own reports whether x (a delta) already holds its own copy of ino.
func (x *Index) own(ino uint32) bool {
	if x.base == nil {
		return false
	}
	_, ok := x.Files[ino]
	return ok
}

// derive returns the index a poll of x builds: a copy for a full index, a
// delta for a stored one.
func (x *Index) derive(volume, uuid string, bs int64) *Index {
	if x.stored() {
		return &Index{Volume: volume, UUID: uuid, BlockSize: bs, Files: map[uint32]*FileRec{}, base: x}
	}
	nx := &Index{Volume: volume, UUID: uuid, BlockSize: bs, Files: make(map[uint32]*FileRec, len(x.Files)),
		itab: make(map[uint64][]uint64, len(x.itab))}
	for k, r := range x.Files {
		nx.Files[k] = r
	}
	for k, s := range x.itab {
		nx.itab[k] = s
	}
	return nx
}

// loadAll reads every record of a stored index (a rules change makes every
// file due).
func (x *Index) loadAll() {
	switch {
	case x.base != nil:
		x.base.loadAll()
	case x.src != nil && !x.all:
		m, err := x.src.All()
		if err != nil {
			x.fail(err)
			return
		}
		for ino, r := range m {
			if x.Files[ino] == nil {
				x.Files[ino] = r
			}
		}
		x.all = true
	}
}

// each calls fn for every record of x (loadAll first for a stored index).
func (x *Index) each(fn func(ino uint32, r *FileRec)) {
	if x.base != nil {
		x.base.each(func(ino uint32, r *FileRec) {
			if !x.gone[ino] && x.Files[ino] == nil {
				fn(ino, r)
			}
		})
	}
	for ino, r := range x.Files {
		fn(ino, r)
	}
}

// ownedBy calls fn for every run of x overlapping blocks [lo, hi).
func (x *Index) ownedBy(lo, hi uint64, fn func(o owner)) {
	if x.src == nil {
		if x.owners == nil {
			x.index()
		}
		x.owned(lo, hi, fn)
		return
	}
	x.fail(x.src.Owners(lo, hi, func(start, n uint64, ino uint32, kind Kind) {
		fn(owner{start, n, ino, kind})
	}))
}

// childrenOf returns the inodes with a name in directory d.
func (x *Index) childrenOf(d uint32) []uint32 {
	if x.src == nil {
		if x.Files[d] == nil {
			return nil
		}
		if x.children == nil {
			x.index()
		}
		return x.children[d]
	}
	cs, err := x.src.Children(d)
	x.fail(err)
	return cs
}

// loadErr is the first error reading the stored records under x.
func (x *Index) loadErr() error {
	if x.base != nil {
		return x.base.loadErr()
	}
	return x.err
}

// Each calls fn for every record of x, reading a stored index whole first.
func (x *Index) Each(fn func(ino uint32, r *FileRec)) {
	x.loadAll()
	x.each(fn)
}

// Err returns the first error met reading the stored records under x.
func (x *Index) Err() error { return x.loadErr() }
