// Package ntfs reads NTFS volumes: the boot sector, MFT records (update
// sequence checked), attribute lists, resident and non-resident attributes
// (sparse and LZNT1-compressed), $I30 directory indexes, hard links and
// alternate data streams. It registers itself with fsparse and implements
// fsparse.InodeFS with MFT record numbers as inode numbers.
//
// Promises:
//
//   - Every size, offset, count and run read from the volume is bounded
//     before use; run lists lie inside the volume and their runs do not
//     overlap; index trees are walked with a visited set and a depth bound.
//     Bad input is a *vmerr.FormatError wrapping ErrCorrupt that names the
//     MFT record (or INDX block) and its byte offset in the volume.
//   - Reparse points (symlinks, junctions, others) are reported (Entry.Type
//     "symlink" with its target, or the "reparse" flag), never followed.
//     Encrypted (EFS) files are reported by the "encrypted" flag; their
//     content is the raw ciphertext as stored.
//   - $LogFile is not replayed: a volume whose $Volume flags mark it dirty
//     is reported by the "dirty" feature in Info.
//   - An alternate data stream is a file of its own named "path:stream"
//     (listed after its file, read by OpenFile and OpenStream).
//   - The metadata files (MFT records 0-23 and $Extend) are not listed.
package ntfs

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/vmerr"
)

var (
	// ErrCorrupt is the category of every structural error.
	ErrCorrupt = vmerr.New("ntfs: corrupt volume", vmerr.ErrCorrupt)
	// ErrUnsupported: valid NTFS that this package does not read.
	ErrUnsupported = vmerr.New("ntfs: unsupported", vmerr.ErrUnsupported)
	// ErrFreeSlot: an MFT slot that was never written (zeros).
	ErrFreeSlot = vmerr.New("ntfs: MFT slot never used", vmerr.ErrNotPresent)
	// ErrNotExist: no such file or stream.
	ErrNotExist = vmerr.New("ntfs: no such file", vmerr.ErrNotPresent)
)

// Limits on what the volume may declare.
const (
	maxRecordSize   = 64 << 10
	maxIndexBlock   = 64 << 10
	maxAttrListSize = 4 << 20 // bytes of an $ATTRIBUTE_LIST
	maxExtRecords   = 4096    // extension records of one file
	maxResident     = 1 << 20 // a non-resident value read whole ($ATTRIBUTE_LIST, $REPARSE_POINT)
	maxIndexNodes   = 1 << 22
	maxIndexDepth   = 64
)

// RootRecord is the MFT record of the root directory.
const RootRecord = 5

// firstUser is the first MFT record that may hold a user file (0-15 are
// the metadata files, 16-23 reserved).
const firstUser = 24

func init() {
	fsparse.Register(fsparse.Format{Name: "ntfs", Probe: Probe, Open: func(dev io.ReaderAt, size int64) (fsparse.Filesystem, error) {
		return Open(dev, size)
	}})
}

// Probe recognises an NTFS boot sector.
func Probe(b []byte) bool {
	return len(b) >= 512 && string(b[3:11]) == "NTFS    " && b[510] == 0x55 && b[511] == 0xAA
}

// FS is an open NTFS volume.
type FS struct {
	dev         io.ReaderAt
	size        int64
	ClusterSize int64
	RecordSize  int64
	IndexSize   int64 // bytes of an INDX block as the boot sector says (each index root repeats it)
	Clusters    uint64
	MFTLCN      uint64
	Serial      uint64
	Label       string
	Version     string
	VolFlags    uint16
	mftRuns     []Run
	mftRecords  uint64

	mu    sync.Mutex
	cache map[uint64]*File      // parsed files, a small cache
	dirs  map[uint64][]DirEntry // directory listings, a small cache
}

