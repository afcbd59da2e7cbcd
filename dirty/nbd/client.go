package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// Options of a connection.
type Options struct {
	// Export is the export's name ("" for the default export).
	Export string
	// MetaContexts are the metadata contexts to negotiate for
	// BlockStatus: "base:allocation", "qemu:dirty-bitmap:NAME",
	// "qemu:allocation-depth". Each must be served (ErrNoContext).
	MetaContexts []string
	// MaxExtents bounds the extents one BlockStatus call returns
	// (after merging neighbours with the same flags); beyond it the call
	// fails with ErrTooManyExtents. 0 means DefaultMaxExtents.
	MaxExtents int
}

// Client is one NBD connection in transmission mode.
type Client struct {
	conn     net.Conn
	addr     string
	size     int64
	flags    uint16
	maxReq   int64
	contexts map[string]uint32
	names    map[uint32]string
	structed bool
	maxExt   int // Options.MaxExtents, defaulted

	wmu sync.Mutex // request writes

	mu      sync.Mutex
	pending map[uint64]*call
	cookie  uint64
	err     error // the connection's fatal error, once it died
	dead    chan struct{}
	reader  chan struct{} // closed when the reader goroutine ended
}

// Dial connects to addr on network ("unix" or "tcp") and negotiates the
// export of o.
func Dial(ctx context.Context, network, addr string, o Options) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	c, err := NewClient(ctx, conn, addr, o)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient runs the handshake on conn (named addr in errors) and returns
// the client in transmission mode. On error the caller closes conn.
func NewClient(ctx context.Context, conn net.Conn, addr string, o Options) (*Client, error) {
	c := &Client{conn: conn, addr: addr, pending: map[uint64]*call{}, contexts: map[string]uint32{},
		names: map[uint32]string{}, dead: make(chan struct{}), reader: make(chan struct{}), maxExt: o.MaxExtents}
	if c.maxExt <= 0 {
		c.maxExt = DefaultMaxExtents
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(time.Minute)
	}
	conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	err := c.handshake(o)
	if !stop() && err != nil {
		err = errors.Join(ctx.Err(), err)
	}
	if err != nil {
		return nil, c.wrap(err)
	}
	conn.SetDeadline(time.Time{})
	go c.readLoop(bufio.NewReaderSize(conn, 256<<10))
	return c, nil
}

func (c *Client) wrap(err error) error { return fmt.Errorf("nbd %s: %w", c.addr, err) }

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// ReadOnly reports whether the server exports read-only.
func (c *Client) ReadOnly() bool { return c.flags&tfReadOnly != 0 }

