package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// The cumulative dirty sources (a copy-on-write overlay, a persistent
// bitmap) report every guest range written since they started, not since
// the last poll, and at their own granularity (a 64 KiB cluster or granule
// holds many small files). The poll state keeps a hash of each 4 KiB block
// as the last poll saw it, so a poll narrows the source's ranges to the
// blocks whose bytes really changed since then ([Refine]):
//
//   - cow: the blocks that differed at the last poll from the layer below
//     the top overlay; any other block equalled that layer, a backing file
//     that has not changed since: it is compared with that layer's bytes.
//     When an external snapshot adds an overlay, the next hashes are of
//     the blocks that differ from the layer below the new top;
//   - bitmap: every block of the disk (hashed once, by the first poll, which
//     scans everything anyway); a poll re-hashes only the bitmap's blocks.
//
// A hash is the first 8 bytes of the block's sha256: a guest cannot write a
// block that keeps its hash (a second preimage of 64 bits of sha256), and
// the standard library has no faster keyed hash.

// HashBlock is the size of a hashed block.
const HashBlock = 4096

// HashGroup is the number of blocks whose hashes are stored together (1 MiB
// of disk in 2 KiB).
const HashGroup = 256

// maxHashGroups caps the groups of distinct hashes a map holds in memory:
// 2^20 groups is 1 TiB of written disk in 2 GiB of hashes (unwritten space
// costs 8 bytes a MiB).
var maxHashGroups = 1 << 20 // a variable for the test of the bound

// HashSource reads the stored hashes of one group: HashGroup entries (0
// for a block not hashed), or one entry when every block of the group has
// that hash; nil when the group is not stored.
type HashSource interface {
	HashGroup(g uint64) ([]uint64, error)
	// EachGroup calls fn for every stored group, in order.
	EachGroup(fn func(g uint64, hashes []uint64)) error
}

// BlockHashes maps 4 KiB blocks of the guest disk to their hash, read on
// demand from a stored source; 0 means not known. A group whose blocks all
// have the same hash (unwritten space: zeros) is held as that one hash.
type BlockHashes struct {
	src     HashSource
	groups  map[uint64][]uint64 // read or changed: HashGroup entries, or 1 (uniform)
	full    int                 // groups of HashGroup entries
	changed map[uint64]bool
	// reset: the stored groups are replaced by these (a new map).
	reset bool
	err   error
}

// NewBlockHashes returns the hashes stored in src (nil: a new, empty map
// that replaces the stored one when saved).
func NewBlockHashes(src HashSource) *BlockHashes {
	return &BlockHashes{src: src, groups: map[uint64][]uint64{}, changed: map[uint64]bool{}, reset: src == nil}
}

// Changed returns the groups to store (HashGroup hashes, or one for a
// uniform group) and whether they replace every stored group (a new map)
// or only the groups they name.
func (h *BlockHashes) Changed() (groups map[uint64][]uint64, replace bool) {
	out := make(map[uint64][]uint64, len(h.changed))
	for g := range h.changed {
		out[g] = h.groups[g]
	}
	if h.reset {
		for g, s := range h.groups {
			if s != nil {
				out[g] = s
			}
		}
	}
	return out, h.reset
}

func (h *BlockHashes) group(g uint64) []uint64 {
	if s, ok := h.groups[g]; ok {
		return s
	}
	var s []uint64
	if h.src != nil && !h.reset {
		var err error
		s, err = h.src.HashGroup(g)
		if err != nil && h.err == nil {
			h.err = err
		}
		if len(s) != HashGroup && len(s) != 1 {
			s = nil
		}
	}
	h.groups[g] = s
	if len(s) == HashGroup {
		h.full++
	}
	return s
}

// get returns the hash of block b, 0 when not known.
func (h *BlockHashes) get(b uint64) uint64 {
	switch s := h.group(b / HashGroup); len(s) {
	case 0:
		return 0
	case 1:
		return s[0]
	default:
		return s[b%HashGroup]
	}
}

func (h *BlockHashes) set(b, v uint64) {
	g := b / HashGroup
	s := h.group(g)
	switch {
	case len(s) == 1 && s[0] == v:
		return
	case len(s) <= 1:
		full := make([]uint64, HashGroup)
		if len(s) == 1 {
			for i := range full {
				full[i] = s[0]
			}
		}
		h.groups[g], s = full, full
		h.full++
	}
	if s[b%HashGroup] != v {
		s[b%HashGroup] = v
		h.changed[g] = true
	}
}

