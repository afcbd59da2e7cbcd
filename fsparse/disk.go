// Package fsparse finds the partitions of a guest disk and opens the
// filesystems on them.
//
// A disk is an io.ReaderAt plus a size (a raw file or a qcow2 chain from
// package qcow). Partition tables are GPT and MBR (primary and logical
// partitions of an extended one), read through go-diskfs after the fields it
// would trust are checked here; a disk with a filesystem and no table is one
// volume. Filesystems are ext2/3/4 through our own parser (fsparse/ext4) and
// FAT32 through go-diskfs. Every volume is reached through a section of the
// disk: nothing reads outside its partition, and nothing is ever written.
//
// A volume's files are addressed as "p1:/etc/passwd", or "/etc/passwd" when
// the disk holds a single filesystem. Paths inside a volume are io/fs paths
// ("etc/passwd", "." for the root).
package fsparse

import (
	"fmt"
	"io"
	"strings"

	"github.com/vmscope/vmscope/fsparse/lvm"
	"github.com/vmscope/vmscope/vmerr"
)

// Sentinel errors; every error of this package wraps one of them or an
// error of the filesystem parser.
var (
	// ErrCorrupt: a partition table is malformed.
	ErrCorrupt = vmerr.New("fsparse: corrupt partition table", vmerr.ErrCorrupt)
	// ErrNoVolume: a path names a volume the disk does not have.
	ErrNoVolume = vmerr.New("fsparse: no such volume", vmerr.ErrNotPresent)
	// ErrUnsupported: a filesystem this package cannot read.
	ErrUnsupported = vmerr.New("fsparse: unsupported filesystem", vmerr.ErrUnsupported)
)

// Limits on what a hostile table may ask for.
const (
	maxGPTEntries   = 1024
	maxLogicalParts = 128
	sector          = 512
)

// Partition is one entry of the partition table, or the whole disk.
type Partition struct {
	Index    int    `json:"index"` // 1-based; 0 is the whole disk
	Start    int64  `json:"start"` // bytes from the start of the disk
	Size     int64  `json:"size"`  // bytes
	Type     string `json:"type"`  // GPT type GUID, or MBR type as "0x83"
	TypeName string `json:"type_name,omitempty"`
	Name     string `json:"name,omitempty"` // GPT partition name
	GUID     string `json:"guid,omitempty"` // GPT unique partition GUID
	Bootable bool   `json:"bootable,omitempty"`
}

// ID is how paths name the partition: "p1", or "disk" for the whole disk.
func (p Partition) ID() string {
	if p.Index == 0 {
		return "disk"
	}
	return fmt.Sprintf("p%d", p.Index)
}

// Disk is a guest disk opened into its partitions and volumes.
type Disk struct {
	Size       int64       `json:"size"`
	Table      string      `json:"table"` // "gpt", "mbr" or "none"
	TableID    string      `json:"table_id,omitempty"`
	Partitions []Partition `json:"partitions"`
	Volumes    []*Volume   `json:"volumes"`
	// PVs are the LVM physical volumes found on the disk, VGs the volume
	// groups assembled from them (their visible linear LVs are among
	// Volumes, addressed "vg/lv").
	PVs []PV      `json:"pvs,omitempty"`
	VGs []*lvm.VG `json:"volume_groups,omitempty"`
	// Encrypted lists the encrypted volumes (LUKS, BitLocker): each is
	// also a problem, so that a scan never passes over one silently.
	Encrypted []Encrypted `json:"encrypted,omitempty"`
	// Problems lists partitions whose filesystem could not be opened (where:
	// the partition, offset: its start on the disk); the other volumes are
	// usable.
	Problems []vmerr.Problem `json:"-"`
}

// Open reads the partition table of the disk r of size bytes and opens the
// filesystem of every partition it recognises, and of every linear LVM
// logical volume of the volume groups whose physical volumes it holds
// (with WithPVDisks, also those on the machine's other disks).
func Open(r io.ReaderAt, size int64, opts ...Option) (*Disk, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	d, err := readTable(r, size)
	if err != nil {
		return nil, err
	}
	for _, p := range d.Partitions {
		if d.openSpecial(r, p) {
			continue
		}
		v, err := openVolume(r, p)
		if err != nil {
			d.Problems = append(d.Problems, vmerr.Problem{Where: p.ID(), Offset: p.Start, Err: err})
			continue
		}
		if v != nil {
			d.Volumes = append(d.Volumes, v)
		}
	}
	if len(d.PVs) > 0 {
		for _, pd := range o.pvDisks {
			d.addPVDisk(pd)
		}
		d.openLVM(r)
	}
	return d, nil
}

