// Package nbd is a client of the Network Block Device protocol as QEMU
// serves it (qemu-nbd, qemu-storage-daemon, a running QEMU's
// nbd-server-start/block-export-add): the fixed newstyle handshake,
// structured replies, metadata contexts (base:allocation,
// qemu:dirty-bitmap:NAME, qemu:allocation-depth), NBD_OPT_GO,
// NBD_CMD_READ, NBD_CMD_BLOCK_STATUS and NBD_CMD_DISC.
//
// It is vmscope's own client rather than libnbd through cgo: Debian's
// libnbd.a needs GnuTLS, which needs p11-kit, of which Debian ships no
// static archive, so libnbd cannot link into `make static`; and no Go
// module with structured replies and block status exists. Every length
// the server sends is bounded before anything is allocated for it, and a
// reply that breaks the protocol is a *vmerr.FormatError naming the reply
// and the offset of the request it answers.
//
// A Client is safe for concurrent use: requests are pipelined on the one
// connection (each has its own cookie) and a reader goroutine hands each
// reply to its request.
package nbd

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vmscope/vmscope/vmerr"
)

// Protocol constants (the NBD protocol document, doc/proto.md).
const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic      = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic = 0x0003e889045565a9
	requestMagic  = 0x25609513
	simpleMagic   = 0x67446698
	structMagic   = 0x668e33ef

	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	optAbort           = 2
	optGo              = 7
	optStructuredReply = 8
	optSetMetaContext  = 10

	repAck         = 1
	repInfo        = 3
	repMetaContext = 4
	repErrBit      = 1 << 31

	infoExport    = 0
	infoBlockSize = 3

	// transmission flags
	tfHasFlags  = 1 << 0
	tfReadOnly  = 1 << 1
	tfMultiConn = 1 << 8

	cmdRead        = 0
	cmdDisc        = 2
	cmdBlockStatus = 7

	cmdFlagDF     = 1 << 2
	cmdFlagReqOne = 1 << 3

	replyFlagDone = 1 << 0

	replyNone        = 0
	replyOffsetData  = 1
	replyOffsetHole  = 2
	replyBlockStatus = 5
	replyError       = 1<<15 + 1
	replyErrorOffset = 1<<15 + 2
)

// Bounds on what a server sends.
const (
	maxOptReply     = 64 << 10 // an option reply's payload (names, info)
	maxMetaContexts = 64       // contexts a server may answer one query with
	maxErrMessage   = 4096     // the message of an error chunk (the protocol says 4096)
	// MaxRequest is the most bytes one read or block-status request asks
	// for; longer calls are split. QEMU's own maximum is 32 MiB.
	MaxRequest = 32 << 20
	// maxStatusPayload bounds one block-status chunk: QEMU answers a
	// request with at most 2^20 extents... far fewer in practice.
	maxStatusPayload = 8 << 20
	// maxExportSize is a sanity bound on the export size (2^62).
	maxExportSize = 1 << 62
	// DefaultMaxExtents bounds the extents one BlockStatus call keeps
	// (24 bytes each: 96 MiB) when Options.MaxExtents is 0. A guest
	// that dirties every other 4 KiB block of a large disk would
	// otherwise make the list as long as the disk has blocks.
	DefaultMaxExtents = 1 << 22
)

// Errors.
var (
	// ErrProtocol: the server broke the NBD protocol.
	ErrProtocol = vmerr.New("nbd: protocol error", vmerr.ErrCorrupt)
	// ErrUnsupported: the server lacks a feature this client needs
	// (fixed newstyle, structured replies, a metadata context).
	ErrUnsupported = vmerr.New("nbd: unsupported by the server", vmerr.ErrUnsupported)
	// ErrNoContext: a metadata context asked for is not served (a
	// dirty bitmap that is not exported).
	ErrNoContext = vmerr.New("nbd: metadata context not served", vmerr.ErrNotPresent)
	// ErrTooManyExtents: a BlockStatus answer split into more extents
	// than Options.MaxExtents (the caller falls back to reading all).
	ErrTooManyExtents = vmerr.New("nbd: too many block-status extents", vmerr.ErrUnsupported)
	// ErrClosed: the client was closed, or the connection died.
	ErrClosed = errors.New("nbd: connection closed")
)

// formatErr is a *vmerr.FormatError for reply at off (of the request or
// the chunk) wrapping ErrProtocol.
func formatErr(input, reply string, off int64, format string, args ...any) error {
	return &vmerr.FormatError{Input: input, Struct: reply, Offset: off,
		Err: fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)}
}

// ServerError is an error the server answered a request or option with.
type ServerError struct {
	Op      string // "read", "block status", "option NBD_OPT_GO", ...
	Offset  int64  // the request's offset, or the error chunk's; -1 for an option
	Code    uint32 // the NBD error (an errno value) or option reply type
	Message string // the server's message, if any
}

func (e *ServerError) Error() string {
	s := "nbd: " + e.Op
	if e.Offset >= 0 {
		s += fmt.Sprintf(" at offset %d", e.Offset)
	}
	if e.Code&repErrBit != 0 {
		s += fmt.Sprintf(": %s", optErrName(e.Code))
	} else {
		s += fmt.Sprintf(": %s", syscall.Errno(e.Code))
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Unwrap maps the error to syscall.Errno for errors.Is (EIO, EINVAL...).
func (e *ServerError) Unwrap() error {
	if e.Code&repErrBit != 0 {
		if e.Code == repErrBit+1 { // NBD_REP_ERR_UNSUP
			return ErrUnsupported
		}
		return nil
	}
	return syscall.Errno(e.Code)
}

func optErrName(c uint32) string {
	switch c {
	case repErrBit + 1:
		return "NBD_REP_ERR_UNSUP"
	case repErrBit + 2:
		return "NBD_REP_ERR_POLICY"
	case repErrBit + 3:
		return "NBD_REP_ERR_INVALID"
	case repErrBit + 4:
		return "NBD_REP_ERR_PLATFORM"
	case repErrBit + 5:
		return "NBD_REP_ERR_TLS_REQD"
	case repErrBit + 6:
		return "NBD_REP_ERR_UNKNOWN (no such export)"
	case repErrBit + 7:
		return "NBD_REP_ERR_SHUTDOWN"
	case repErrBit + 8:
		return "NBD_REP_ERR_BLOCK_SIZE_REQD"
	case repErrBit + 9:
		return "NBD_REP_ERR_TOO_BIG"
	}
	return fmt.Sprintf("option error %#x", c)
}

func optName(o uint32) string {
	switch o {
	case optGo:
		return "NBD_OPT_GO"
	case optStructuredReply:
		return "NBD_OPT_STRUCTURED_REPLY"
	case optSetMetaContext:
		return "NBD_OPT_SET_META_CONTEXT"
	case optAbort:
		return "NBD_OPT_ABORT"
	}
	return fmt.Sprintf("option %d", o)
}
