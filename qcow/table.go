package qcow

import (
	"context"
	"encoding/binary"

	"github.com/vmscope/vmscope/internal/rangeset"
)

const (
	l1OffsetMask   = 0x00fffffffffffe00
	l1ReservedMask = 0x7f000000000001ff
	l2OffsetMask   = 0x00fffffffffffe00
	l2Compressed   = 1 << 62
	l2ZeroFlag     = 1 << 0
)

// readL1 reads the active L1 table (its first minL1 entries, the ones that
// map guest clusters) and checks that every L2 table it points to is cluster
// aligned and inside the file.
func readL1(path string, f readerAt, h *header) ([]uint64, error) {
	n := h.minL1
	if n == 0 {
		return nil, nil
	}
	buf := make([]byte, n*8) // n <= maxL1Entries, and the table is inside the file
	if _, err := f.ReadAt(buf, int64(h.l1Offset)); err != nil {
		return nil, &Error{Path: path, What: "L1 table", Offset: int64(h.l1Offset), Err: err}
	}
	l1 := make([]uint64, n)
	for i := range l1 {
		e := binary.BigEndian.Uint64(buf[i*8:])
		at := int64(h.l1Offset) + int64(i)*8
		if e&l1ReservedMask != 0 {
			return nil, corrupt(path, "L1 table entry", at, "entry %d %#x has reserved bits set", i, e)
		}
		off := e & l1OffsetMask
		if off != 0 {
			if off%uint64(h.clusterSize) != 0 {
				return nil, corrupt(path, "L1 table entry", at, "entry %d: L2 table offset %#x not cluster aligned", i, off)
			}
			if off > uint64(h.fileSize) || uint64(h.fileSize)-off < uint64(h.clusterSize) {
				return nil, corrupt(path, "L1 table entry", at, "entry %d: L2 table at %#x past the end of the %d-byte file", i, off, h.fileSize)
			}
		}
		l1[i] = off
	}
	return l1, nil
}

type readerAt interface {
	ReadAt(p []byte, off int64) (int, error)
}

// allocated walks the L1 and L2 tables of one qcow2 file and returns the guest
// ranges the file holds itself. One bounded read per L2 table; every entry is
// checked before it is counted.
func allocated(ctx context.Context, path string, f readerAt, h *header, l1 []uint64) (rangeset.Set, error) {
	var set rangeset.Set
	cs := h.clusterSize
	size := int64(h.size)
	perL1 := cs * h.l2Entries
	fileSize := uint64(h.fileSize)
	buf := make([]byte, cs)
	be := binary.BigEndian
	// Compressed cluster descriptor: host offset in bits 0..x-1.
	x := 62 - (h.clusterBits - 8)
	compMask := uint64(1)<<x - 1
	sub := cs / 32
	for i, l2off := range l1 {
		if l2off == 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rangeset.Set{}, err
		}
		if _, err := f.ReadAt(buf, int64(l2off)); err != nil {
			return rangeset.Set{}, &Error{Path: path, What: "L2 table", Offset: int64(l2off), Err: err}
		}
		base := int64(i) * perL1
		for j := int64(0); j < h.l2Entries; j++ {
			g := base + j*cs
			if g >= size {
				break
			}
			end := min(g+cs, size)
			at := int64(l2off) + j*h.l2EntrySize
			e := be.Uint64(buf[j*h.l2EntrySize:])
			if e&l2Compressed != 0 {
				host := e & compMask
				if host == 0 || host >= fileSize {
					return rangeset.Set{}, corrupt(path, "L2 table entry", at, "compressed cluster for guest offset %d at host offset %#x outside the %d-byte file", g, host, fileSize)
				}
				set.Add(g, end)
				continue
			}
			host := e & l2OffsetMask
			if host != 0 && host%uint64(cs) != 0 {
				return rangeset.Set{}, corrupt(path, "L2 table entry", at, "cluster for guest offset %d at unaligned host offset %#x", g, host)
			}
			if !h.extendedL2 {
				zero := e&l2ZeroFlag != 0
				if host == 0 && !zero {
					continue // unallocated: read from the backing file, or zeros
				}
				if !zero && host >= fileSize {
					return rangeset.Set{}, corrupt(path, "L2 table entry", at, "cluster for guest offset %d at host offset %#x past the end of the %d-byte file", g, host, fileSize)
				}
				set.Add(g, end)
				continue
			}
			bm := be.Uint64(buf[j*h.l2EntrySize+8:])
			alloc, zero := uint32(bm), uint32(bm>>32)
			if alloc&zero != 0 {
				return rangeset.Set{}, corrupt(path, "L2 table entry", at, "subclusters %#x both allocated and zero", alloc&zero)
			}
			if alloc != 0 && (host == 0 || host >= fileSize) {
				return rangeset.Set{}, corrupt(path, "L2 table entry", at, "allocated subclusters for guest offset %d at host offset %#x outside the %d-byte file", g, host, fileSize)
			}
			present := alloc | zero
			for k := int64(0); k < 32 && present != 0; k++ {
				if present&(1<<k) != 0 {
					set.Add(min(g+k*sub, size), min(g+(k+1)*sub, size))
				}
			}
		}
	}
	return set, nil
}
