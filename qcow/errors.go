package qcow

import "github.com/vmscope/vmscope/disk"

// Sentinel categories: the disk family's (package disk), so that an error
// from a qcow2 layer and one from detection or the chain answer the same
// errors.Is. Every error from this package wraps one of them, except plain
// I/O errors from the operating system, which are wrapped as they come
// (test with errors.Is against fs.ErrNotExist, os.ErrClosed, ...).
var (
	// ErrCorrupt: a structure of the image is invalid or points outside the
	// file (bad header field, L1/L2 entry, truncated file, bad compressed data).
	ErrCorrupt = disk.ErrCorrupt
	// ErrUnsupported: a valid image using something this package does not
	// read (another disk format, encryption, external data file, unknown
	// incompatible feature, compression type, backing protocol).
	ErrUnsupported = disk.ErrUnsupported
	// ErrChain: the backing chain cannot be followed (missing backing file,
	// loop, too deep, format of a backing file does not match its record).
	ErrChain = disk.ErrChain
)

// Error is the detail of an error: which file, which structure, where
// (disk.Error).
type Error = disk.Error

func corrupt(path, what string, off int64, format string, args ...any) error {
	return disk.Corrupt(path, what, off, format, args...)
}

func unsupported(path, what string, off int64, format string, args ...any) error {
	return disk.Unsupported(path, what, off, format, args...)
}
