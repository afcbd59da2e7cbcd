package qcow

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Format is an image format this package reads.
type Format string

// Formats read by this package.
const (
	Raw   Format = "raw"
	Qcow2 Format = "qcow2"
)

const qcow2Magic = "QFI\xfb"

// foreign lists well-known formats refused by magic at offset 0.
var foreign = []struct {
	name  string
	off   int
	magic string
}{
	{"vmdk", 0, "KDMV"},
	{"vmdk (descriptor)", 0, "# Disk DescriptorFile"},
	{"vmdk (esx cowd)", 0, "COWD"},
	{"vhdx", 0, "vhdxfile"},
	{"vpc (dynamic vhd)", 0, "conectix"},
	{"vdi", 0x40, "\x7f\x10\xda\xbe"},
	{"qed", 0, "QED\x00"},
	{"parallels", 0, "WithoutFreeSpace"},
	{"parallels", 0, "WithouFreSpacExt"},
	{"luks", 0, "LUKS\xba\xbe"},
	{"bochs", 0, "Bochs Virtual HD Image"},
	{"cloop", 0, "#!/bin/sh\n#V2.0 Format"},
}

// Detect reports the format of an image from its content. A qcow2 header
// with version 2 or 3 is Qcow2; qcow v1, other qcow versions and other
// well-known disk formats give ErrUnsupported; anything else is Raw. When r
// also tells its size (Size() int64, or Stat() as *os.File does), a VHD
// footer ("conectix" in the last 512 bytes) is refused too.
func Detect(r io.ReaderAt) (Format, error) {
	var buf [512]byte
	n, err := r.ReadAt(buf[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	f, err := detectSector(buf[:n])
	if err != nil || f != Raw {
		return f, err
	}
	if size, ok := sizeOf(r); ok && size >= 512 {
		var foot [8]byte
		if _, err := r.ReadAt(foot[:], size-512); err == nil && string(foot[:]) == "conectix" {
			return "", fmt.Errorf("%w: vpc (fixed vhd) image", ErrUnsupported)
		}
	}
	return Raw, nil
}

func detectSector(b []byte) (Format, error) {
	if len(b) >= 8 && string(b[:4]) == qcow2Magic {
		switch v := binary.BigEndian.Uint32(b[4:8]); v {
		case 2, 3:
			return Qcow2, nil
		case 1:
			return "", fmt.Errorf("%w: qcow version 1 image", ErrUnsupported)
		default:
			return "", fmt.Errorf("%w: qcow2 version %d", ErrUnsupported, v)
		}
	}
	for _, m := range foreign {
		if len(b) >= m.off+len(m.magic) && bytes.Equal(b[m.off:m.off+len(m.magic)], []byte(m.magic)) {
			return "", fmt.Errorf("%w: %s image", ErrUnsupported, m.name)
		}
	}
	if len(b) >= 0x40 && bytes.HasPrefix(b, []byte("<<< ")) && bytes.Contains(b[:0x40], []byte("VirtualBox Disk Image")) {
		return "", fmt.Errorf("%w: vdi image", ErrUnsupported)
	}
	return Raw, nil
}

func sizeOf(r io.ReaderAt) (int64, bool) {
	switch v := r.(type) {
	case interface{ Size() int64 }:
		return v.Size(), true
	case *os.File:
		st, err := v.Stat()
		if err != nil || !st.Mode().IsRegular() {
			return 0, false
		}
		return st.Size(), true
	}
	return 0, false
}
