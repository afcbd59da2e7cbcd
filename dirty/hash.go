package dirty

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/vmscope/vmscope/dirty/source"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// DefaultChunk is the chunk size of the block-hash index.
const DefaultChunk = 64 << 10

// maxChunks caps the hash index (8 bytes a chunk): 2^26 chunks of 64 KiB
// is a 4 TiB disk in 512 MiB of hashes.
const maxChunks = 1 << 26

// ChunkHashes reads the disk r of size bytes in chunks of chunk bytes and
// returns the first 8 bytes of the sha256 of each (the standard library
// has no faster keyed hash; 64 bits are plenty to notice a change, and a
// guest cannot write a chunk that keeps its hash). A chunk of zeros (an
// unwritten or sparse range) is recognised without hashing it. The disk is
// read in runs of 16 chunks, one worker per CPU.
func ChunkHashes(ctx context.Context, r io.ReaderAt, size, chunk int64) ([]uint64, error) {
	return ChunkHashesData(ctx, r, size, chunk, rangeset.Of(rangeset.Range{Start: 0, End: size}))
}

// ChunkHashesData is ChunkHashes for a disk that reads as zeros outside
// data (disk.Image.DataRanges): those runs of chunks are not read.
func ChunkHashesData(ctx context.Context, r io.ReaderAt, size, chunk int64, data rangeset.Set) ([]uint64, error) {
	if chunk < 512 || chunk > 64<<20 || size < 0 || (size+chunk-1)/chunk > maxChunks {
		return nil, fmt.Errorf("dirty: hash index of a %d-byte disk in chunks of %d bytes: out of range", size, chunk)
	}
	n := (size + chunk - 1) / chunk
	out := make([]uint64, n)
	zero := sha256.Sum256(make([]byte, chunk))
	zeroSum := binary.LittleEndian.Uint64(zero[:8])
	const run = 16
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, runtime.GOMAXPROCS(0))
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, run*chunk)
			for {
				first := next.Add(run) - run
				if first >= n || errs[w] != nil {
					return
				}
				if err := ctx.Err(); err != nil {
					errs[w] = err
					return
				}
				p := buf[:min(run*chunk, size-first*chunk)]
				if int64(len(p)) == run*chunk && !data.Overlaps(first*chunk, first*chunk+int64(len(p))) {
					for i := range int64(run) {
						out[first+i] = zeroSum
					}
					continue
				}
				if k, err := r.ReadAt(p, first*chunk); k < len(p) {
					errs[w] = fmt.Errorf("dirty: hash index: reading chunk %d at byte %d: %w", first, first*chunk, err)
					return
				}
				for i := int64(0); i*chunk < int64(len(p)); i++ {
					c := p[i*chunk : min((i+1)*chunk, int64(len(p)))]
					if int64(len(c)) == chunk && source.IsZero(c) {
						out[first+i] = zeroSum
						continue
					}
					s := sha256.Sum256(c)
					out[first+i] = binary.LittleEndian.Uint64(s[:8])
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// HashDirty returns the byte ranges of the chunks whose hash differs
// between prev and cur (chunks past the end of prev count as changed).
func HashDirty(prev, cur []uint64, chunk, size int64) rangeset.Set {
	var s rangeset.Set
	for i, h := range cur {
		if i >= len(prev) || prev[i] != h {
			s.Add(int64(i)*chunk, min(int64(i+1)*chunk, size))
		}
	}
	return s
}
