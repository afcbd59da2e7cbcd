package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/vmscope/vmscope/vmerr"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// GDB is a client of QEMU's GDB stub (the remote serial protocol as
// QEMU's gdbstub speaks it). Threads are vCPUs: thread id N is QEMU's
// cpu-index N-1. One exchange runs at a time; stop replies, which the stub
// sends on its own when the guest stops, are queued apart from replies.
//
// GDB is the mechanism; Guest is the policy (what is restored on Close).
// A GDB that is closed without Detach leaves the guest stopped and its
// breakpoints armed: use Guest unless you mean that.
type GDB struct {
	conn       net.Conn
	packetSize int
	ack        bool // ack mode: every packet received is acknowledged with '+'

	wmu sync.Mutex // one writer at a time (packets, acks, interrupts)

	mu      sync.Mutex // one exchange at a time
	stale   int        // replies still owed to abandoned exchanges
	gThread int        // thread selected by Hg, 0 when unknown
	phys    int        // physical-memory mode: -1 unknown, 0 off, 1 on

	replies chan []byte
	done    chan struct{} // closed when the reader stops
	readErr error         // why the reader stopped; read after done

	smu    sync.Mutex
	stops  []Stop // stop replies not yet taken, oldest first, bounded
	stopCh chan struct{}

	// logf is VMSCOPE_GDB_LOG's file: every packet sent (->) and
	// received (<-), and the stops as the Guest took them (..), with
	// the time, each cut at 400 bytes.
	lmu  sync.Mutex
	logf *os.File
}

// logPkt writes one line of the packet log (VMSCOPE_GDB_LOG).
func (g *GDB) logPkt(dir string, b []byte) {
	g.lmu.Lock()
	defer g.lmu.Unlock()
	if g.logf == nil {
		return
	}
	if len(b) > 400 {
		b = b[:400]
	}
	fmt.Fprintf(g.logf, "%s %s %q\n", time.Now().Format("15:04:05.000000"), dir, b)
}

// maxQueuedStops bounds the stop replies kept for NextStop; older ones are
// dropped first.
const maxQueuedStops = 256

// opTimeout bounds one exchange when the context has no deadline, so a
// stub that stops answering cannot hang a caller (or a cleanup) forever.
const opTimeout = 30 * time.Second

// DialGDB connects to a GDB stub at addr (host:port), which stops the
// guest, and negotiates: qSupported (the packet size) and no-ack mode.
func DialGDB(ctx context.Context, addr string) (*GDB, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("qemu: gdb stub %s: %w", addr, err)
	}
	g := &GDB{
		conn: conn, ack: true, packetSize: 4096 - 4, phys: -1,
		replies: make(chan []byte, 4*maxPipelineWindow), done: make(chan struct{}), stopCh: make(chan struct{}, 1),
	}
	if p := os.Getenv("VMSCOPE_GDB_LOG"); p != "" {
		g.logf, _ = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	}
	go g.readLoop()
	if err := g.negotiate(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qemu: gdb stub %s: %w", addr, err)
	}
	return g, nil
}

func (g *GDB) negotiate(ctx context.Context) error {
	r, err := g.Command(ctx, "qSupported:xmlRegisters=i386")
	if err != nil {
		return err
	}
	// QEMU handles QStartNoAckMode without announcing it (7.2 does not):
	// ask anyway, and stay in ack mode if the stub does not know it.
	for _, f := range strings.Split(string(r), ";") {
		if v, ok := strings.CutPrefix(f, "PacketSize="); ok {
			n, err := strconv.ParseUint(v, 16, 32)
			if err != nil || n < 64 {
				return fmt.Errorf("%w: PacketSize %q", ErrProtocol, v)
			}
			g.packetSize = int(min(n, maxPacket))
		}
	}
	r, err = g.Command(ctx, "QStartNoAckMode")
	if err != nil {
		return err
	}
	if string(r) == "OK" {
		g.wmu.Lock()
		g.ack = false
		g.wmu.Unlock()
	}
	// The stub may have sent a stop reply for the stop that attaching
	// caused; it is in the queue by now (replies are in stream order).
	g.drainStops()
	return nil
}

