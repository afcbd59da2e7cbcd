package nbd

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/vmscope/vmscope/vmerr"
)

// FuzzParsers feeds the reply parsers arbitrary payloads: no panic, and
// what they accept keeps their invariants (extents tile the request from
// its start, inside it; an error has a code and a bounded message).
func FuzzParsers(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0x10, 0, 0, 0, 0, 1}, int64(0), int64(8192))
	f.Add([]byte{0, 0, 0, 5, 0, 3, 'b', 'a', 'd'}, int64(512), int64(512))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}, int64(0), int64(1))
	f.Fuzz(func(t *testing.T, p []byte, off, length int64) {
		if off < 0 || length <= 0 || off > 1<<50 || length > 1<<31 {
			return
		}
		if _, ext, err := parseBlockStatus(p, off, length); err == nil {
			pos := off
			for _, e := range ext {
				if e.Off != pos || e.Len <= 0 {
					t.Fatalf("extent %v does not follow %d", e, pos)
				}
				pos += e.Len
			}
			if pos > off+length || len(ext) == 0 {
				t.Fatalf("extents %v beyond %d+%d", ext, off, length)
			}
		} else if !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v is not ErrProtocol", err)
		}
		for _, typ := range []uint16{replyError, replyErrorOffset} {
			if e, err := parseErrorChunk(p, typ); err == nil && (e.Code == 0 || len(e.Message) > maxErrMessage) {
				t.Fatalf("accepted %+v", e)
			}
		}
		var ei exportInfo
		if err := parseInfo(p, &ei); err == nil && (ei.Size < 0 || ei.MinBlock > ei.MaxBlock) {
			t.Fatalf("accepted %+v", ei)
		}
		if len(p) >= 20 {
			if r, err := parseOptReply(p[:20], optGo); err == nil && r.Len > maxOptReply {
				t.Fatalf("accepted %+v", r)
			}
		}
		parseMetaContext(p)
	})
}

// session is a server's side of a good session: the handshake with one
// context, a read of 1024 bytes (cookie 1: data then hole) and a block
// status (cookie 2).
func session() []byte {
	var b []byte
	b = be.AppendUint64(b, nbdMagic)
	b = be.AppendUint64(b, optMagic)
	b = be.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	rep := func(opt, typ uint32, p []byte) {
		b = be.AppendUint64(b, optReplyMagic)
		b = be.AppendUint32(b, opt)
		b = be.AppendUint32(b, typ)
		b = be.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	rep(optStructuredReply, repAck, nil)
	rep(optSetMetaContext, repMetaContext, append([]byte{0, 0, 0, 7}, "base:allocation"...))
	rep(optSetMetaContext, repAck, nil)
	info := be.AppendUint16(nil, infoExport)
	info = be.AppendUint64(info, 1<<20)
	info = be.AppendUint16(info, tfHasFlags|tfReadOnly)
	rep(optGo, repInfo, info)
	rep(optGo, repAck, nil)
	chunk := func(flags, typ uint16, cookie uint64, p []byte) {
		b = be.AppendUint32(b, structMagic)
		b = be.AppendUint16(b, flags)
		b = be.AppendUint16(b, typ)
		b = be.AppendUint64(b, cookie)
		b = be.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	data := be.AppendUint64(nil, 0)
	data = append(data, make([]byte, 512)...)
	chunk(0, replyOffsetData, 1, data)
	hole := be.AppendUint64(nil, 512)
	hole = be.AppendUint32(hole, 512)
	chunk(replyFlagDone, replyOffsetHole, 1, hole)
	st := be.AppendUint32(nil, 7)
	st = be.AppendUint32(st, 4096)
	st = be.AppendUint32(st, 0)
	st = be.AppendUint32(st, 1<<20)
	st = be.AppendUint32(st, 3)
	chunk(replyFlagDone, replyBlockStatus, 2, st)
	return b
}

// FuzzSession plays arbitrary bytes as the server of a whole session
// (handshake, a read, a block status): the client never panics, hangs or
// allocates without bound; a read it accepts is whole; extents it accepts
// tile the range asked; its errors say what broke.
func FuzzSession(f *testing.F) {
	good := session()
	f.Add(good)
	f.Add(good[:len(good)-5])
	bad := append([]byte(nil), good...)
	bad[len(bad)-9] = 0xff // a huge descriptor length: clipped
	f.Add(bad)
	f.Fuzz(func(t *testing.T, server []byte) {
		cli, srv := net.Pipe()
		go io.Copy(io.Discard, srv)
		go func() { srv.Write(server); srv.Close() }()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := NewClient(ctx, cli, "fuzz", Options{MetaContexts: []string{"base:allocation"}})
		if err != nil {
			cli.Close()
			if ctx.Err() != nil {
				t.Fatalf("handshake hung: %v", err)
			}
			return
		}
		defer c.Close()
		buf := make([]byte, 1024)
		n, err := c.ReadAtContext(ctx, buf, 0)
		if err == nil && n != min(1024, int(c.Size())) {
			t.Fatalf("read %d bytes without error", n)
		}
		var fe *vmerr.FormatError
		if err != nil && errors.As(err, &fe) && fe.Struct == "" {
			t.Fatalf("format error names no structure: %v", err)
		}
		ext, err := c.BlockStatus(ctx, "base:allocation", 0, 1<<20)
		if err == nil {
			pos := int64(0)
			for _, e := range ext {
				if e.Off != pos || e.Len <= 0 {
					t.Fatalf("extents %v", ext)
				}
				pos += e.Len
			}
			if pos != min(1<<20, c.Size()) {
				t.Fatalf("extents %v cover %d", ext, pos)
			}
		}
		if ctx.Err() != nil {
			t.Fatal("session hung")
		}
	})
}
