package fsparse

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"
)

// readGPT checks the GPT header fields go-diskfs would trust (the entry
// count and size size an allocation), then lets go-diskfs read the table,
// with its CRC checks and backup-header fallback.
func readGPT(d *Disk, r io.ReaderAt, size int64) error {
	hdr := make([]byte, 92)
	if _, err := r.ReadAt(hdr, sector); err != nil {
		return fmt.Errorf("fsparse: GPT header at offset %d: %w", sector, err)
	}
	entries := binary.LittleEndian.Uint32(hdr[80:])
	entrySize := binary.LittleEndian.Uint32(hdr[84:])
	entriesLBA := binary.LittleEndian.Uint64(hdr[72:])
	if entries == 0 || entries > maxGPTEntries || entrySize < 128 || entrySize > 4096 || entrySize%8 != 0 {
		return fmt.Errorf("fsparse: GPT header at offset %d: %d entries of %d bytes: %w", sector, entries, entrySize, ErrCorrupt)
	}
	if entriesLBA == 0 || entriesLBA > uint64(size/sector) || int64(entriesLBA)*sector+int64(entries)*int64(entrySize) > size {
		return fmt.Errorf("fsparse: GPT header at offset %d: entry array at LBA %d lies outside the %d-byte disk: %w", sector, entriesLBA, size, ErrCorrupt)
	}
	var t *gpt.Table
	err := protect(func() error {
		var err error
		t, err = gpt.Read(newBackend(r, size), sector, sector)
		return err
	})
	if err != nil {
		return fmt.Errorf("fsparse: GPT at offset %d: %v: %w", sector, err, ErrCorrupt)
	}
	d.TableID = strings.ToLower(t.GUID)
	for _, p := range t.Partitions {
		if p == nil || p.Type == gpt.Unused {
			continue
		}
		start := int64(p.Start) * sector
		length := (int64(p.End) - int64(p.Start) + 1) * sector
		if p.End < p.Start || start >= size || length <= 0 || start+length > size {
			return fmt.Errorf("fsparse: GPT entry %d: sectors %d-%d outside the %d-byte disk: %w", p.Index, p.Start, p.End, size, ErrCorrupt)
		}
		d.Partitions = append(d.Partitions, Partition{
			Index:    p.Index,
			Start:    start,
			Size:     length,
			Type:     strings.ToLower(string(p.Type)),
			TypeName: gptTypeNames[strings.ToUpper(string(p.Type))],
			Name:     p.Name,
			GUID:     strings.ToLower(p.GUID),
		})
	}
	return nil
}

// readMBR reads the four primary entries through go-diskfs and follows the
// chain of extended boot records itself (go-diskfs does not), numbering
// logical partitions from 5 as Linux does.
func readMBR(d *Disk, r io.ReaderAt, size int64, head []byte) error {
	var t *mbr.Table
	err := protect(func() error {
		var err error
		t, err = mbr.Read(newBackend(r, size), sector, sector)
		return err
	})
	if err != nil {
		return fmt.Errorf("fsparse: MBR at offset 0: %v: %w", err, ErrCorrupt)
	}
	d.TableID = fmt.Sprintf("%08x", binary.LittleEndian.Uint32(head[440:]))
	for i, p := range t.Partitions {
		if p == nil || p.Type == mbr.Empty || p.Size == 0 {
			continue
		}
		if p.Type == 0xEE {
			return fmt.Errorf("fsparse: MBR at offset 0: protective entry but no GPT header at LBA 1: %w", ErrCorrupt)
		}
		start, length := int64(p.Start)*sector, int64(p.Size)*sector
		if start+length > size {
			return fmt.Errorf("fsparse: MBR entry %d: sectors %d+%d outside the %d-byte disk: %w", i+1, p.Start, p.Size, size, ErrCorrupt)
		}
		if isExtended(byte(p.Type)) {
			if err := readEBRs(d, r, size, int64(p.Start)); err != nil {
				return err
			}
			continue
		}
		d.Partitions = append(d.Partitions, Partition{
			Index:    i + 1,
			Start:    start,
			Size:     length,
			Type:     fmt.Sprintf("0x%02x", byte(p.Type)),
			TypeName: mbrTypeNames[byte(p.Type)],
			Bootable: p.Bootable,
		})
	}
	return nil
}

func isExtended(t byte) bool { return t == 0x05 || t == 0x0f || t == 0x85 }

