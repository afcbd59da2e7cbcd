// Package vmerr is vmscope's error vocabulary, shared by every package.
//
// Three root categories say what kind of failure an error is, whatever
// package raised it: ErrCorrupt (a structure read from evidence is invalid),
// ErrUnsupported (valid, but something vmscope does not read) and
// ErrNotPresent (what was asked for is not there: a hole in guest memory, a
// missing file, volume or bitmap). Each package declares its own sentinels
// with New, so they keep their identity and message and still answer
// errors.Is against the root. Parsers report where with *FormatError, and
// non-fatal findings (a bad file in a scan, a task list cut short) travel as
// Problem, which has one stable JSON form.
//
// The package imports only the standard library, so every other package may
// import it.
package vmerr

import (
	"errors"
	"fmt"
)

// Root categories.
var (
	// ErrCorrupt: a structure read from an image, a dump or guest memory is
	// invalid (bad field, pointer outside its container, loop, truncation).
	ErrCorrupt = errors.New("corrupt")
	// ErrUnsupported: the input is valid but uses something vmscope does not
	// read (a format, a feature, a compression, a kernel layout).
	ErrUnsupported = errors.New("unsupported")
	// ErrNotPresent: the thing asked for is not there (a hole in guest
	// memory, a missing path, volume or bitmap).
	ErrNotPresent = errors.New("not present")
)

// sentinel is a package's own category: its message, wrapping a root.
type sentinel struct {
	msg  string
	root error
}

func (s *sentinel) Error() string { return s.msg }
func (s *sentinel) Unwrap() error { return s.root }

// New returns a package sentinel with its own identity and message that
// wraps root (one of the categories above, or nil for none):
//
//	var ErrCorrupt = vmerr.New("ext4: corrupt filesystem", vmerr.ErrCorrupt)
func New(msg string, root error) error { return &sentinel{msg: msg, root: root} }

// FormatError is a parser's error: which structure, at which offset of
// which input, and the reason (which wraps a sentinel), like debug/elf's
// FormatError.
type FormatError struct {
	Input  string // the file or address space, "" when the caller knows it
	Struct string // the structure, e.g. "L2 table", "extent header of inode 12"
	Offset int64  // byte offset of the structure in Input, -1 when none
	Err    error
}

func (e *FormatError) Error() string {
	s := e.Struct
	if e.Input != "" {
		s = e.Input + ": " + s
	}
	if e.Offset >= 0 {
		return fmt.Sprintf("%s at offset %d: %v", s, e.Offset, e.Err)
	}
	return fmt.Sprintf("%s: %v", s, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// Corrupt returns a *FormatError wrapping sentinel (which should wrap
// ErrCorrupt) with a formatted reason.
func Corrupt(sentinel error, structure string, off int64, format string, args ...any) error {
	return &FormatError{Struct: structure, Offset: off, Err: fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)}
}

// Problem is a non-fatal finding: the command went on past it. Where names
// the object (a path, a task, a structure), Offset its byte offset in the
// input when one applies (-1 otherwise), Addr its guest address when it is
// a structure in guest memory (0 otherwise), Err the cause. Every package
// reports non-fatal findings as Problems. Its JSON form is stable:
//
//	{"where": "...", "offset": N, "addr": N, "kind": "corrupt|unsupported|not-present|canceled|error", "error": "..."}
//
// with "offset" left out when negative and "addr" when 0.
type Problem struct {
	Where  string
	Offset int64
	Addr   uint64
	Err    error
}

func (p Problem) Error() string {
	switch {
	case p.Addr != 0:
		return fmt.Sprintf("%s at %#x: %v", p.Where, p.Addr, p.Err)
	case p.Offset >= 0:
		return fmt.Sprintf("%s at offset %d: %v", p.Where, p.Offset, p.Err)
	}
	return fmt.Sprintf("%s: %v", p.Where, p.Err)
}

func (p Problem) Unwrap() error { return p.Err }

// Kind is the root category of the problem's error as a word:
// "corrupt", "unsupported", "not-present", "canceled" or "error".
func (p Problem) Kind() string { return Kind(p.Err) }

// Kind names err's root category: "corrupt", "unsupported", "not-present",
// "canceled" or "error".
func Kind(err error) string {
	switch {
	case errors.Is(err, ErrCorrupt):
		return "corrupt"
	case errors.Is(err, ErrUnsupported):
		return "unsupported"
	case errors.Is(err, ErrNotPresent):
		return "not-present"
	case errors.Is(err, errCanceled):
		return "canceled"
	}
	return "error"
}

// ProblemJSON is the stable JSON form of a Problem.
type ProblemJSON struct {
	Where  string `json:"where"`
	Offset *int64 `json:"offset,omitempty"`
	Addr   uint64 `json:"addr,omitempty"`
	Kind   string `json:"kind"`
	Error  string `json:"error"`
}

// JSON returns the problem's stable JSON form.
func (p Problem) JSON() ProblemJSON {
	j := ProblemJSON{Where: p.Where, Addr: p.Addr, Kind: p.Kind()}
	if p.Err != nil {
		j.Error = p.Err.Error()
	}
	if p.Offset >= 0 {
		o := p.Offset
		j.Offset = &o
	}
	return j
}

// MarshalJSON writes the stable JSON form.
func (p Problem) MarshalJSON() ([]byte, error) { return marshal(p.JSON()) }
