// Package imgio holds the pieces the image-format readers under disk
// (vmdk, vhd, vhdx) share: a bounded read of a structure that names it on
// failure, the io.SectionReader semantics of a layer's guest read, and the
// read of an unallocated range from the layer below.
package imgio

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/vmscope/vmscope/disk"
)

// Read reads exactly len(p) bytes of the structure what at off of src:
// off and the length are checked against src.Size first, a short read is
// ErrCorrupt ("the file ends inside it"), an OS error is wrapped; every
// error is a *disk.Error naming src, what and off.
func Read(src disk.Source, p []byte, off int64, what string) error {
	if off < 0 || off > src.Size || int64(len(p)) > src.Size-off {
		return disk.Corrupt(src.Name, what, off, "%d bytes at %d lie outside the %d-byte file", len(p), off, src.Size)
	}
	n, err := src.R.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return disk.Corrupt(src.Name, what, off, "the file ends inside it (%d of %d bytes)", n, len(p))
	}
	return &disk.Error{Path: src.Name, What: what, Offset: off, Err: err}
}

// Alloc returns a buffer of n bytes for a structure read from src, after
// checking n against max and against the file's size (an untrusted length
// never sizes an allocation beyond what the file can hold).
func Alloc(src disk.Source, n int64, max int64, off int64, what string) ([]byte, error) {
	if n < 0 || n > max {
		return nil, disk.Corrupt(src.Name, what, off, "size %d outside [0, %d]", n, max)
	}
	if off < 0 || off > src.Size || n > src.Size-off {
		return nil, disk.Corrupt(src.Name, what, off, "%d bytes at %d lie outside the %d-byte file", n, off, src.Size)
	}
	return make([]byte, n), nil
}

// GuestRead implements a layer's ReadAt with io.SectionReader semantics
// at size: a negative offset is an error, a read at or past size gives
// io.EOF, a read across it is short with io.EOF. fill serves q (never
// empty, inside [0, size)) at guest offset off.
func GuestRead(name string, size int64, p []byte, off int64, fill func(q []byte, off int64) error) (int, error) {
	if off < 0 {
		return 0, &disk.Error{Path: name, What: "guest read", Offset: off, Err: fmt.Errorf("%w: negative offset", fs.ErrInvalid)}
	}
	if off >= size {
		return 0, io.EOF
	}
	q := p
	if int64(len(q)) > size-off {
		q = q[:size-off]
	}
	if len(q) > 0 {
		if err := fill(q, off); err != nil {
			return 0, err
		}
	}
	if len(q) < len(p) {
		return len(q), io.EOF
	}
	return len(q), nil
}

// Below reads p at guest offset off from backing (the layer below), zeros
// past its end; without a backing layer p is zeros.
func Below(name string, backing disk.Layer, p []byte, off int64) error {
	if backing == nil {
		clear(p)
		return nil
	}
	if off >= backing.Size() {
		clear(p)
		return nil
	}
	n, err := backing.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if n < len(p) && off+int64(n) < backing.Size() {
		return disk.Corrupt(name, "guest read", off+int64(n), "the backing layer %s returned %d of %d bytes", backing.Name(), n, len(p))
	}
	clear(p[n:])
	return nil
}