// PacketSize is the largest packet the stub accepts, as qSupported said.
func (g *GDB) PacketSize() int { return g.packetSize }

func (g *GDB) readLoop() {
	defer close(g.done)
	r := bufio.NewReaderSize(g.conn, 64<<10)
	for {
		p, err := readPacket(r)
		if err != nil {
			g.readErr = err
			return
		}
		g.logPkt("<-", p)
		g.wmu.Lock()
		ack := g.ack
		g.wmu.Unlock()
		if ack {
			g.write([]byte{'+'})
		}
		if isStopReply(p) {
			g.queueStop(parseStop(p))
			continue
		}
		select {
		case g.replies <- p:
		default: // more replies than requests in flight: the stream is lost
			g.readErr = fmt.Errorf("%w: unrequested reply %q", ErrProtocol, trunc(p))
			g.conn.Close()
			return
		}
	}
}

func trunc(p []byte) []byte {
	if len(p) > 40 {
		return p[:40]
	}
	return p
}

func (g *GDB) queueStop(s Stop) {
	g.smu.Lock()
	if len(g.stops) >= maxQueuedStops {
		g.stops = g.stops[1:]
	}
	g.stops = append(g.stops, s)
	g.smu.Unlock()
	select {
	case g.stopCh <- struct{}{}:
	default:
	}
}

func (g *GDB) drainStops() {
	g.smu.Lock()
	g.stops = nil
	g.smu.Unlock()
}

// NextStop waits for the next stop reply (a breakpoint, watchpoint, step,
// interrupt, or the guest stopped by someone else) and returns it.
func (g *GDB) NextStop(ctx context.Context) (Stop, error) {
	for {
		g.smu.Lock()
		if len(g.stops) > 0 {
			s := g.stops[0]
			g.stops = g.stops[1:]
			g.smu.Unlock()
			return s, nil
		}
		g.smu.Unlock()
		select {
		case <-g.stopCh:
		case <-g.done:
			return Stop{}, g.deadErr()
		case <-ctx.Done():
			return Stop{}, ctx.Err()
		}
	}
}

func (g *GDB) deadErr() error {
	<-g.done
	if g.readErr != nil {
		return fmt.Errorf("qemu: gdb stub connection: %w", g.readErr)
	}
	return errors.New("qemu: gdb stub connection closed")
}

func (g *GDB) write(b []byte) error {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	g.conn.SetWriteDeadline(time.Now().Add(opTimeout))
	g.logPkt("->", b)
	_, err := g.conn.Write(b)
	return err
}

// Send writes one packet and does not wait for a reply (vCont continue
// and step, whose answer is a stop reply that comes later).
func (g *GDB) Send(payload string) error {
	if err := g.write(appendPacket(nil, []byte(payload))); err != nil {
		return fmt.Errorf("qemu: gdb %s: %w", cmdName(payload), err)
	}
	return nil
}

// Interrupt sends the 0x03 byte, which stops a running guest; the stub
// answers with a stop reply (see NextStop).
func (g *GDB) Interrupt() error { return g.write([]byte{0x03}) }