// Open reads the boot sector and the $MFT of the volume dev of size bytes.
func Open(dev io.ReaderAt, size int64) (*FS, error) {
	b := make([]byte, 512)
	if n, err := dev.ReadAt(b, 0); n < len(b) {
		return nil, corrupt("boot sector", 0, "%v", errOr(err, io.ErrUnexpectedEOF))
	}
	if !Probe(b) {
		return nil, corrupt("boot sector", 3, "no NTFS signature")
	}
	bps := int64(binary.LittleEndian.Uint16(b[11:]))
	spc := int64(b[13])
	if spc > 0x80 { // 2^(256-spc) sectors, for clusters above 64 KiB
		if s := 256 - spc; s <= 12 {
			spc = 1 << s
		} else {
			spc = 0
		}
	}
	if bps < 256 || bps > 4096 || bps&(bps-1) != 0 || spc == 0 || spc&(spc-1) != 0 || bps*spc > 2<<20 {
		return nil, corrupt("boot sector", 11, "%d bytes per sector, %d sectors per cluster", bps, spc)
	}
	f := &FS{dev: dev, size: size, ClusterSize: bps * spc, cache: map[uint64]*File{}}
	sectors := binary.LittleEndian.Uint64(b[0x28:])
	f.Clusters = sectors / uint64(spc)
	if max := uint64(size / f.ClusterSize); f.Clusters > max {
		// A volume larger than its device (a truncated image): runs
		// past the device's end are errors.
		f.Clusters = max
	}
	f.MFTLCN = binary.LittleEndian.Uint64(b[0x30:])
	f.Serial = binary.LittleEndian.Uint64(b[0x48:])
	var err error
	if f.RecordSize, err = sizeField(int8(b[0x40]), f.ClusterSize, "MFT record size", 0x40); err != nil {
		return nil, err
	}
	if f.IndexSize, err = sizeField(int8(b[0x44]), f.ClusterSize, "index block size", 0x44); err != nil {
		return nil, err
	}
	if f.RecordSize < 512 || f.RecordSize > maxRecordSize {
		return nil, corrupt("boot sector", 0x40, "MFT record size %d", f.RecordSize)
	}
	if f.MFTLCN == 0 || f.MFTLCN >= f.Clusters {
		return nil, corrupt("boot sector", 0x30, "$MFT at cluster %d of %d", f.MFTLCN, f.Clusters)
	}
	// Record 0 is read from its boot-sector position; its own $DATA
	// then maps the rest of the MFT.
	raw := make([]byte, f.RecordSize)
	off := int64(f.MFTLCN) * f.ClusterSize
	if n, err := dev.ReadAt(raw, off); n < len(raw) {
		return nil, corrupt("MFT record 0", off, "%v", errOr(err, io.ErrUnexpectedEOF))
	}
	r0, err := parseRecord(raw, 0, off, f.Clusters)
	if err != nil {
		return nil, err
	}
	for _, a := range r0.Attrs {
		if a.Type == attrData && a.Name == "" && !a.Resident && a.StartVCN == 0 {
			f.mftRuns = a.Runs
			f.mftRecords = uint64(a.DataSize / f.RecordSize)
		}
	}
	if len(f.mftRuns) == 0 || f.mftRuns[0].Sparse || f.mftRuns[0].LCN != f.MFTLCN {
		return nil, corrupt("MFT record 0", off, "$MFT $DATA does not start at the boot sector's cluster %d", f.MFTLCN)
	}
	// The whole $MFT run list (an attribute list in record 0 may place
	// more of it in extension records, which the first runs reach).
	mf, err := f.buildFile(r0)
	if err != nil {
		return nil, err
	}
	if s := mf.stream(""); s != nil && !s.attr.Resident {
		f.mftRuns = s.runs
		f.mftRecords = uint64(s.size / f.RecordSize)
	}
	f.readVolume()
	return f, nil
}