// Contexts returns the metadata contexts negotiated, sorted.
func (c *Client) Contexts() []string {
	out := make([]string, 0, len(c.contexts))
	for n := range c.contexts {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (c *Client) handshake(o Options) error {
	var hello [18]byte
	if _, err := io.ReadFull(c.conn, hello[:]); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if m := be.Uint64(hello[:]); m != nbdMagic {
		return formatErr("", "greeting", 0, "magic %#x, want NBDMAGIC", m)
	}
	if m := be.Uint64(hello[8:]); m != optMagic {
		return fmt.Errorf("%w: oldstyle negotiation (magic %#x); want fixed newstyle", ErrUnsupported, m)
	}
	hf := be.Uint16(hello[16:])
	if hf&flagFixedNewstyle == 0 {
		return fmt.Errorf("%w: the server does not offer fixed newstyle negotiation", ErrUnsupported)
	}
	cf := uint32(flagFixedNewstyle)
	if hf&flagNoZeroes != 0 {
		cf |= flagNoZeroes
	}
	if err := binary.Write(c.conn, be, cf); err != nil {
		return err
	}
	// Structured replies: needed for block status and holes.
	if err := c.sendOpt(optStructuredReply, nil); err != nil {
		return err
	}
	r, p, err := c.readOptReply(optStructuredReply)
	switch {
	case err != nil:
		return err
	case r.Type == repAck:
		c.structed = true
	case r.Type&repErrBit != 0:
		if len(o.MetaContexts) > 0 {
			return &ServerError{Op: "option NBD_OPT_STRUCTURED_REPLY (needed for block status)", Offset: -1, Code: r.Type, Message: string(p)}
		}
	default:
		return formatErr("", "reply to NBD_OPT_STRUCTURED_REPLY", -1, "type %d, want an ack", r.Type)
	}
	if len(o.MetaContexts) > 0 {
		if err := c.setMeta(o); err != nil {
			return err
		}
	}
	return c.optGo(o)
}

func (c *Client) sendOpt(opt uint32, data []byte) error {
	b := make([]byte, 16+len(data))
	be.PutUint64(b, optMagic)
	be.PutUint32(b[8:], opt)
	be.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	_, err := c.conn.Write(b)
	return err
}

func (c *Client) readOptReply(opt uint32) (optReply, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(c.conn, h[:]); err != nil {
		return optReply{}, nil, fmt.Errorf("reply to %s: %w", optName(opt), err)
	}
	r, err := parseOptReply(h[:], opt)
	if err != nil {
		return r, nil, err
	}
	p := make([]byte, r.Len)
	if _, err := io.ReadFull(c.conn, p); err != nil {
		return r, nil, fmt.Errorf("reply to %s: %w", optName(opt), err)
	}
	return r, p, nil
}

func appendString32(b []byte, s string) []byte {
	b = be.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func (c *Client) setMeta(o Options) error {
	var d []byte
	d = appendString32(d, o.Export)
	d = be.AppendUint32(d, uint32(len(o.MetaContexts)))
	for _, q := range o.MetaContexts {
		d = appendString32(d, q)
	}
	if err := c.sendOpt(optSetMetaContext, d); err != nil {
		return err
	}
	for n := 0; ; n++ {
		r, p, err := c.readOptReply(optSetMetaContext)
		if err != nil {
			return err
		}
		switch {
		case r.Type == repAck:
			for _, q := range o.MetaContexts {
				if _, ok := c.contexts[q]; !ok {
					return fmt.Errorf("%w: %q (export %q serves %v)", ErrNoContext, q, o.Export, c.Contexts())
				}
			}
			return nil
		case r.Type == repMetaContext:
			if n >= maxMetaContexts {
				return formatErr("", "NBD_REP_META_CONTEXT", -1, "more than %d contexts", maxMetaContexts)
			}
			id, name, err := parseMetaContext(p)
			if err != nil {
				return err
			}
			if !slices.Contains(o.MetaContexts, name) {
				return formatErr("", "NBD_REP_META_CONTEXT", -1, "context %q was not asked for", name)
			}
			if _, dup := c.names[id]; dup {
				return formatErr("", "NBD_REP_META_CONTEXT", -1, "context id %d given twice", id)
			}
			c.contexts[name], c.names[id] = id, name
		case r.Type&repErrBit != 0:
			return &ServerError{Op: "option NBD_OPT_SET_META_CONTEXT", Offset: -1, Code: r.Type, Message: string(p)}
		default:
			return formatErr("", "reply to NBD_OPT_SET_META_CONTEXT", -1, "type %d", r.Type)
		}
	}
}

func (c *Client) optGo(o Options) error {
	d := appendString32(nil, o.Export)
	d = be.AppendUint16(d, 1)
	d = be.AppendUint16(d, infoBlockSize)
	if err := c.sendOpt(optGo, d); err != nil {
		return err
	}
	var ei exportInfo
	for n := 0; ; n++ {
		r, p, err := c.readOptReply(optGo)
		if err != nil {
			return err
		}
		switch {
		case r.Type == repAck:
			if !ei.haveSize {
				return formatErr("", "reply to NBD_OPT_GO", -1, "no NBD_INFO_EXPORT before the ack")
			}
			c.size, c.flags = ei.Size, ei.Flags
			c.maxReq = MaxRequest
			if ei.MaxBlock != 0 {
				c.maxReq = min(c.maxReq, int64(ei.MaxBlock))
			}
			if ei.MinBlock > 1 {
				// Requests must be aligned to it; this client reads
				// whatever the caller asks.
				return fmt.Errorf("%w: minimum block size %d", ErrUnsupported, ei.MinBlock)
			}
			return nil
		case r.Type == repInfo:
			if n >= 64 {
				return formatErr("", "NBD_REP_INFO", -1, "more than 64 replies")
			}
			if err := parseInfo(p, &ei); err != nil {
				return err
			}
		case r.Type&repErrBit != 0:
			return &ServerError{Op: fmt.Sprintf("option NBD_OPT_GO (export %q)", o.Export), Offset: -1, Code: r.Type, Message: string(p)}
		default:
			return formatErr("", "reply to NBD_OPT_GO", -1, "type %d", r.Type)
		}
	}
}

// Close ends the transmission (NBD_CMD_DISC) and closes the connection.
func (c *Client) Close() error {
	c.wmu.Lock()
	var b [28]byte
	putRequest(b[:], cmdDisc, 0, 0, 0, 0)
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.conn.Write(b[:])
	c.wmu.Unlock()
	c.fail(ErrClosed)
	<-c.reader
	return nil
}

// call is one request in flight.
type call struct {
	typ     uint16
	off     int64
	length  int64
	buf     []byte // read: the caller's buffer
	covered int64  // read: bytes the chunks gave
	ctxID   uint32 // block status: the context wanted
	extents []Extent
	err     error // the server's error
	done    chan struct{}
}

func putRequest(b []byte, typ, flags uint16, cookie uint64, off int64, length uint32) {
	be.PutUint32(b, requestMagic)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], typ)
	be.PutUint64(b[8:], cookie)
	be.PutUint64(b[16:], uint64(off))
	be.PutUint32(b[24:], length)
}

// fail kills the connection with err (the first error wins) and fails
// every call in flight.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.dead)
		c.conn.Close()
	}
	c.mu.Unlock()
}

