package dirty

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// DefaultChunk is the chunk size of the block-hash index.
const DefaultChunk = 64 << 10

// maxChunks caps the hash index (8 bytes a chunk): 2^26 chunks of 64 KiB
// is a 4 TiB disk in 512 MiB of hashes.
const maxChunks = 1 << 26

// ChunkHashes reads the disk r of size bytes sequentially in chunks of
// chunk bytes and returns the first 8 bytes of the sha256 of each (the
// standard library has no faster keyed hash; 64 bits are plenty to notice
// a change, and a collision only delays a report to the next change).
func ChunkHashes(ctx context.Context, r io.ReaderAt, size, chunk int64) ([]uint64, error) {
	if chunk < 512 || chunk > 64<<20 || size < 0 || (size+chunk-1)/chunk > maxChunks {
		return nil, fmt.Errorf("dirty: hash index of a %d-byte disk in chunks of %d bytes: out of range", size, chunk)
	}
	n := (size + chunk - 1) / chunk
	out := make([]uint64, n)
	buf := make([]byte, chunk)
	for i := int64(0); i < n; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p := buf[:min(chunk, size-i*chunk)]
		if k, err := r.ReadAt(p, i*chunk); k < len(p) {
			return nil, fmt.Errorf("dirty: hash index: reading chunk %d at byte %d: %w", i, i*chunk, err)
		}
		s := sha256.Sum256(p)
		out[i] = binary.LittleEndian.Uint64(s[:8])
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