// Command sends one packet and returns the stub's reply (the empty reply
// means the stub does not know the packet). Stop replies that arrive
// meanwhile are queued for NextStop.
func (g *GDB) Command(ctx context.Context, payload string) ([]byte, error) {
	var out []byte
	err := g.pipeline(ctx, 1, func(int) []byte { return []byte(payload) }, func(_ int, r []byte) error {
		out = r
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("qemu: gdb %s: %w", cmdName(payload), err)
	}
	return out, nil
}

func cmdName(payload string) string {
	if i := strings.IndexAny(payload, ":;,="); i > 0 {
		return payload[:i]
	}
	if len(payload) > 24 {
		return payload[:24]
	}
	return payload
}

// pipelineWindow is how many requests are in flight at once in a
// pipelined exchange: the stub answers in order.
var pipelineWindow = 8

const maxPipelineWindow = 64

// pipeline sends n requests, at most pipelineWindow at a time, and hands
// each reply to handle in order. On cancellation the replies still owed
// are counted in g.stale and skipped by the next exchange.
func (g *GDB) pipeline(ctx context.Context, n int, req func(i int) []byte, handle func(i int, reply []byte) error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opTimeout)
		defer cancel()
	}
	for g.stale > 0 {
		if _, err := g.reply(ctx); err != nil {
			return fmt.Errorf("skipping a reply owed to an abandoned request: %w", err)
		}
		g.stale--
	}
	// Pipelining in ack mode too: QEMU (7.2 has no no-ack mode) takes a
	// '$' as acknowledging its last reply and answers packets in order;
	// over TCP nothing is ever retransmitted.
	window := pipelineWindow
	sent, got := 0, 0
	var buf []byte
	var herr error
	for got < n {
		for sent < n && sent-got < window {
			buf = appendPacket(buf[:0], req(sent))
			if err := g.write(buf); err != nil {
				g.stale += sent - got // a partial packet: the stream may be broken anyway
				return err
			}
			sent++
		}
		r, err := g.reply(ctx)
		if err != nil {
			g.stale += sent - got
			return err
		}
		if herr == nil {
			herr = handle(got, r)
		}
		got++
		if herr != nil && sent == got {
			break
		}
		if herr != nil {
			n = sent // send no more; collect what is owed
		}
	}
	return herr
}

