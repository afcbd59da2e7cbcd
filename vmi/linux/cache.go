package linux

import (
	"io"
	"sync"

	"github.com/vmscope/vmscope/vmi"
)

// pageCache keeps recently read 4 KiB pages of guest-physical memory:
// walks read many small fields of the same pages, and a compressed dump
// (kdump) decompresses a whole page for each read. Large reads bypass it.
type pageCache struct {
	vmi.Memory
	mu    sync.Mutex
	pages map[uint64][]byte
	max   int
}

const (
	cachePage   = 4096
	cachePages  = 4096 // 16 MiB
	cacheBypass = 16 << 10
)

func newPageCache(m vmi.Memory) *pageCache {
	return &pageCache{Memory: m, pages: map[uint64][]byte{}, max: cachePages}
}

func (c *pageCache) ReadAt(p []byte, off int64) (int, error) {
	if len(p) > cacheBypass || off < 0 {
		return c.Memory.ReadAt(p, off)
	}
	n := 0
	for n < len(p) {
		a := uint64(off) + uint64(n)
		pfn := a / cachePage
		pg, err := c.page(pfn)
		if err != nil {
			// fall back to the reader for the exact bytes and its error
			m, err := c.Memory.ReadAt(p[n:], int64(a))
			return n + m, err
		}
		n += copy(p[n:], pg[a%cachePage:])
	}
	return n, nil
}

func (c *pageCache) page(pfn uint64) ([]byte, error) {
	c.mu.Lock()
	pg, ok := c.pages[pfn]
	c.mu.Unlock()
	if ok {
		return pg, nil
	}
	pg = make([]byte, cachePage)
	if m, err := c.Memory.ReadAt(pg, int64(pfn*cachePage)); m < cachePage {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	c.mu.Lock()
	if len(c.pages) >= c.max {
		for k := range c.pages { // evict an arbitrary page
			delete(c.pages, k)
			break
		}
	}
	c.pages[pfn] = pg
	c.mu.Unlock()
	return pg, nil
}
