package qcow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/vmscope/vmscope/disk"
)

const qcow2Magic = "QFI\xfb"

// Detect reports the format of an image from its content (disk.Detect,
// with its size when r tells it): a qcow2 header with version 2 or 3 is
// Qcow2; qcow v1, other qcow versions and other well-known disk formats
// give ErrUnsupported; anything else is Raw.
func Detect(r io.ReaderAt) (Format, error) {
	size, ok := disk.SizeOf(r)
	if !ok {
		size = -1
	}
	f, err := disk.Detect(r, size)
	if err != nil || f != Qcow2 {
		return f, err
	}
	var b [8]byte
	if n, err := r.ReadAt(b[:], 0); n < len(b) {
		if err == nil || errors.Is(err, io.EOF) {
			return "", fmt.Errorf("%w: qcow2 magic in a file too short for a header", ErrCorrupt)
		}
		return "", err
	}
	switch v := binary.BigEndian.Uint32(b[4:8]); v {
	case 2, 3:
		return Qcow2, nil
	case 1:
		return "", fmt.Errorf("%w: qcow version 1 image", ErrUnsupported)
	default:
		return "", fmt.Errorf("%w: qcow2 version %d", ErrUnsupported, v)
	}
}
