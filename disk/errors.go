package disk

import (
	"errors"
	"fmt"

	"github.com/vmscope/vmscope/vmerr"
)

// Sentinel categories shared by every format package (qcow, and later
// disk/vmdk, disk/vhdx). Every error of this package and of the formats
// wraps one of them, except plain I/O errors from the operating system,
// which are wrapped as they come (test with errors.Is against
// fs.ErrNotExist, os.ErrClosed, ...).
var (
	// ErrCorrupt: a structure of an image is invalid or points outside the
	// file (bad header field, table entry, truncated file, bad compressed
	// data).
	ErrCorrupt = vmerr.New("corrupt image", vmerr.ErrCorrupt)
	// ErrUnsupported: a valid image using something vmscope does not read
	// (a format no package registered, encryption, an external data file,
	// an unknown feature or compression type, a backing protocol).
	ErrUnsupported = vmerr.New("unsupported image", vmerr.ErrUnsupported)
	// ErrChain: the backing chain cannot be followed (missing backing file,
	// loop, too deep, a backing file whose format does not match its
	// record).
	ErrChain = errors.New("bad backing chain")
)

// Error is the detail of an error: which file, which structure, where.
type Error struct {
	Path   string // file the structure belongs to (the name given to New for a reader)
	What   string // structure, e.g. "header", "L1 table", "compressed cluster"
	Offset int64  // byte offset in the file (or in the guest for "guest read"), -1 if none
	Err    error  // wraps a sentinel or an OS error
}

func (e *Error) Error() string {
	if e.Offset >= 0 {
		return fmt.Sprintf("disk %s: %s at offset %d: %v", e.Path, e.What, e.Offset, e.Err)
	}
	return fmt.Sprintf("disk %s: %s: %v", e.Path, e.What, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Corrupt returns an *Error wrapping ErrCorrupt with a reason.
func Corrupt(path, what string, off int64, format string, args ...any) error {
	return &Error{Path: path, What: what, Offset: off, Err: fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)}
}

// Unsupported returns an *Error wrapping ErrUnsupported with a reason.
func Unsupported(path, what string, off int64, format string, args ...any) error {
	return &Error{Path: path, What: what, Offset: off, Err: fmt.Errorf("%w: "+format, append([]any{ErrUnsupported}, args...)...)}
}

// ChainError returns an *Error wrapping ErrChain with a reason.
func ChainError(path, what string, format string, args ...any) error {
	return &Error{Path: path, What: what, Offset: -1, Err: fmt.Errorf("%w: "+format, append([]any{ErrChain}, args...)...)}
}