// readEBRs walks the linked list of extended boot records that starts at
// LBA ext, bounded in length and refusing loops.
func readEBRs(d *Disk, r io.ReaderAt, size, ext int64) error {
	seen := map[int64]bool{}
	cur := ext
	b := make([]byte, sector)
	for n := 0; ; n++ {
		if n >= maxLogicalParts {
			return fmt.Errorf("fsparse: extended partition at LBA %d: more than %d logical partitions: %w", ext, maxLogicalParts, ErrCorrupt)
		}
		if seen[cur] || cur*sector+sector > size {
			return fmt.Errorf("fsparse: EBR at LBA %d: loops or lies outside the disk: %w", cur, ErrCorrupt)
		}
		seen[cur] = true
		if _, err := r.ReadAt(b, cur*sector); err != nil {
			return fmt.Errorf("fsparse: EBR at LBA %d: %w", cur, err)
		}
		if b[510] != 0x55 || b[511] != 0xAA {
			return fmt.Errorf("fsparse: EBR at LBA %d: no boot signature: %w", cur, ErrCorrupt)
		}
		e1, e2 := b[446:462], b[462:478]
		if typ := e1[4]; typ != 0 {
			start := cur + int64(binary.LittleEndian.Uint32(e1[8:]))
			length := int64(binary.LittleEndian.Uint32(e1[12:]))
			if length > 0 {
				if (start+length)*sector > size {
					return fmt.Errorf("fsparse: EBR at LBA %d: logical partition at LBA %d+%d outside the disk: %w", cur, start, length, ErrCorrupt)
				}
				d.Partitions = append(d.Partitions, Partition{
					Index:    5 + n,
					Start:    start * sector,
					Size:     length * sector,
					Type:     fmt.Sprintf("0x%02x", typ),
					TypeName: mbrTypeNames[typ],
					Bootable: e1[0] == 0x80,
				})
			}
		}
		if !isExtended(e2[4]) || binary.LittleEndian.Uint32(e2[8:]) == 0 {
			return nil
		}
		cur = ext + int64(binary.LittleEndian.Uint32(e2[8:]))
	}
}

// protect runs f and turns a panic inside a third-party parser into an
// error: the checks before each call are the defence, this is the last line.
func protect(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("parser panic: %v", p)
		}
	}()
	return f()
}

var gptTypeNames = map[string]string{
	"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
	"21686148-6449-6E6F-744E-656564454649": "BIOS boot",
	"0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
	"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
	"E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
	"A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
	"933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
	"BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
	"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
	"E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
}

var mbrTypeNames = map[byte]string{
	0x01: "FAT12", 0x04: "FAT16 <32M", 0x06: "FAT16", 0x07: "HPFS/NTFS/exFAT",
	0x0b: "W95 FAT32", 0x0c: "W95 FAT32 (LBA)", 0x0e: "W95 FAT16 (LBA)",
	0x82: "Linux swap", 0x83: "Linux", 0x8e: "Linux LVM", 0xef: "EFI (FAT-12/16/32)",
	0xfd: "Linux raid autodetect",
}

// diskBackend adapts an io.ReaderAt to the go-diskfs storage interface,
// read-only: Writable always fails.
type diskBackend struct {
	*io.SectionReader
	size int64
}

func newBackend(r io.ReaderAt, size int64) backend.Storage {
	return &diskBackend{SectionReader: io.NewSectionReader(r, 0, size), size: size}
}

func (b *diskBackend) Stat() (fs.FileInfo, error) { return backendInfo{b.size}, nil }
func (b *diskBackend) Close() error               { return nil }
func (b *diskBackend) Sys() (*os.File, error) {
	return nil, fmt.Errorf("fsparse: no OS file behind a disk image")
}
func (b *diskBackend) Writable() (backend.WritableFile, error) {
	return nil, backend.ErrIncorrectOpenMode
}
func (b *diskBackend) Path() string { return "" }

type backendInfo struct{ size int64 }

func (i backendInfo) Name() string       { return "disk" }
func (i backendInfo) Size() int64        { return i.size }
func (i backendInfo) Mode() fs.FileMode  { return 0o444 }
func (i backendInfo) ModTime() time.Time { return time.Time{} }
func (i backendInfo) IsDir() bool        { return false }
func (i backendInfo) Sys() any           { return nil }
