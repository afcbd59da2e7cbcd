package nbd

import (
	"encoding/binary"
	"fmt"
)

var be = binary.BigEndian

// optReply is the header of an option reply.
type optReply struct {
	Option, Type, Len uint32
}

// parseOptReply parses the 20 bytes of an option reply header: the magic,
// the option it answers (want), its type and its payload length (bounded).
func parseOptReply(b []byte, want uint32) (optReply, error) {
	if len(b) != 20 {
		return optReply{}, formatErr("", "option reply header", -1, "%d bytes, want 20", len(b))
	}
	if m := be.Uint64(b); m != optReplyMagic {
		return optReply{}, formatErr("", "option reply header", -1, "magic %#x, want %#x", m, uint64(optReplyMagic))
	}
	r := optReply{Option: be.Uint32(b[8:]), Type: be.Uint32(b[12:]), Len: be.Uint32(b[16:])}
	if r.Option != want {
		return r, formatErr("", "option reply header", -1, "answers option %d, want %s", r.Option, optName(want))
	}
	if r.Len > maxOptReply {
		return r, formatErr("", "option reply "+optName(want), -1, "payload of %d bytes, the most allowed is %d", r.Len, maxOptReply)
	}
	return r, nil
}

// exportInfo is what NBD_OPT_GO tells of the export.
type exportInfo struct {
	Size                int64
	Flags               uint16
	MinBlock, PrefBlock uint32
	MaxBlock            uint32
	haveSize            bool
}

// parseInfo reads one NBD_REP_INFO payload into ei. Unknown kinds of
// information are ignored, as the protocol asks.
func parseInfo(p []byte, ei *exportInfo) error {
	if len(p) < 2 {
		return formatErr("", "NBD_REP_INFO", -1, "%d bytes, too short for its type", len(p))
	}
	switch t := be.Uint16(p); t {
	case infoExport:
		if len(p) != 12 {
			return formatErr("", "NBD_INFO_EXPORT", -1, "%d bytes, want 12", len(p))
		}
		size := be.Uint64(p[2:])
		if size > maxExportSize {
			return formatErr("", "NBD_INFO_EXPORT", -1, "export size %d beyond %d", size, uint64(maxExportSize))
		}
		ei.Size, ei.Flags, ei.haveSize = int64(size), be.Uint16(p[10:]), true
	case infoBlockSize:
		if len(p) != 14 {
			return formatErr("", "NBD_INFO_BLOCK_SIZE", -1, "%d bytes, want 14", len(p))
		}
		mn, pr, mx := be.Uint32(p[2:]), be.Uint32(p[6:]), be.Uint32(p[10:])
		if mn == 0 || mn > 1<<16 || mn&(mn-1) != 0 || pr < mn || mx < pr {
			return formatErr("", "NBD_INFO_BLOCK_SIZE", -1, "block sizes min %d preferred %d max %d are inconsistent", mn, pr, mx)
		}
		ei.MinBlock, ei.PrefBlock, ei.MaxBlock = mn, pr, mx
	}
	return nil
}

// parseMetaContext parses an NBD_REP_META_CONTEXT payload: the context's
// id and name.
func parseMetaContext(p []byte) (uint32, string, error) {
	if len(p) < 5 {
		return 0, "", formatErr("", "NBD_REP_META_CONTEXT", -1, "%d bytes, too short for an id and a name", len(p))
	}
	return be.Uint32(p), string(p[4:]), nil
}

// chunkHeader is a structured reply chunk's header (after the magic).
type chunkHeader struct {
	Flags, Type uint16
	Cookie      uint64
	Len         uint32
}

// parseChunkHeader parses the 16 bytes after a structured reply's magic.
func parseChunkHeader(b []byte) chunkHeader {
	return chunkHeader{Flags: be.Uint16(b), Type: be.Uint16(b[2:]), Cookie: be.Uint64(b[4:]), Len: be.Uint32(b[12:])}
}

// Extent is a run of the export with the flags of one metadata context
// (base:allocation: 1 hole, 2 zero; qemu:dirty-bitmap: 1 dirty;
// qemu:allocation-depth: the layer depth, 0 unallocated).
type Extent struct {
	Off, Len int64
	Flags    uint32
}

// parseBlockStatus parses a block status chunk's payload answering a
// request for [off, off+length) of an export of size bytes: the context id
// and the extents, clipped to the request. A descriptor of length 0, or
// extents that do not start at off, are protocol errors.
func parseBlockStatus(p []byte, off, length int64) (uint32, []Extent, error) {
	what := "NBD_REPLY_TYPE_BLOCK_STATUS"
	if len(p) < 12 || (len(p)-4)%8 != 0 {
		return 0, nil, formatErr("", what, off, "payload of %d bytes is not a context id and whole descriptors", len(p))
	}
	if len(p) > maxStatusPayload {
		return 0, nil, formatErr("", what, off, "payload of %d bytes, the most allowed is %d", len(p), maxStatusPayload)
	}
	id := be.Uint32(p)
	n := (len(p) - 4) / 8
	out := make([]Extent, 0, n)
	pos, end := off, off+length
	for i := 0; i < n && pos < end; i++ {
		d := p[4+8*i:]
		l, fl := int64(be.Uint32(d)), be.Uint32(d[4:])
		if l == 0 {
			return id, nil, formatErr("", what, pos, "descriptor %d has length 0", i)
		}
		l = min(l, end-pos)
		out = append(out, Extent{Off: pos, Len: l, Flags: fl})
		pos += l
	}
	return id, out, nil
}

// errorChunk is an error chunk's payload.
type errorChunk struct {
	Code    uint32
	Message string
	Offset  int64 // NBD_REPLY_TYPE_ERROR_OFFSET's offset; -1 otherwise
}

// parseErrorChunk parses the payload of an error chunk of type typ.
func parseErrorChunk(p []byte, typ uint16) (errorChunk, error) {
	what := fmt.Sprintf("error chunk (type %#x)", typ)
	if len(p) < 6 {
		return errorChunk{}, formatErr("", what, -1, "%d bytes, too short for an error and a message length", len(p))
	}
	e := errorChunk{Code: be.Uint32(p), Offset: -1}
	ml := int(be.Uint16(p[4:]))
	if ml > len(p)-6 || ml > maxErrMessage {
		return e, formatErr("", what, -1, "message of %d bytes in a %d-byte payload", ml, len(p))
	}
	e.Message = string(p[6 : 6+ml])
	rest := p[6+ml:]
	if typ == replyErrorOffset {
		if len(rest) != 8 {
			return e, formatErr("", what, -1, "%d bytes after the message, want an 8-byte offset", len(rest))
		}
		o := be.Uint64(rest)
		if o > maxExportSize {
			return e, formatErr("", what, -1, "offset %d beyond any export", o)
		}
		e.Offset = int64(o)
	}
	if e.Code == 0 {
		return e, formatErr("", what, e.Offset, "error chunk with error 0")
	}
	return e, nil
}
