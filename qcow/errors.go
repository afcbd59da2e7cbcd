package qcow

import (
	"errors"
	"fmt"
	"github.com/vmscope/vmscope/vmerr"
)

// Sentinel categories. Every error from this package wraps one of them,
// except plain I/O errors from the operating system, which are wrapped as they
// come (test with errors.Is against fs.ErrNotExist, os.ErrClosed, ...).
var (
	// ErrCorrupt: a structure of the image is invalid or points outside the
	// file (bad header field, L1/L2 entry, truncated file, bad compressed data).
	ErrCorrupt = vmerr.New("corrupt image", vmerr.ErrCorrupt)
	// ErrUnsupported: a valid image using something this package does not
	// read (another disk format, encryption, external data file, unknown
	// incompatible feature, compression type, backing protocol).
	ErrUnsupported = vmerr.New("unsupported image", vmerr.ErrUnsupported)
	// ErrChain: the backing chain cannot be followed (missing backing file,
	// loop, too deep, format of a backing file does not match its record).
	ErrChain = errors.New("bad backing chain")
)

// Error is the detail of an error: which file, which structure, where.
type Error struct {
	Path   string // file the structure belongs to
	What   string // structure, e.g. "header", "L1 table", "L2 table"
	Offset int64  // byte offset in the file (or in the guest for "read"), -1 if none
	Err    error  // wraps a sentinel or an OS error
}

func (e *Error) Error() string {
	if e.Offset >= 0 {
		return fmt.Sprintf("qcow %s: %s at offset %d: %v", e.Path, e.What, e.Offset, e.Err)
	}
	return fmt.Sprintf("qcow %s: %s: %v", e.Path, e.What, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// corrupt builds an *Error wrapping ErrCorrupt with a reason.
func corrupt(path, what string, off int64, format string, args ...any) error {
	return &Error{Path: path, What: what, Offset: off, Err: fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)}
}

func unsupported(path, what string, off int64, format string, args ...any) error {
	return &Error{Path: path, What: what, Offset: off, Err: fmt.Errorf("%w: "+format, append([]any{ErrUnsupported}, args...)...)}
}

func chainErr(path, what string, format string, args ...any) error {
	return &Error{Path: path, What: what, Offset: -1, Err: fmt.Errorf("%w: "+format, append([]any{ErrChain}, args...)...)}
}
