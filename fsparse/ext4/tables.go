package ext4

import (
	"cmp"
	"context"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
)

// inodeTables is the used part of every group's inode table and every
// inode bitmap, held in memory by a view made with WithInodeTables. A nil
// table or bitmap (a group that could not be read) falls back to reading
// the device, so a view gives the same answers and errors as its FS.
type inodeTables struct {
	table  [][]byte // group g: its first itUsed[g] inode slots
	bitmap [][]byte // group g: its inode bitmap (InodeBitmap)
	// dirs holds the blocks of the allocated directories, sorted by
	// first block and disjoint (see prefetchDirs): a read of blocks that
	// lie whole in one run is served from memory.
	dirs []blockRun
}

// blockRun is data read from the device: blocks blk to
// blk+len(data)/blocksize-1.
type blockRun struct {
	blk  uint64
	data []byte
}

// TablesBytes is how many bytes WithInodeTables holds in memory for f:
// the used part of every group's inode table (bg_itable_unused, under
// group descriptor checksums) and every inode bitmap.
func (f *FS) TablesBytes() int64 {
	var n int64
	for g := range f.itUsed {
		n += int64(f.itUsed[g])*int64(f.sb.InodeSize) + int64(f.sb.InodesPerGroup+7)/8
	}
	return n
}

// WithInodeTables returns a view of f that reads every group's inode
// table (its used part) and inode bitmap once, in one sequential read per
// group, spread over the CPUs, and then answers Inode, InodeAllocated,
// InodeBitmap, ScanInodes and everything built on them (directory walks,
// deleted-file scans) from memory instead of one small read per inode. A
// whole-filesystem walk of a tree of many small files is then bound by
// parsing, not by read calls. When the tables would take more than budget
// bytes (TablesBytes), f itself is returned. A group whose table or bitmap
// cannot be read keeps being read from the device, so the view returns
// what f returns, errors included. The view is immutable and safe for
// concurrent use, as f is.
func (f *FS) WithInodeTables(ctx context.Context, budget int64) (*FS, error) {
	if f.tables != nil || f.TablesBytes() > budget {
		return f, nil
	}
	t := &inodeTables{table: make([][]byte, f.ngroup), bitmap: make([][]byte, f.ngroup)}
	isz := uint64(f.sb.InodeSize)
	workers := min(runtime.GOMAXPROCS(0), int(f.ngroup))
	var wg sync.WaitGroup
	var next sync.Mutex
	g := uint32(0)
	take := func() (uint32, bool) {
		next.Lock()
		defer next.Unlock()
		if g >= f.ngroup || ctx.Err() != nil {
			return 0, false
		}
		g++
		return g - 1, true
	}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				g, ok := take()
				if !ok {
					return
				}
				if bm, err := f.InodeBitmap(g); err == nil {
					t.bitmap[g] = bm
				}
				if n := uint64(f.itUsed[g]) * isz; n > 0 {
					b := make([]byte, n)
					if f.readAt(b, int64(f.itable[g]*f.bs)) == nil {
						t.table[g] = b
					}
				}
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	v := *f
	v.tables = t
	if err := v.prefetchDirs(ctx, budget-f.TablesBytes()); err != nil {
		return nil, err
	}
	return &v, nil
}

// dirGapBlocks is the largest gap between two directory extents that a
// prefetch reads through, so that the two come in one read.
const dirGapBlocks = 0