func (g *GDB) reply(ctx context.Context) ([]byte, error) {
	select {
	case r := <-g.replies:
		return r, nil
	case <-g.done:
		select {
		case r := <-g.replies:
			return r, nil
		default:
		}
		return nil, g.deadErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// StubError is an "Exx" reply.
type StubError struct {
	Cmd  string
	Code int
}

func (e *StubError) Error() string {
	return fmt.Sprintf("qemu: gdb %s: stub error E%02x", e.Cmd, e.Code)
}

// ErrUnsupported is the empty reply: the stub does not know the packet.
var ErrUnsupported = vmerr.New("qemu: gdb stub does not support the packet", vmerr.ErrUnsupported)

func checkReply(payload string, r []byte) error {
	if isErrorReply(r) {
		c, _ := unhexByte(r[1], r[2])
		return &StubError{Cmd: cmdName(payload), Code: int(c)}
	}
	if len(r) == 0 {
		return fmt.Errorf("%w: %s", ErrUnsupported, cmdName(payload))
	}
	return nil
}

// Exec sends one packet and expects "OK": an "Exx" reply is a
// *StubError, the empty reply ErrUnsupported.
func (g *GDB) Exec(ctx context.Context, payload string) error { return g.expectOK(ctx, payload) }

func (g *GDB) expectOK(ctx context.Context, payload string) error {
	r, err := g.Command(ctx, payload)
	if err != nil {
		return err
	}
	if err := checkReply(payload, r); err != nil {
		return err
	}
	if string(r) != "OK" {
		return fmt.Errorf("%w: %s answered %q", ErrProtocol, cmdName(payload), trunc(r))
	}
	return nil
}

// Threads lists the stub's thread ids (vCPU N-1 is thread N).
func (g *GDB) Threads(ctx context.Context) ([]int, error) {
	var ids []int
	q := "qfThreadInfo"
	for i := 0; i < 4096; i++ {
		r, err := g.Command(ctx, q)
		if err != nil {
			return nil, err
		}
		if err := checkReply(q, r); err != nil {
			return nil, err
		}
		if r[0] == 'l' {
			return ids, nil
		}
		if r[0] != 'm' {
			return nil, fmt.Errorf("%w: qfThreadInfo answered %q", ErrProtocol, trunc(r))
		}
		for _, f := range strings.Split(string(r[1:]), ",") {
			id, err := parseThreadID(f)
			if err != nil {
				return nil, err
			}
			ids = append(ids, id)
		}
		q = "qsThreadInfo"
	}
	return nil, fmt.Errorf("%w: thread list does not end", ErrProtocol)
}

// parseThreadID parses "N" or the multiprocess form "pP.N" (hex).
func parseThreadID(s string) (int, error) {
	if strings.HasPrefix(s, "p") {
		if _, t, ok := strings.Cut(s, "."); ok {
			s = t
		}
	}
	n, err := strconv.ParseUint(s, 16, 31)
	if err != nil {
		return 0, fmt.Errorf("%w: thread id %q", ErrProtocol, s)
	}
	return int(n), nil
}

// SelectThread makes thread the one register packets ('g', 'p', 'P')
// apply to (Hg), unless it is already.
func (g *GDB) SelectThread(ctx context.Context, thread int) error { return g.selectThread(ctx, thread) }

func (g *GDB) selectThread(ctx context.Context, thread int) error {
	g.mu.Lock()
	cur := g.gThread
	g.mu.Unlock()
	if cur == thread {
		return nil
	}
	if err := g.expectOK(ctx, fmt.Sprintf("Hg%x", thread)); err != nil {
		return err
	}
	g.mu.Lock()
	g.gThread = thread
	g.mu.Unlock()
	return nil
}

// ReadRegisters returns the 'g' block of a thread: the core registers in
// target-description order, little-endian.
func (g *GDB) ReadRegisters(ctx context.Context, thread int) ([]byte, error) {
	if err := g.selectThread(ctx, thread); err != nil {
		return nil, err
	}
	r, err := g.Command(ctx, "g")
	if err != nil {
		return nil, err
	}
	if err := checkReply("g", r); err != nil {
		return nil, err
	}
	return decodeRegHex(r)
}

// decodeRegHex decodes register hex, where "xx" (unavailable) reads as 0.
func decodeRegHex(r []byte) ([]byte, error) {
	if len(r)%2 != 0 {
		return nil, fmt.Errorf("%w: register reply of odd length %d", ErrProtocol, len(r))
	}
	out := make([]byte, len(r)/2)
	for i := range out {
		if r[2*i] == 'x' && r[2*i+1] == 'x' {
			continue
		}
		b, ok := unhexByte(r[2*i], r[2*i+1])
		if !ok {
			return nil, fmt.Errorf("%w: register reply %q", ErrProtocol, trunc(r))
		}
		out[i] = b
	}
	return out, nil
}

// ReadRegister reads register regnum of a thread ('p').
func (g *GDB) ReadRegister(ctx context.Context, thread, regnum int) ([]byte, error) {
	if err := g.selectThread(ctx, thread); err != nil {
		return nil, err
	}
	q := fmt.Sprintf("p%x", regnum)
	r, err := g.Command(ctx, q)
	if err != nil {
		return nil, err
	}
	if err := checkReply(q, r); err != nil {
		return nil, err
	}
	return decodeRegHex(r)
}

// SetPhysicalMode switches memory packets between guest-virtual addresses
// (of the selected vCPU's address space; the default) and guest-physical
// ones (Qqemu.PhyMemMode). The mode is global to the stub and outlives the
// connection: whoever turns it on turns it off.
func (g *GDB) SetPhysicalMode(ctx context.Context, on bool) error {
	v := 0
	if on {
		v = 1
	}
	if err := g.expectOK(ctx, fmt.Sprintf("Qqemu.PhyMemMode:%d", v)); err != nil {
		return err
	}
	g.mu.Lock()
	g.phys = v
	g.mu.Unlock()
	return nil
}

// PhysicalMode asks the stub whether memory packets are physical.
func (g *GDB) PhysicalMode(ctx context.Context) (bool, error) {
	r, err := g.Command(ctx, "qqemu.PhyMemMode")
	if err != nil {
		return false, err
	}
	if err := checkReply("qqemu.PhyMemMode", r); err != nil {
		return false, err
	}
	return string(r) == "1", nil
}

// readChunk is the most bytes one 'm' asks for: the hex reply must fit
// the packet size (QEMU also refuses more than MAX_PACKET_LENGTH/2).
func (g *GDB) readChunk() int {
	n := g.packetSize / 2
	// a power of two keeps page-aligned reads in whole packets
	p := 1
	for p*2 <= n {
		p *= 2
	}
	return p
}

// ReadMemory fills p from addr (virtual or physical, per the mode), in
// 'm' packets of the largest size the stub takes, pipelined.
func (g *GDB) ReadMemory(ctx context.Context, addr uint64, p []byte) error {
	chunk := g.readChunk()
	n := (len(p) + chunk - 1) / chunk
	err := g.pipeline(ctx, n, func(i int) []byte {
		lo := i * chunk
		hi := min(lo+chunk, len(p))
		return fmt.Appendf(nil, "m%x,%x", addr+uint64(lo), hi-lo)
	}, func(i int, r []byte) error {
		lo := i * chunk
		hi := min(lo+chunk, len(p))
		if err := checkReply("m", r); err != nil {
			return fmt.Errorf("%#x: %w", addr+uint64(lo), err)
		}
		return decodeHex(p[lo:hi], r)
	})
	if err != nil {
		return fmt.Errorf("qemu: gdb read memory %#x+%#x: %w", addr, len(p), err)
	}
	return nil
}

// BreakKind is the type of a Z packet.
type BreakKind int

// The break and watch kinds of Z0-Z4. Addresses are guest-virtual.
const (
	SoftwareBreak BreakKind = iota // Z0 (under TCG QEMU does not patch guest memory)
	HardwareBreak                  // Z1
	WriteWatch                     // Z2
	ReadWatch                      // Z3
	AccessWatch                    // Z4
)

func (k BreakKind) String() string {
	return [...]string{"software breakpoint", "hardware breakpoint", "write watchpoint", "read watchpoint", "access watchpoint"}[k]
}

// Insert sets a breakpoint or watchpoint (Z). size is the watched length,
// or the breakpoint kind (1 on x86).
func (g *GDB) Insert(ctx context.Context, kind BreakKind, addr uint64, size int) error {
	return g.expectOK(ctx, fmt.Sprintf("Z%d,%x,%x", kind, addr, size))
}

// Remove clears a breakpoint or watchpoint (z).
func (g *GDB) Remove(ctx context.Context, kind BreakKind, addr uint64, size int) error {
	return g.expectOK(ctx, fmt.Sprintf("z%d,%x,%x", kind, addr, size))
}

// Detach ends the debugging session: QEMU removes every breakpoint and
// watchpoint and resumes the guest.
func (g *GDB) Detach(ctx context.Context) error { return g.expectOK(ctx, "D") }

// Close closes the connection. Without Detach first the guest stays
// stopped (QEMU stops it when its client goes away).
func (g *GDB) Close() error {
	err := g.conn.Close()
	<-g.done
	g.lmu.Lock()
	if g.logf != nil {
		g.logf.Close()
		g.logf = nil
	}
	g.lmu.Unlock()
	return err
}

// Stop is a stop reply: why the guest stopped and which vCPU.
type Stop struct {
	Signal int    // 5 (SIGTRAP): breakpoint, watchpoint or step; 2 (SIGINT): interrupted or paused
	Thread int    // the vCPU's thread id (cpu-index+1); 0 when not said
	Watch  string // "watch", "rwatch" or "awatch" for a watchpoint hit
	Addr   uint64 // the watched address that was hit
	Exited bool   // W or X: the guest is gone
	Raw    string
}

func parseStop(p []byte) Stop {
	s := Stop{Raw: string(p)}
	sig, _ := unhexByte(p[1], p[2])
	s.Signal = int(sig)
	switch p[0] {
	case 'W', 'X':
		s.Exited = true
		return s
	case 'S':
		return s
	}
	for _, kv := range bytes.Split(p[3:], []byte(";")) {
		k, v, ok := bytes.Cut(kv, []byte(":"))
		if !ok {
			continue
		}
		switch string(k) {
		case "thread":
			if id, err := parseThreadID(string(v)); err == nil {
				s.Thread = id
			}
		case "watch", "rwatch", "awatch":
			if a, err := strconv.ParseUint(string(v), 16, 64); err == nil {
				s.Watch, s.Addr = string(k), a
			}
		}
	}
	return s
}