// start sends a request for cl.
func (c *Client) start(cl *call, flags uint16) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.cookie++
	ck := c.cookie
	c.pending[ck] = cl
	c.mu.Unlock()
	var b [28]byte
	putRequest(b[:], cl.typ, flags, ck, cl.off, uint32(cl.length))
	c.wmu.Lock()
	_, err := c.conn.Write(b[:])
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("%w: %v", ErrClosed, err))
	}
	return nil
}

// wait waits for cl. A context that ends first kills the connection (an
// NBD request cannot be taken back, and the reply would be written into
// the caller's buffer after it returned): every later call fails.
func (c *Client) wait(ctx context.Context, cl *call) error {
	select {
	case <-cl.done:
		return cl.err
	case <-c.dead:
	case <-ctx.Done():
		c.fail(fmt.Errorf("%w: a request was cancelled: %v", ErrClosed, ctx.Err()))
		<-c.reader
		return ctx.Err()
	}
	<-c.reader // no more writes into cl.buf
	select {
	case <-cl.done:
		return cl.err
	default:
	}
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	return c.wrap(err)
}

// readLoop reads replies and completes their calls until the connection
// dies.
func (c *Client) readLoop(r *bufio.Reader) {
	defer close(c.reader)
	for {
		if err := c.readReply(r); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = fmt.Errorf("%w: %v", ErrClosed, err)
			}
			c.fail(err)
			return
		}
	}
}

func (c *Client) take(cookie uint64, done bool) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.pending[cookie]
	if done {
		delete(c.pending, cookie)
	}
	return cl
}

func (c *Client) readReply(r *bufio.Reader) error {
	var h [20]byte
	if _, err := io.ReadFull(r, h[:4]); err != nil {
		return err
	}
	switch m := be.Uint32(h[:]); m {
	case simpleMagic:
		if _, err := io.ReadFull(r, h[4:16]); err != nil {
			return err
		}
		code, cookie := be.Uint32(h[4:]), be.Uint64(h[8:])
		cl := c.take(cookie, true)
		if cl == nil {
			return formatErr("", "simple reply", -1, "cookie %d answers no request", cookie)
		}
		if code != 0 {
			cl.err = &ServerError{Op: cmdName(cl.typ), Offset: cl.off, Code: code}
		} else if cl.typ == cmdRead {
			if _, err := io.ReadFull(r, cl.buf); err != nil {
				return err
			}
			cl.covered = cl.length
		} else if cl.typ == cmdBlockStatus {
			cl.err = formatErr("", "simple reply to NBD_CMD_BLOCK_STATUS", cl.off, "block status needs a structured reply")
		}
		close(cl.done)
		return nil
	case structMagic:
		if _, err := io.ReadFull(r, h[4:20]); err != nil {
			return err
		}
		return c.chunk(r, parseChunkHeader(h[4:20]))
	default:
		return formatErr("", "reply", -1, "magic %#x is neither a simple nor a structured reply", m)
	}
}