func sizeField(v int8, cluster int64, what string, off int64) (int64, error) {
	switch {
	case v > 0:
		return int64(v) * cluster, nil
	case v <= -9 && v >= -31:
		return int64(1) << uint(-v), nil
	}
	return 0, corrupt("boot sector", off, "%s field %d", what, v)
}

// readVolume reads the label and flags of $Volume (record 3); a volume
// whose $Volume cannot be read keeps empty values.
func (f *FS) readVolume() {
	r, err := f.file(3)
	if err != nil {
		return
	}
	for _, a := range r.attrs {
		switch {
		case a.Type == attrVolumeName && a.Resident:
			f.Label = utf16String(a.Value)
		case a.Type == attrVolumeInfo && a.Resident && len(a.Value) >= 12:
			f.Version = fmt.Sprintf("%d.%d", a.Value[8], a.Value[9])
			f.VolFlags = binary.LittleEndian.Uint16(a.Value[10:])
		}
	}
}

// Dirty reports whether $Volume marks the volume dirty (unclean shutdown
// or a pending chkdsk): $LogFile is not replayed.
func (f *FS) Dirty() bool { return f.VolFlags&0x0001 != 0 }

// Records is the number of MFT records.
func (f *FS) Records() uint64 { return f.mftRecords }

// MFTRuns returns the run list of $MFT's $DATA.
func (f *FS) MFTRuns() []Run { return f.mftRuns }

// recordOffset is the volume byte offset of MFT record num.
func (f *FS) recordOffset(num uint64) (int64, error) {
	if num >= f.mftRecords {
		return 0, corrupt(fmt.Sprintf("MFT record %d", num), -1, "past the end of $MFT (%d records)", f.mftRecords)
	}
	byteOff := num * uint64(f.RecordSize)
	vcn := byteOff / uint64(f.ClusterSize)
	in := byteOff % uint64(f.ClusterSize)
	i := sort.Search(len(f.mftRuns), func(i int) bool { return f.mftRuns[i].VCN+f.mftRuns[i].Len > vcn })
	if i == len(f.mftRuns) || f.mftRuns[i].Sparse || f.mftRuns[i].VCN > vcn {
		return 0, corrupt(fmt.Sprintf("MFT record %d", num), -1, "in no allocated run of $MFT")
	}
	r := f.mftRuns[i]
	// A record larger than a cluster must lie in one run.
	if f.RecordSize > f.ClusterSize && (vcn+uint64(f.RecordSize/f.ClusterSize) > r.VCN+r.Len) {
		return 0, corrupt(fmt.Sprintf("MFT record %d", num), -1, "split across runs of $MFT")
	}
	return int64(r.LCN+vcn-r.VCN)*f.ClusterSize + int64(in), nil
}

// RecordOffset returns the byte offset of MFT record num in the volume.
func (f *FS) RecordOffset(num uint64) (int64, error) { return f.recordOffset(num) }

// ReadRecord reads and parses MFT record num (not its extension records).
func (f *FS) ReadRecord(num uint64) (*Record, error) {
	off, err := f.recordOffset(num)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, f.RecordSize)
	if n, err := f.dev.ReadAt(raw, off); n < len(raw) {
		return nil, corrupt(fmt.Sprintf("MFT record %d", num), off, "%v", errOr(err, io.ErrUnexpectedEOF))
	}
	return parseRecord(raw, num, off, f.Clusters)
}

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

func sortRuns(r []Run) { sort.Slice(r, func(i, j int) bool { return r[i].LCN < r[j].LCN }) }

// Info describes the volume.
func (f *FS) Info() fsparse.Info {
	in := fsparse.Info{Type: "ntfs", Label: f.Label, UUID: fmt.Sprintf("%016X", f.Serial),
		BlockSize: int(f.ClusterSize), Blocks: f.Clusters, Inodes: f.mftRecords}
	if f.Version != "" {
		in.Features = append(in.Features, "version="+f.Version)
	}
	if f.Dirty() {
		in.Features = append(in.Features, "dirty")
	}
	return in
}