// readTable reads the partition table of the disk r of size bytes.
func readTable(r io.ReaderAt, size int64) (*Disk, error) {
	d := &Disk{Size: size}
	head := make([]byte, 2*sector)
	if n, err := r.ReadAt(head, 0); n < len(head) {
		return nil, fmt.Errorf("fsparse: disk of %d bytes: reading the first sectors: %w", size, errOr(err, io.ErrUnexpectedEOF))
	}
	switch {
	case string(head[sector:sector+8]) == "EFI PART":
		d.Table = "gpt"
		if err := readGPT(d, r, size); err != nil {
			return nil, err
		}
	case hasFilesystem(r, 0):
		// A filesystem on the whole disk (a FAT boot sector also ends
		// in 0x55AA, so this test comes before the MBR one).
		d.Table = "none"
		d.Partitions = []Partition{{Index: 0, Start: 0, Size: size}}
	case head[510] == 0x55 && head[511] == 0xAA:
		d.Table = "mbr"
		if err := readMBR(d, r, size, head[:sector]); err != nil {
			return nil, err
		}
	default:
		d.Table = "none"
		d.Partitions = []Partition{{Index: 0, Start: 0, Size: size}}
	}
	return d, nil
}

func errOr(err, def error) error {
	if err != nil && err != io.EOF {
		return err
	}
	return def
}

// Volume returns the volume of partition id ("p1", "disk"), or the only
// volume when id is empty.
func (d *Disk) Volume(id string) (*Volume, error) {
	if id == "" {
		if len(d.Volumes) == 1 {
			return d.Volumes[0], nil
		}
		ids := make([]string, len(d.Volumes))
		for i, v := range d.Volumes {
			ids[i] = v.ID
		}
		if len(ids) == 0 {
			return nil, fmt.Errorf("%w: the disk has no filesystem this tool can read", ErrNoVolume)
		}
		return nil, fmt.Errorf("%w: the disk has %d filesystems (%s): name one, as in %s:/path", ErrNoVolume, len(ids), strings.Join(ids, ", "), ids[0])
	}
	for _, v := range d.Volumes {
		if v.ID == id {
			return v, nil
		}
	}
	if err := d.lvError(id); err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrNoVolume, id, err)
	}
	for _, e := range d.Encrypted {
		if e.ID == id {
			return nil, fmt.Errorf("%w: %q: %w", ErrNoVolume, id, encryptedProblem(e))
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrNoVolume, id)
}

// Resolve splits a user path ("p2:/etc/passwd", "vg/lv:/etc/passwd" or
// "/etc/passwd") into its volume and the io/fs path inside it
// ("etc/passwd", or "." for the root). A prefix before ':' names a volume
// when it has no '/' or is "VG/LV" of a logical volume of the disk.
func (d *Disk) Resolve(spec string) (*Volume, string, error) {
	id := ""
	if i := strings.IndexByte(spec, ':'); i >= 0 && (!strings.Contains(spec[:i], "/") || d.isLV(spec[:i])) {
		id, spec = spec[:i], spec[i+1:]
	}
	v, err := d.Volume(id)
	if err != nil {
		return nil, "", err
	}
	return v, CleanPath(spec), nil
}

// isLV reports whether id is "VG/LV" of a logical volume of the disk.
func (d *Disk) isLV(id string) bool {
	vgName, lvName, ok := strings.Cut(id, "/")
	if !ok {
		return false
	}
	for _, vg := range d.VGs {
		if vg.Name == vgName && vg.LV(lvName) != nil {
			return true
		}
	}
	return false
}

// CleanPath turns a user path ("/etc//passwd/", "etc/passwd", "/") into an
// io/fs path ("etc/passwd", "."). ".." cannot climb above the root.
func CleanPath(p string) string {
	var parts []string
	for _, e := range strings.Split(p, "/") {
		switch e {
		case "", ".":
		case "..":
			if len(parts) > 0 {
				parts = parts[:len(parts)-1]
			}
		default:
			parts = append(parts, e)
		}
	}
	if len(parts) == 0 {
		return "."
	}
	return strings.Join(parts, "/")
}

// hasFilesystem reports whether a filesystem this package knows starts at off.
func hasFilesystem(r io.ReaderAt, off int64) bool {
	f, kind, _ := detect(r, off)
	return f != nil || kind != ""
}
