package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// Raw is a raw layer: the file is the guest disk, byte for byte. It has no
// backing file and holds its whole size (holes included, as qemu-img map
// reports a raw file present everywhere).
type Raw struct {
	src Source
}

// NewRaw makes a raw layer of src.
func NewRaw(src Source) *Raw { return &Raw{src: src} }

func (r *Raw) Size() int64    { return r.src.Size }
func (r *Raw) Backing() Layer { return nil }
func (r *Raw) Format() string { return RawFormat }
func (r *Raw) Name() string   { return r.src.Name }

// ReadAt reads the file, with io.SectionReader semantics at Size.
func (r *Raw) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &Error{Path: r.src.Name, What: "guest read", Offset: off, Err: fmt.Errorf("%w: negative offset", fs.ErrInvalid)}
	}
	if off >= r.src.Size {
		return 0, io.EOF
	}
	q := p
	if int64(len(q)) > r.src.Size-off {
		q = q[:r.src.Size-off]
	}
	n, err := r.src.R.ReadAt(q, off)
	switch {
	case n == len(q):
		err = nil
	case err == nil, errors.Is(err, io.EOF):
		// The file shrank under us, or a reader that lied about its size.
		return n, Corrupt(r.src.Name, "guest read", off+int64(n), "read %d of %d bytes: the file ends early", n, len(q))
	default:
		return n, &Error{Path: r.src.Name, What: "guest read", Offset: off, Err: err}
	}
	if len(q) < len(p) {
		err = io.EOF
	}
	return n, err
}

// Allocated is the whole disk.
func (r *Raw) Allocated(ctx context.Context) (rangeset.Set, error) {
	var s rangeset.Set
	s.Add(0, r.src.Size)
	return s, nil
}

// Linux lseek(2) whence values that find data and holes in a sparse file.
const (
	seekData = 3
	seekHole = 4
)

// DataRanges finds the data of a raw file with SEEK_DATA/SEEK_HOLE; when
// the reader is not a file, or its file system does not support them, all
// of the layer.
func (r *Raw) DataRanges(ctx context.Context) (rangeset.Set, error) {
	all := func() (rangeset.Set, error) { return r.Allocated(ctx) }
	f, ok := r.src.R.(*os.File)
	if !ok {
		return all()
	}
	conn, err := f.SyscallConn()
	if err != nil {
		return all()
	}
	var s rangeset.Set
	var serr error
	err = conn.Control(func(fd uintptr) {
		for off := int64(0); off < r.src.Size; {
			d, err := syscall.Seek(int(fd), off, seekData)
			if errors.Is(err, syscall.ENXIO) {
				return // no data from off to the end
			}
			if err != nil {
				serr = err
				return
			}
			h, err := syscall.Seek(int(fd), d, seekHole)
			if err != nil || h <= d {
				serr = errors.New("SEEK_HOLE did not move forward")
				return
			}
			s.Add(d, min(h, r.src.Size))
			off = h
		}
	})
	if err != nil || serr != nil {
		return all()
	}
	return s, nil
}