// chunk reads one structured reply chunk of header ch.
func (c *Client) chunk(r *bufio.Reader, ch chunkHeader) error {
	done := ch.Flags&replyFlagDone != 0
	cl := c.take(ch.Cookie, done)
	if cl == nil {
		return formatErr("", "structured reply", -1, "cookie %d answers no request", ch.Cookie)
	}
	what := fmt.Sprintf("%s reply chunk (type %d)", cmdName(cl.typ), ch.Type)
	payload := func(max int64) ([]byte, error) {
		if int64(ch.Len) > max {
			return nil, formatErr("", what, cl.off, "payload of %d bytes, the most allowed is %d", ch.Len, max)
		}
		p := make([]byte, ch.Len)
		_, err := io.ReadFull(r, p)
		return p, err
	}
	switch {
	case ch.Type == replyNone:
		if ch.Len != 0 || !done {
			return formatErr("", what, cl.off, "NBD_REPLY_TYPE_NONE with %d bytes, done %v", ch.Len, done)
		}
	case ch.Type == replyOffsetData && cl.typ == cmdRead:
		if ch.Len < 8 {
			return formatErr("", what, cl.off, "NBD_REPLY_TYPE_OFFSET_DATA of %d bytes", ch.Len)
		}
		var ob [8]byte
		if _, err := io.ReadFull(r, ob[:]); err != nil {
			return err
		}
		o, n := be.Uint64(ob[:]), int64(ch.Len-8)
		if o < uint64(cl.off) || o > uint64(cl.off+cl.length) || n > cl.off+cl.length-int64(o) {
			return formatErr("", what, cl.off, "data at %d+%d outside the request %d+%d", o, n, cl.off, cl.length)
		}
		if _, err := io.ReadFull(r, cl.buf[int64(o)-cl.off:int64(o)-cl.off+n]); err != nil {
			return err
		}
		cl.covered += n
	case ch.Type == replyOffsetHole && cl.typ == cmdRead:
		p, err := payload(12)
		if err != nil {
			return err
		}
		if len(p) != 12 {
			return formatErr("", what, cl.off, "NBD_REPLY_TYPE_OFFSET_HOLE of %d bytes, want 12", len(p))
		}
		o, n := be.Uint64(p), int64(be.Uint32(p[8:]))
		if n == 0 || o < uint64(cl.off) || o > uint64(cl.off+cl.length) || n > cl.off+cl.length-int64(o) {
			return formatErr("", what, cl.off, "hole at %d+%d outside the request %d+%d", o, n, cl.off, cl.length)
		}
		clear(cl.buf[int64(o)-cl.off : int64(o)-cl.off+n])
		cl.covered += n
	case ch.Type == replyBlockStatus && cl.typ == cmdBlockStatus:
		p, err := payload(maxStatusPayload)
		if err != nil {
			return err
		}
		id, ext, err := parseBlockStatus(p, cl.off, cl.length)
		if err != nil {
			return err
		}
		if _, ok := c.names[id]; !ok {
			return formatErr("", what, cl.off, "context id %d was not negotiated", id)
		}
		if id == cl.ctxID {
			if cl.extents != nil {
				return formatErr("", what, cl.off, "two block status chunks for context %q", c.names[id])
			}
			if len(ext) == 0 {
				return formatErr("", what, cl.off, "no extent for context %q", c.names[id])
			}
			cl.extents = ext
		}
	case ch.Type&(1<<15) != 0:
		p, err := payload(6 + maxErrMessage + 8)
		if err != nil {
			return err
		}
		e, err := parseErrorChunk(p, ch.Type)
		if err != nil {
			return err
		}
		off := cl.off
		if e.Offset >= 0 {
			if e.Offset < cl.off || e.Offset >= cl.off+cl.length {
				return formatErr("", what, cl.off, "error at offset %d outside the request %d+%d", e.Offset, cl.off, cl.length)
			}
			off = e.Offset
		}
		if cl.err == nil {
			cl.err = &ServerError{Op: cmdName(cl.typ), Offset: off, Code: e.Code, Message: e.Message}
		}
	default:
		return formatErr("", what, cl.off, "unexpected chunk type %d", ch.Type)
	}
	if cl.typ == cmdRead && cl.covered > cl.length {
		return formatErr("", what, cl.off, "chunks give %d bytes for a request of %d", cl.covered, cl.length)
	}
	if done {
		if cl.err == nil {
			switch {
			case cl.typ == cmdRead && cl.covered != cl.length:
				cl.err = formatErr(c.addr, "NBD_CMD_READ reply", cl.off, "chunks cover %d of the %d bytes asked", cl.covered, cl.length)
			case cl.typ == cmdBlockStatus && cl.extents == nil:
				cl.err = formatErr(c.addr, "NBD_CMD_BLOCK_STATUS reply", cl.off, "no extents for context %q", c.names[cl.ctxID])
			}
		}
		close(cl.done)
	}
	return nil
}

