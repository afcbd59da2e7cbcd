package fsparse

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"sync"
)

// Filesystem is one filesystem's files, whatever its format: io/fs access
// (so fstest.TestFS and fs.WalkDir apply) plus what ls, cat, extract and
// scan need. Names are io/fs paths ("etc/passwd", "." for the root).
// Entry.Volume is left empty: the Volume fills it in.
type Filesystem interface {
	fs.FS
	// Info describes the filesystem (type, label, UUID, geometry).
	Info() Info
	// Lstat describes the file at name without following a final symlink.
	Lstat(name string) (Entry, error)
	// ReadDir lists directory name, sorted by name, without "." and "..".
	// An entry that cannot be described carries its error in Err.
	ReadDir(name string) ([]Entry, error)
	// OpenFile returns the content of the regular file at name.
	OpenFile(name string) (File, error)
}

// InodeFS is a Filesystem whose files have inode numbers that name them
// (ext2/3/4 today; NTFS MFT records and XFS inodes later): the dirty-file
// mapper and the poll state address files by inode.
type InodeFS interface {
	Filesystem
	// StatInode describes inode ino under the path p it was found at.
	StatInode(p string, ino uint64) (Entry, error)
	// ListInode lists directory inode ino found at path dir (shown is dir
	// as ls -b shows it when an element of dir was escaped, else ""): a
	// walk goes by inode, since a path may hold escaped names that no
	// lookup finds.
	ListInode(ino uint64, dir, shown string) ([]Entry, error)
	// OpenInode returns the content of the regular file with inode ino.
	OpenInode(ino uint64) (File, error)
}

// Info is what info shows of a filesystem.
type Info struct {
	Type      string   // "ext2", "ext3", "ext4", "vfat"
	Label     string   // volume label
	UUID      string   // UUID or serial number
	BlockSize int      // bytes per block or cluster
	Blocks    uint64   // 0 when the format does not say
	Inodes    uint64   // 0 when the format has none
	Features  []string // feature flags, as the format's own tools name them
}

// Format is a filesystem format this package opens: Probe recognises it by
// its magic numbers in the first 4 KiB of a volume (head holds at least
// 2048 bytes), Open reads it from dev, of size bytes. Formats join with
// Register, in the order they are tried.
type Format struct {
	Name  string
	Probe func(head []byte) bool
	Open  func(dev io.ReaderAt, size int64) (Filesystem, error)
}

var (
	formatsMu sync.RWMutex
	formats   []Format
)

// Register adds a filesystem format; formats in sub-packages call it from
// their init function.
func Register(f Format) {
	formatsMu.Lock()
	defer formatsMu.Unlock()
	formats = append(formats, f)
}

func init() {
	Register(Format{Name: "ext", Probe: probeExt, Open: openExt})
	Register(Format{Name: "vfat", Probe: probeFAT32, Open: openFATFS})
}

// known names the on-disk formats this package recognises but has no
// reader for, so that a volume holding one is reported by name.
func known(b []byte) string {
	if b[510] == 0x55 && b[511] == 0xAA {
		switch {
		case string(b[54:59]) == "FAT16" || string(b[54:59]) == "FAT12":
			return "fat16"
		case string(b[3:11]) == "NTFS    ":
			return "ntfs"
		case string(b[3:11]) == "EXFAT   ":
			return "exfat"
		case string(b[3:11]) == "-FVE-FS-":
			return "BitLocker"
		}
	}
	switch {
	case string(b[0:4]) == "XFSB":
		return "xfs"
	case len(b) >= 4096 && string(b[4096-10:4096]) == "SWAPSPACE2":
		return "swap"
	case string(b[512:520]) == "LABELONE":
		return "LVM2_member"
	case string(b[0:6]) == "LUKS\xba\xbe":
		return "crypto_LUKS"
	}
	return ""
}

func probeExt(b []byte) bool { return binary.LittleEndian.Uint16(b[1024+56:]) == 0xEF53 }

func probeFAT32(b []byte) bool {
	return b[510] == 0x55 && b[511] == 0xAA && string(b[82:87]) == "FAT32"
}

// detect reads the head of the volume at off and returns the registered
// format that recognises it, or the name of a known format without a
// reader, or neither when nothing is recognised.
func detect(r io.ReaderAt, off int64) (*Format, string, error) {
	b := make([]byte, 4096)
	n, err := r.ReadAt(b, off)
	if n < 2048 {
		return nil, "", fmt.Errorf("the first 2048 bytes: %w", errOr(err, io.ErrUnexpectedEOF))
	}
	b = b[:n]
	formatsMu.RLock()
	defer formatsMu.RUnlock()
	for i := range formats {
		if formats[i].Probe(b) {
			f := formats[i]
			return &f, f.Name, nil
		}
	}
	return nil, known(b), nil
}
