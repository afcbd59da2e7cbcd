package live

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"sync/atomic"
	"testing"

	"github.com/vmscope/vmscope/internal/rangeset"
)

type countReader struct {
	r     io.ReaderAt
	reads atomic.Int64
}

func (c *countReader) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	return c.r.ReadAt(p, off)
}

// TestPrefetchSameBytes: reads through the read-ahead give the bytes and
// the errors of the reader, at any offset and length (inside a unit,
// across units, at and past the end); reads inside prefetched units do
// not reach the reader.
func TestPrefetchSameBytes(t *testing.T) {
	size := int64(10*prefetchUnit + 1234)
	data := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(data)
	src := &countReader{r: bytes.NewReader(data)}
	dirty := rangeset.Of(rangeset.Range{Start: 100, End: 200}, rangeset.Range{Start: 3*prefetchUnit + 5, End: 5 * prefetchUnit}, rangeset.Range{Start: size - 10, End: size})
	p := prefetch(context.Background(), src, size, dirty)
	if len(p.units) != 4 { // units 0, 3, 4 and the last (short) one, 10
		t.Fatalf("prefetched units %d", len(p.units))
	}
	before := src.reads.Load()
	rng := rand.New(rand.NewSource(2))
	for i := 0; i < 5000; i++ {
		off := rng.Int63n(size + 100)
		n := rng.Intn(3 * prefetchUnit)
		a, b := make([]byte, n), make([]byte, n)
		na, ea := p.ReadAt(a, off)
		nb, eb := bytes.NewReader(data).ReadAt(b, off)
		if na != nb || !bytes.Equal(a[:na], b[:nb]) || (ea == nil) != (eb == nil) && !(ea == nil && na == n) {
			t.Fatalf("read %d at %d: %d %v, want %d %v", n, off, na, ea, nb, eb)
		}
	}
	src.reads.Store(before)
	for _, r := range [][2]int64{{0, 4096}, {3 * prefetchUnit, 4096}, {4*prefetchUnit + 100, 4096}, {size - 1234, 1234}} {
		off, buf := r[0], make([]byte, r[1])
		if _, err := p.ReadAt(buf, off); err != nil || !bytes.Equal(buf, data[off:off+r[1]]) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	if n := src.reads.Load() - before; n != 0 {
		t.Errorf("%d reads of prefetched units reached the reader", n)
	}
}

// TestPrefetchBoundedByDirty: a disk dirty from end to end (an exabyte
// export) is not read ahead, and listing its units stops at prefetchMax
// (the test would run out of memory or time otherwise).
func TestPrefetchBoundedByDirty(t *testing.T) {
	size := int64(1) << 60
	src := &countReader{r: bytes.NewReader(nil)}
	p := prefetch(context.Background(), src, size, rangeset.Of(rangeset.Range{Start: 0, End: size}))
	if len(p.units) != 0 || src.reads.Load() != 0 {
		t.Fatalf("%d units prefetched, %d reads, want none", len(p.units), src.reads.Load())
	}
}