// prefetchDirs reads the written blocks of every allocated directory
// (those below its size) into f.tables.dirs, in few large sequential
// reads sorted by block, spread over the CPUs, when they take at most
// budget bytes; a walk of the tree and a scan of its directories then
// read no directory block from the device, each once instead of
// through small reads. A directory whose inode or map cannot be read,
// and a run that cannot be read, is left out: its reads go to the
// device as in f, with the same errors.
func (f *FS) prefetchDirs(ctx context.Context, budget int64) error {
	t := f.tables
	sb := f.sb
	isz := uint64(sb.InodeSize)
	bs := f.bs
	type ext struct{ blk, n uint64 }
	var exts []ext
	var total uint64
	var in Inode
	for g := uint32(0); g < f.ngroup; g++ {
		tab, bm := t.table[g], t.bitmap[g]
		for i := uint64(0); i < uint64(len(tab))/isz; i++ {
			raw := tab[i*isz : (i+1)*isz]
			if le16(raw, 0)&sIFMT != sIFDIR || i/8 >= uint64(len(bm)) || bm[i/8]&(1<<(i%8)) == 0 {
				continue
			}
			ino := uint64(g)*uint64(sb.InodesPerGroup) + i + 1
			if ino > uint64(sb.InodesCount) {
				break
			}
			if f.parseInodeInto(&in, uint32(ino), raw) != nil || in.HasInlineData() {
				continue
			}
			m, err := f.mapInode(&in)
			if err != nil {
				continue
			}
			nblk := (in.Size + bs - 1) / bs
			for _, e := range m.ext {
				if e.Unwritten || e.Logical >= nblk {
					continue
				}
				n := min(e.Len, nblk-e.Logical)
				if e.Physical >= sb.BlocksCount || n > sb.BlocksCount-e.Physical || e.Physical+n > uint64(f.size)/bs {
					continue // past the filesystem or the device: left to readBlocks
				}
				if total += n; total > uint64(max(budget, 0))/bs {
					return nil // too many: read as f reads them
				}
				exts = append(exts, ext{e.Physical, n})
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	slices.SortFunc(exts, func(a, b ext) int { return cmp.Compare(a.blk, b.blk) })
	// Runs: the extents merged where they overlap, touch or lie at most
	// dirGapBlocks apart (the gap read with them), then cut in pieces of
	// at most dirRunBytes: each is one read and one buffer.
	var spans []ext
	for _, e := range exts {
		if k := len(spans) - 1; k >= 0 && e.blk <= spans[k].blk+spans[k].n+dirGapBlocks {
			spans[k].n = max(spans[k].blk+spans[k].n, e.blk+e.n) - spans[k].blk
			continue
		}
		spans = append(spans, e)
	}
	var runs []ext
	maxRun := max(uint64(dirRunBytes)/bs, 1)
	for _, sp := range spans {
		for i := uint64(0); i < sp.n; i += maxRun {
			runs = append(runs, ext{sp.blk + i, min(maxRun, sp.n-i)})
		}
	}
	var held uint64
	for _, r := range runs {
		held += r.n // with the gaps read through
	}
	if held > uint64(max(budget, 0))/bs {
		return nil
	}
	t.dirs = make([]blockRun, len(runs))
	workers := min(runtime.GOMAXPROCS(0), len(runs))
	var wg sync.WaitGroup
	var next atomic.Int64
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(runs) || ctx.Err() != nil {
					return
				}
				r := runs[i]
				b := make([]byte, r.n*bs)
				if f.readAtDirect(b, int64(r.blk*bs)) == nil {
					t.dirs[i] = blockRun{r.blk, b}
				}
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	// Runs that could not be read are dropped.
	t.dirs = slices.DeleteFunc(t.dirs, func(r blockRun) bool { return r.data == nil })
	return nil
}

// dirBlocks returns blocks blk to blk+n-1 from the directory blocks a
// view holds, or nil when they do not lie whole in one of its runs. The
// slice is shared: read only.
func (f *FS) dirBlocks(blk, n uint64) []byte {
	i, ok := f.dirRun(blk)
	if !ok {
		return nil
	}
	r := f.tables.dirs[i]
	bs := f.bs
	if n > uint64(len(r.data))/bs-(blk-r.blk) {
		return nil
	}
	return r.data[(blk-r.blk)*bs : (blk-r.blk+n)*bs]
}

// dirRun is the index of the run of held directory blocks that holds
// block blk.
func (f *FS) dirRun(blk uint64) (int, bool) {
	if f.tables == nil || len(f.tables.dirs) == 0 {
		return 0, false
	}
	d := f.tables.dirs
	// The last run starting at or before blk.
	i, _ := slices.BinarySearchFunc(d, blk, func(r blockRun, b uint64) int {
		if r.blk <= b {
			return -1
		}
		return 1
	})
	if i == 0 || blk-d[i-1].blk >= uint64(len(d[i-1].data))/f.bs {
		return 0, false
	}
	return i - 1, true
}

// copyDirBlocks copies len(p) bytes from block blk on into p from the
// directory blocks a view holds, across runs that follow each other; it
// reports false, having copied part of p, when some are not held.
func (f *FS) copyDirBlocks(p []byte, blk uint64) bool {
	i, ok := f.dirRun(blk)
	if !ok {
		return false
	}
	d := f.tables.dirs
	off := (blk - d[i].blk) * f.bs
	// Each step copies from one run and moves to the next.
	for len(p) > 0 {
		if i >= len(d) {
			return false
		}
		n := copy(p, d[i].data[off:])
		p = p[n:]
		if len(p) == 0 {
			return true
		}
		end := d[i].blk + uint64(len(d[i].data))/f.bs
		if i++; i >= len(d) || d[i].blk != end {
			return false
		}
		off = 0
	}
	return true
}

// rawInode is the in-memory slot of inode ino (group g, index idx) in a
// view made with WithInodeTables, or nil.
func (f *FS) rawInode(g, idx uint32) []byte {
	if f.tables == nil {
		return nil
	}
	t := f.tables.table[g]
	isz := uint32(f.sb.InodeSize)
	if uint64(idx+1)*uint64(isz) > uint64(len(t)) {
		return nil
	}
	return t[idx*isz : (idx+1)*isz]
}

// inodeBitmap is group g's inode bitmap held by a view, or nil.
func (f *FS) inodeBitmap(g uint32) []byte {
	if f.tables == nil {
		return nil
	}
	return f.tables.bitmap[g]
}