func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "NBD_CMD_READ"
	case cmdBlockStatus:
		return "NBD_CMD_BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", t)
}

// ReadAt reads len(p) bytes at off: io.ReaderAt, io.EOF at the end of
// the export.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	return c.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt under ctx. A long read is split into requests
// of at most the server's maximum, all in flight at once.
func (c *Client) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("nbd: read at negative offset %d", off)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if off >= c.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), c.size-off))
	calls := make([]*call, 0, (int64(n)+c.maxReq-1)/c.maxReq)
	var err error
	for pos := int64(0); pos < int64(n); pos += c.maxReq {
		l := min(c.maxReq, int64(n)-pos)
		cl := &call{typ: cmdRead, off: off + pos, length: l, buf: p[pos : pos+l], done: make(chan struct{})}
		if err = c.start(cl, cmdFlagDF); err != nil {
			break
		}
		calls = append(calls, cl)
	}
	good := int64(0)
	for _, cl := range calls {
		e := c.wait(ctx, cl)
		if e != nil && err == nil {
			err = e
		}
		if err == nil {
			good += cl.length
		}
	}
	if err != nil {
		return int(good), err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// BlockStatus returns the extents of metadata context name over [off,
// off+length) (clipped to the export), asking as many requests as the
// server needs to cover it, neighbours with the same flags merged: at
// most Options.MaxExtents of them (ErrTooManyExtents beyond).
func (c *Client) BlockStatus(ctx context.Context, name string, off, length int64) ([]Extent, error) {
	id, ok := c.contexts[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q was not negotiated (have %v)", ErrNoContext, name, c.Contexts())
	}
	if off < 0 || length < 0 {
		return nil, fmt.Errorf("nbd: block status of %d+%d", off, length)
	}
	end := min(off+length, c.size)
	var out []Extent
	for pos := off; pos < end; {
		l := min(end-pos, 1<<31)
		cl := &call{typ: cmdBlockStatus, off: pos, length: l, ctxID: id, done: make(chan struct{})}
		if err := c.start(cl, 0); err != nil {
			return out, err
		}
		if err := c.wait(ctx, cl); err != nil {
			return out, err
		}
		for _, e := range cl.extents {
			if n := len(out); n > 0 && out[n-1].Flags == e.Flags && out[n-1].Off+out[n-1].Len == e.Off {
				out[n-1].Len += e.Len
			} else {
				if len(out) == c.maxExt {
					return out, fmt.Errorf("%w: %s over %d+%d: more than %d before offset %d", ErrTooManyExtents, name, off, length, c.maxExt, e.Off)
				}
				out = append(out, e)
			}
			pos = e.Off + e.Len
		}
	}
	return out, nil
}

// ReaderAt is c as an io.ReaderAt whose reads run under ctx.
func (c *Client) ReaderAt(ctx context.Context) io.ReaderAt { return ctxReader{c, ctx} }

type ctxReader struct {
	c   *Client
	ctx context.Context
}

func (r ctxReader) ReadAt(p []byte, off int64) (int, error) { return r.c.ReadAtContext(r.ctx, p, off) }
