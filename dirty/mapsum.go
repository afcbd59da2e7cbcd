package dirty

import (
	"encoding/binary"
	"hash"
	"hash/fnv"
)

// mapSum builds a record's block runs and the digest of its block map
// (FileRec.Extents) as ext4 and XFS records both make them: each extent
// hashed as its logical block, physical block, length and a flag byte, each
// metadata block as its number.
type mapSum struct {
	h hash.Hash64
	b [25]byte
}

func newMapSum() *mapSum { return &mapSum{h: fnv.New64a()} }

// Extent flags.
const (
	extentWritten   = 0
	extentUnwritten = 1
	extentAttrFork  = 2 // an XFS attribute fork's extent
)

// extent adds an extent of r, owned as kind.
func (m *mapSum) extent(r *FileRec, logical, physical, length uint64, flag byte, kind Kind) {
	binary.LittleEndian.PutUint64(m.b[0:], logical)
	binary.LittleEndian.PutUint64(m.b[8:], physical)
	binary.LittleEndian.PutUint64(m.b[16:], length)
	m.b[24] = flag
	m.h.Write(m.b[:])
	r.Runs = append(r.Runs, Run{physical, length, kind})
}

// meta adds a block of r's extent tree (or B+tree).
func (m *mapSum) meta(r *FileRec, blk uint64) {
	binary.LittleEndian.PutUint64(m.b[0:], blk)
	m.h.Write(m.b[:8])
	r.Runs = append(r.Runs, Run{blk, 1, KindExtent})
}

// unwritten is the flag of an extent that is or is not unwritten.
func unwritten(u bool) byte {
	if u {
		return extentUnwritten
	}
	return extentWritten
}
