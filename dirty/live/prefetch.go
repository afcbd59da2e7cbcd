package live

import (
	"context"
	"io"
	"sync"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// The dirty blocks are what the mapping reads first and most (inode
// tables, directories, extent trees, the data of the changed files), one
// small read after another: over NBD each is a round trip to a QEMU that
// is busy running the guest. They are read ahead, all at once (many
// requests in flight), in the units the disk's cache reads (64 KiB), and
// served from memory. The export is a frozen view: what is read ahead
// stays true.
const (
	prefetchUnit = 64 << 10
	prefetchMax  = 256 << 20 // beyond that, reads go to the export as they come
	prefetchJobs = 16
)

type prefetched struct {
	r     io.ReaderAt
	size  int64
	units map[int64][]byte // unit index → its bytes
}

// prefetch reads the units of r (size bytes) that dirty touches, unless
// they are more than prefetchMax bytes; units that fail are left to be
// read when asked (and fail then, with their error).
func prefetch(ctx context.Context, r io.ReaderAt, size int64, dirty rangeset.Set) *prefetched {
	p := &prefetched{r: r, size: size, units: map[int64][]byte{}}
	// The dirty ranges come from the export (a whole disk's may be
	// dirty): units are listed only up to prefetchMax.
	var idx []int64
	for _, rg := range dirty.Clip(0, size).Ranges() {
		for u := rg.Start / prefetchUnit; u*prefetchUnit < rg.End; u++ {
			if n := len(idx); n == 0 || idx[n-1] != u {
				if int64(n+1)*prefetchUnit > prefetchMax {
					return p
				}
				idx = append(idx, u)
			}
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan int64)
	for range min(prefetchJobs, len(idx)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range next {
				b := make([]byte, min(prefetchUnit, size-u*prefetchUnit))
				if n, err := r.ReadAt(b, u*prefetchUnit); n == len(b) && (err == nil || err == io.EOF) {
					mu.Lock()
					p.units[u] = b
					mu.Unlock()
				}
			}
		}()
	}
	for _, u := range idx {
		if ctx.Err() != nil {
			break
		}
		next <- u
	}
	close(next)
	wg.Wait()
	return p
}

// ReadAt serves a read inside one prefetched unit from memory, any other
// from the export.
func (p *prefetched) ReadAt(b []byte, off int64) (int, error) {
	if off >= 0 && len(b) > 0 {
		u, in := off/prefetchUnit, off%prefetchUnit
		if buf, ok := p.units[u]; ok && in+int64(len(b)) <= int64(len(buf)) {
			return copy(b, buf[in:]), nil
		}
	}
	return p.r.ReadAt(b, off)
}
