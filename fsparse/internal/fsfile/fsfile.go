// Package fsfile holds the io/fs plumbing of an open file that the
// filesystem parsers under fsparse share: the position that Read and Seek
// keep over a file's ReadAt, and the cursor of fs.ReadDirFile over a
// directory listed once. Neither is safe for concurrent use (as Read,
// Seek and ReadDir of an fs.File are not); ReadAt stays the parser's.
package fsfile

import (
	"io"
	"io/fs"
)

// Cursor is the position of an open file for Read and Seek.
type Cursor struct{ off int64 }

// Read reads into p from the position through readAt, of a file of size
// bytes, and moves the position past what it read: io.EOF only at or past
// the end, as io.Reader wants.
func (c *Cursor) Read(p []byte, size int64, readAt func([]byte, int64) (int, error)) (int, error) {
	if c.off >= size {
		return 0, io.EOF
	}
	n, err := readAt(p, c.off)
	c.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// SeekIn sets the position as io.Seeker does for a file of size bytes named
// name (for errors): an unknown whence or a negative result is
// fs.ErrInvalid; a position past the end is allowed (Read gives io.EOF).
func (c *Cursor) SeekIn(offset int64, whence int, size int64, name string) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += c.off
	case io.SeekEnd:
		offset += size
	default:
		return 0, &fs.PathError{Op: "seek", Path: name, Err: fs.ErrInvalid}
	}
	if offset < 0 {
		return 0, &fs.PathError{Op: "seek", Path: name, Err: fs.ErrInvalid}
	}
	c.off = offset
	return offset, nil
}

// Dir is the cursor of fs.ReadDirFile.ReadDir over a directory: its
// entries are listed once, at the first call, then handed out in order.
type Dir struct {
	ents   []fs.DirEntry
	listed bool
	pos    int
}

// ReadDir returns the next n entries (n <= 0: all that are left, and a
// nil error at the end), listing the directory with list at the first
// call; with n > 0, io.EOF once none is left. A listing error is returned
// as it is, and the next call lists again.
func (d *Dir) ReadDir(n int, list func() ([]fs.DirEntry, error)) ([]fs.DirEntry, error) {
	if !d.listed {
		ents, err := list()
		if err != nil {
			return nil, err
		}
		d.ents, d.listed = ents, true
	}
	rest := d.ents[d.pos:]
	if n <= 0 {
		d.pos = len(d.ents)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	n = min(n, len(rest))
	d.pos += n
	return rest[:n], nil
}
