package ext4

import (
	"context"
	"runtime"
	"sync"
)

// inodeTables is the used part of every group's inode table and every
// inode bitmap, held in memory by a view made with WithInodeTables. A nil
// table or bitmap (a group that could not be read) falls back to reading
// the device, so a view gives the same answers and errors as its FS.
type inodeTables struct {
	table  [][]byte // group g: its first itUsed[g] inode slots
	bitmap [][]byte // group g: its inode bitmap (InodeBitmap)
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
	return &v, nil
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