// Known returns the blocks that have a hash, as guest byte ranges (a
// block's range is not clipped to the disk's end).
func (h *BlockHashes) Known() (rangeset.Set, error) {
	var out rangeset.Set
	add := func(g uint64, s []uint64) {
		for i, v := range s {
			if v == 0 {
				continue
			}
			if len(s) == 1 {
				out.Add(int64(g*HashGroup)*HashBlock, int64((g+1)*HashGroup)*HashBlock)
				return
			}
			b := int64(g*HashGroup) + int64(i)
			out.Add(b*HashBlock, (b+1)*HashBlock)
		}
	}
	if h.src != nil && !h.reset {
		if err := h.src.EachGroup(func(g uint64, s []uint64) {
			if _, ok := h.groups[g]; !ok {
				add(g, s)
			}
		}); err != nil {
			return out, err
		}
	}
	for g, s := range h.groups {
		add(g, s)
	}
	return out, nil
}

// compact holds the groups [lo, hi] whose blocks all have one hash as that
// hash.
func (h *BlockHashes) compact(lo, hi uint64) {
	for g := lo; g <= hi; g++ {
		s := h.groups[g]
		if len(s) == HashGroup && slices.Min(s) == slices.Max(s) {
			h.groups[g] = []uint64{s[0]}
			h.full--
		}
	}
}

// blockHash is the hash of one block; never 0 (0 means not known).
func blockHash(p []byte) uint64 {
	if IsZero(p) && len(p) == HashBlock {
		return zeroHash
	}
	s := sha256.Sum256(p)
	return max(binary.LittleEndian.Uint64(s[:8]), 1)
}

var zeroHash = func() uint64 {
	s := sha256.Sum256(make([]byte, HashBlock))
	return max(binary.LittleEndian.Uint64(s[:8]), 1)
}()

var zeros [HashBlock]byte

// IsZero reports whether p holds only zero bytes.
func IsZero(p []byte) bool {
	for len(p) >= HashBlock {
		if !bytes.Equal(p[:HashBlock], zeros[:]) {
			return false
		}
		p = p[HashBlock:]
	}
	return bytes.Equal(p, zeros[:len(p)])
}

// refineBuf is how much of the disk a refine worker reads at once.
const refineBuf = 1 << 20

// refineBatch is how many reads of refineBuf run before their results are
// merged (it bounds the memory of a refine of a large dirty set).
const refineBatch = 64

// refineItem is one read of refine: blocks [start, start+n).
type refineItem struct {
	start, n int64
	hash     []uint64 // per block; 0 where it was not needed
	eqOld    []bool   // per block: equal to the old bytes
	eqNext   []bool   // per block: equal to the next poll's reference
	err      error
}

// Refs are what refine compares the blocks with.
type Refs struct {
	// Prev: the hashes of the last poll (nil: none); Next: where the
	// hashes for the next poll go (may be Prev: it is updated).
	Prev, Next *BlockHashes
	// Old: the disk as it was at the last poll for the blocks Prev holds
	// no hash of (nil: not known: such a block counts as changed).
	Old io.ReaderAt
	// NextOld: the next poll's Old; Next keeps a hash only of the blocks
	// that differ from it (nil: of every block).
	NextOld io.ReaderAt
}

