package watch

import (
	"io"

	"github.com/vmscope/vmscope/vmi"
)

// stopCache reads guest-physical memory a page at a time and keeps the
// pages until reset: valid only while the guest stays stopped (one stop
// of a trace), when the same page-table and object pages are read many
// times. At most maxCached pages are kept.
type stopCache struct {
	m     io.ReaderAt
	pages map[int64][]byte
}

const maxCached = 1024

func (c *stopCache) reset() { c.pages = map[int64][]byte{} }

func (c *stopCache) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		a := off + int64(n)
		base := a &^ 4095
		pg, ok := c.pages[base]
		if !ok {
			pg = make([]byte, 4096)
			m, err := c.m.ReadAt(pg, base)
			if m < 4096 {
				// a page not wholly present: read what was asked, uncached
				k, err := c.m.ReadAt(p[n:], a)
				return n + k, err
			}
			_ = err
			if len(c.pages) >= maxCached {
				c.reset()
			}
			c.pages[base] = pg
		}
		n += copy(p[n:], pg[a-base:])
	}
	return n, nil
}

// cachedSpace is the kernel address space read through a stopCache.
func cachedSpace(as vmi.AddressSpace) (vmi.AddressSpace, *stopCache) {
	c := &stopCache{m: as.Mem}
	c.reset()
	as.Mem = c
	return as, c
}
