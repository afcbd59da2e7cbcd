package xfs

import (
	"fmt"

	"github.com/vmscope/vmscope/vmerr"
)

const (
	inobtMagicV4 = 0x49414254 // "IABT"
	inobtMagicV5 = 0x49414233 // "IAB3"

	inodesPerChunk = 64
	// maxChunks caps the inode chunks read from one AG's inode B+tree.
	maxChunks = 1 << 22
)

// Chunk is a run of inode slots that the inode B+tree records as
// allocated: Count inodes from inode number First, in volume blocks
// [Block, Block+Blocks). A sparse chunk is split into its allocated runs.
type Chunk struct {
	AG     uint32
	First  uint64 // inode number of the first slot
	Count  uint32 // slots
	Block  uint64 // linear volume block of the first slot
	Blocks uint64
	Free   uint64 // the chunk record's free mask, bit i for slot i of the 64
}

// Chunks reads every AG's inode B+tree and returns the allocated inode
// chunks, in volume order.
func (f *FS) Chunks() ([]Chunk, error) {
	var out []Chunk
	ss := int64(f.sb.SectSize)
	b := make([]byte, ss)
	for ag := uint32(0); ag < f.sb.AGCount; ag++ {
		off := (int64(ag)*int64(f.sb.AGBlocks) + 0) * f.bs
		off += 2 * ss
		if err := f.readAt(b, off); err != nil {
			return nil, err
		}
		root, level := be32(b, 20), be32(b, 24)
		if level == 0 || level > maxLevels || uint64(root) >= f.agLen(ag) {
			return nil, vmerr.Corrupt(ErrCorrupt, fmt.Sprintf("xfs AGI of AG %d", ag), off, "inode B+tree root %d, level %d", root, level)
		}
		w := &inobtWalk{f: f, ag: ag, seen: map[uint32]bool{}}
		if err := w.node(root, int(level)-1); err != nil {
			return nil, err
		}
		out = append(out, w.out...)
	}
	return out, nil
}

type inobtWalk struct {
	f    *FS
	ag   uint32
	seen map[uint32]bool
	out  []Chunk
	next uint32 // lowest agino the next record may start at
}

func (w *inobtWalk) node(agbno uint32, want int) error {
	f := w.f
	where := fmt.Sprintf("xfs inode B+tree block %d of AG %d", agbno, w.ag)
	if uint64(agbno) >= f.agLen(w.ag) {
		return vmerr.Corrupt(ErrCorrupt, where, -1, "outside the AG")
	}
	if w.seen[agbno] {
		return vmerr.Corrupt(ErrCorrupt, where, -1, "reached twice (a loop)")
	}
	w.seen[agbno] = true
	off := (int64(w.ag)*int64(f.sb.AGBlocks) + int64(agbno)) * f.bs
	b := make([]byte, f.bs)
	if err := f.readAt(b, off); err != nil {
		return err
	}
	hdr, magic := 16, uint32(inobtMagicV4)
	if f.sb.CRC() {
		hdr, magic = 56, inobtMagicV5
		if be32(b, 0) == magic && !crcOK(b, 52) {
			return vmerr.Corrupt(ErrCorrupt, where, off, "CRC mismatch")
		}
	}
	if be32(b, 0) != magic {
		return vmerr.Corrupt(ErrCorrupt, where, off, "bad magic %#x", be32(b, 0))
	}
	level, nrecs := int(be16(b, 4)), int(be16(b, 6))
	if level != want {
		return vmerr.Corrupt(ErrCorrupt, where, off, "level %d, expected %d", level, want)
	}
	if level == 0 {
		maxr := (len(b) - hdr) / 16
		if nrecs > maxr {
			return vmerr.Corrupt(ErrCorrupt, where, off, "%d records (at most %d)", nrecs, maxr)
		}
		for i := 0; i < nrecs; i++ {
			if err := w.rec(b[hdr+i*16:], off+int64(hdr+i*16)); err != nil {
				return err
			}
		}
		return nil
	}
	maxr := (len(b) - hdr) / 8
	if nrecs == 0 || nrecs > maxr {
		return vmerr.Corrupt(ErrCorrupt, where, off, "%d keys (at most %d)", nrecs, maxr)
	}
	for i := 0; i < nrecs; i++ {
		if err := w.node(be32(b, hdr+maxr*4+i*4), level-1); err != nil {
			return err
		}
	}
	return nil
}

// rec turns one inobt record into chunks (one per allocated run of a
// sparse chunk).
func (w *inobtWalk) rec(r []byte, off int64) error {
	f := w.f
	start := be32(r, 0)
	var holes uint16
	if f.sb.FeaturesIncompat&inSpinodes != 0 {
		holes = be16(r, 4)
	}
	free := be64(r, 8)
	if start < w.next {
		return vmerr.Corrupt(ErrCorrupt, "xfs inode B+tree record", off, "chunk at agino %d out of order", start)
	}
	w.next = start + inodesPerChunk
	if uint64(start>>f.sb.InoPBLog) >= f.agLen(w.ag) {
		return vmerr.Corrupt(ErrCorrupt, "xfs inode B+tree record", off, "chunk at agino %d outside the AG", start)
	}
	if len(w.out) >= maxChunks {
		return vmerr.Corrupt(ErrCorrupt, "xfs inode B+tree record", off, "more than %d chunks", maxChunks)
	}
	// Runs of allocated slots: each holemask bit covers 4 slots.
	ipb := uint32(f.sb.InoPerBlock)
	for i := uint32(0); i < inodesPerChunk; {
		if holes&(1<<(i/4)) != 0 {
			i += 4
			continue
		}
		j := i
		for j < inodesPerChunk && holes&(1<<(j/4)) == 0 {
			j += 4
		}
		first := start + i
		n := j - i
		agbno := first / ipb
		blocks := max(1, uint64(n)/uint64(ipb))
		if uint64(agbno)+blocks > f.agLen(w.ag) {
			return vmerr.Corrupt(ErrCorrupt, "xfs inode B+tree record", off, "chunk at agino %d past the AG", start)
		}
		w.out = append(w.out, Chunk{AG: w.ag, First: uint64(w.ag)<<f.inoBits | uint64(first), Count: n,
			Block: uint64(w.ag)*uint64(f.sb.AGBlocks) + uint64(agbno), Blocks: blocks, Free: free})
		i = j
	}
	return nil
}