// refine returns the 4 KiB blocks (as guest byte ranges, clipped to size)
// of the ranges dirty on disk r whose bytes changed since the last poll,
// and records in ref.Next the hashes the next poll needs. A block's bytes
// at the last poll are known by its hash in ref.Prev, else as the bytes of
// ref.Old at the same offset. The blocks are read and hashed by one worker
// per CPU.
func Refine(ctx context.Context, r io.ReaderAt, size int64, dirty rangeset.Set, ref Refs) (rangeset.Set, error) {
	var out rangeset.Set
	var blocks rangeset.Set
	for _, x := range dirty.Clip(0, size).Ranges() {
		blocks.Add(x.Start/HashBlock, (x.End+HashBlock-1)/HashBlock)
	}
	prev, next := ref.Prev, ref.Next
	var items []refineItem
	flush := func() error {
		refineWork(ctx, r, size, ref.Old, ref.NextOld, items)
		for i := range items {
			it := &items[i]
			if it.err != nil {
				return it.err
			}
			for j, h := range it.hash {
				bn := uint64(it.start + int64(j))
				var was uint64
				if prev != nil {
					was = prev.get(bn)
				}
				// A block equal to old is as it was at the last poll,
				// unless that poll kept a hash of it (it keeps one only
				// of a block that differs from old).
				now := h
				if it.eqOld[j] {
					now = 0
				}
				if now != was {
					off := int64(bn) * HashBlock
					out.Add(off, min(off+HashBlock, size))
				}
				switch {
				case !it.eqNext[j]:
					next.set(bn, h)
				case next == prev && was != 0:
					next.set(bn, 0)
				}
			}
		}
		if len(items) > 0 {
			last := items[len(items)-1]
			next.compact(uint64(items[0].start)/HashGroup, uint64(last.start+last.n-1)/HashGroup)
		}
		items = items[:0]
		if prev != nil && prev.err != nil {
			return fmt.Errorf("dirty: poll state: block hashes: %w", prev.err)
		}
		if next.full > maxHashGroups || prev != nil && prev.full > maxHashGroups {
			return fmt.Errorf("dirty: block hashes of more than %d MiB of written disk: more than a poll state holds", maxHashGroups)
		}
		return nil
	}
	for _, x := range blocks.Ranges() {
		for b := x.Start; b < x.End; {
			n := min(x.End-b, refineBuf/HashBlock)
			items = append(items, refineItem{start: b, n: n})
			b += n
			if len(items) == refineBatch {
				if err := flush(); err != nil {
					return out, err
				}
			}
		}
	}
	return out, flush()
}

// refineWork reads and hashes items, one worker per CPU.
func refineWork(ctx context.Context, r io.ReaderAt, size int64, old, nextOld io.ReaderAt, items []refineItem) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.GOMAXPROCS(0), len(items)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, refineBuf)
			var obuf, nbuf []byte
			if old != nil {
				obuf = make([]byte, refineBuf)
			}
			if nextOld != nil && nextOld != old {
				nbuf = make([]byte, refineBuf)
			}
			read := func(src io.ReaderAt, p []byte, off int64, what string) error {
				if k, err := src.ReadAt(p, off); k < len(p) {
					return fmt.Errorf("dirty: reading %s at byte %d: %w", what, off, err)
				}
				return nil
			}
			for {
				i := int(next.Add(1)) - 1
				if i >= len(items) {
					return
				}
				it := &items[i]
				if it.err = ctx.Err(); it.err != nil {
					continue
				}
				off := it.start * HashBlock
				p := buf[:min(it.n*HashBlock, size-off)]
				if it.err = read(r, p, off, "the dirty blocks"); it.err != nil {
					continue
				}
				var op, np []byte
				if obuf != nil {
					op = obuf[:len(p)]
					if it.err = read(old, op, off, "the older layer"); it.err != nil {
						continue
					}
				}
				if nbuf != nil {
					np = nbuf[:len(p)]
					if it.err = read(nextOld, np, off, "the layer below the top"); it.err != nil {
						continue
					}
				}
				it.hash, it.eqOld, it.eqNext = make([]uint64, it.n), make([]bool, it.n), make([]bool, it.n)
				for j := range it.hash {
					lo, hi := int64(j)*HashBlock, min(int64(j+1)*HashBlock, int64(len(p)))
					blk := p[lo:hi]
					it.eqOld[j] = op != nil && bytes.Equal(blk, op[lo:hi])
					switch {
					case nextOld == nil:
					case nextOld == old:
						it.eqNext[j] = it.eqOld[j]
					default:
						it.eqNext[j] = bytes.Equal(blk, np[lo:hi])
					}
					if !it.eqOld[j] || !it.eqNext[j] {
						it.hash[j] = blockHash(blk)
					}
				}
			}
		}()
	}
	wg.Wait()
}

// HashDisk hashes every block of disk r into a new map: the first poll of a
// bitmap source, so that later polls know what each block held.
func HashDisk(ctx context.Context, r io.ReaderAt, size int64) (*BlockHashes, error) {
	var all rangeset.Set
	all.Add(0, size)
	h := NewBlockHashes(nil)
	_, err := Refine(ctx, r, size, all, Refs{Next: h})
	return h, err
}
