package dirty

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"

	"github.com/vmscope/vmscope/fsparse/ntfs"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// ntfsFS is the dirty view of an NTFS volume: MFT records are the inode
// slots (the runs of $MFT's $DATA are the inode tables, so a dirty MFT
// byte range gives the records in it: resident data and small directories
// change there), and the runs of every non-resident attribute of a file
// ($DATA streams named and unnamed, $I30 index allocations and bitmaps,
// attribute lists, and the clusters of its extension records) are the
// blocks it owns. Inode numbers are MFT record numbers; the root is record
// 5 (RootIno).
type ntfsFS struct {
	fs     *ntfs.FS
	bs     int64
	rs     int64
	recs   uint64
	tables []InodeTable
	vcn    []uint64 // VCN of the first cluster of each table, by Group
}

func newNTFSFS(id string, f *ntfs.FS) (*ntfsFS, error) {
	if f.ClusterSize < f.RecordSize || f.ClusterSize%f.RecordSize != 0 {
		return nil, fmt.Errorf("dirty: volume %s: NTFS clusters of %d bytes hold no whole MFT record of %d: %w", id, f.ClusterSize, f.RecordSize, ErrUnsupportedFS)
	}
	if f.Records() > 1<<31 {
		return nil, fmt.Errorf("dirty: volume %s: %d MFT records: %w", id, f.Records(), ErrUnsupportedFS)
	}
	g := &ntfsFS{fs: f, bs: f.ClusterSize, rs: f.RecordSize, recs: f.Records()}
	per := uint64(g.bs / g.rs)
	for _, r := range f.MFTRuns() {
		if r.Sparse {
			continue
		}
		first := r.VCN * per
		if first >= g.recs {
			break
		}
		used := min(r.Len*per, g.recs-first)
		g.vcn = append(g.vcn, r.VCN)
		g.tables = append(g.tables, InodeTable{Start: r.LCN, Len: r.Len, Group: uint32(len(g.tables)), Used: uint32(used)})
	}
	sortTables(g.tables)
	return g, nil
}

func sortTables(t []InodeTable) {
	for i := 1; i < len(t); i++ {
		for j := i; j > 0 && t[j].Start < t[j-1].Start; j-- {
			t[j], t[j-1] = t[j-1], t[j]
		}
	}
}

func (g *ntfsFS) BlockSize() int64          { return g.bs }
func (g *ntfsFS) Blocks() uint64            { return g.fs.Clusters }
func (g *ntfsFS) SlotSize() int64           { return g.rs }
func (g *ntfsFS) InodeTables() []InodeTable { return g.tables }

// SlotsIn returns the MFT records [lo, hi) in cluster blk of $MFT run t.
func (g *ntfsFS) SlotsIn(t InodeTable, blk uint64) (lo, hi uint32) {
	per := uint64(g.bs / g.rs)
	first := (g.vcn[t.Group] + blk - t.Start) * per
	return uint32(min(first, g.recs)), uint32(min(first+per, g.recs))
}

// SlotInUse: a FILE record in use that is a base record (an extension
// record's changes reach its base file through the cluster it lies in,
// which the base file owns).
func (g *ntfsFS) SlotInUse(raw []byte) bool {
	return len(raw) >= 0x28 && string(raw[:4]) == "FILE" && binary.LittleEndian.Uint16(raw[0x16:])&1 != 0 &&
		binary.LittleEndian.Uint64(raw[0x20:])&0xFFFFFFFFFFFF == 0
}

// Tracked: the root and every record past the metadata files.
// RootIno is the root directory's MFT record.
func (g *ntfsFS) RootIno() uint32 { return ntfs.RootRecord }

func (g *ntfsFS) Tracked(ino uint32) bool { return ino == ntfs.RootRecord || ino >= 24 }

// Journal returns the clusters of $LogFile (record 2), metadata that is
// no file.
func (g *ntfsFS) Journal() rangeset.Set {
	var j rangeset.Set
	x, err := g.fs.File(2)
	if err != nil {
		return j
	}
	for _, s := range x.AllStreams() {
		for _, r := range s.Runs() {
			if !r.Sparse {
				j.Add(int64(r.LCN), int64(r.LCN+r.Len))
			}
		}
	}
	return j
}

func (g *ntfsFS) ReadDir(ino uint32) ([]DirEntry, error) {
	ents, err := g.fs.ReadIndex(uint64(ino))
	if err != nil {
		return nil, err
	}
	out := make([]DirEntry, 0, len(ents))
	seen := map[DirEntry]bool{}
	for _, e := range ents {
		if e.Record >= 1<<32 || ino == ntfs.RootRecord && e.Record < 24 && e.Record != ntfs.RootRecord {
			continue // the metadata files
		}
		d := DirEntry{Name: e.Name, Ino: uint32(e.Record)}
		if e.Record == uint64(ino) {
			d.Name = "." // the root's index names itself
		}
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out, nil
}

// Record reads MFT record ino into a record, or nil when it holds no
// live base record. A map that cannot be read is noted in ReadErr.
func (g *ntfsFS) Record(ino uint32) (*FileRec, error) {
	rec, err := g.fs.ReadRecord(uint64(ino))
	if err != nil || !rec.InUse() || rec.Base != 0 {
		return nil, nil
	}
	e, err := g.fs.StatInode("", uint64(ino))
	r := &FileRec{Ino: ino, Gen: uint32(rec.Seq)}
	if err != nil {
		r.ReadErr = err.Error()
		return r, nil
	}
	r.Mode, r.Size, r.Links, r.Target = e.Mode, uint64(e.Size), uint16(e.Links), e.Target
	r.Mtime, r.Atime, r.Ctime = e.Mtime.UnixNano(), e.Atime.UnixNano(), e.Ctime.UnixNano()
	if e.Crtime != nil {
		r.Crtime = e.Crtime.UnixNano()
	}
	x, err := g.fs.File(uint64(ino))
	if err != nil {
		r.ReadErr = err.Error()
		return r, nil
	}
	// The map digest covers every stream's name, size and runs, and the
	// bytes of resident streams (their content lives in the record).
	h := fnv.New64a()
	var b [24]byte
	for _, s := range x.AllStreams() {
		kind := KindData
		switch {
		case s.Name == "$I30":
			kind = KindDir
		case !isData(s):
			kind = KindExtent
		}
		fmt.Fprintf(h, "%s\x00%d\x00", s.Name, s.Size())
		if s.Resident() && isData(s) {
			d := sha256.New()
			if f, err := g.fs.OpenStream(uint64(ino), s.Name); err == nil {
				io.Copy(d, io.NewSectionReader(f, 0, f.Size()))
			}
			h.Write(d.Sum(nil))
		}
		for _, run := range s.Runs() {
			binary.LittleEndian.PutUint64(b[0:], run.VCN)
			binary.LittleEndian.PutUint64(b[8:], run.LCN)
			binary.LittleEndian.PutUint64(b[16:], run.Len)
			h.Write(b[:])
			if !run.Sparse {
				r.Runs = append(r.Runs, Run{run.LCN, run.Len, kind})
			}
		}
	}
	for _, ext := range x.Ext {
		if off, err := g.fs.RecordOffset(ext); err == nil {
			r.Runs = append(r.Runs, Run{uint64(off / g.bs), 1, KindExtent})
		}
	}
	r.Extents = h.Sum64()
	return r, nil
}

func isData(s *ntfs.Stream) bool { return s.Type == 0x80 }
