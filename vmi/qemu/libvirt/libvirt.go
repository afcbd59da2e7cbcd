package libvirt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// Errors of the package.
var (
	// ErrNotRunning: the domain exists but its QEMU is not running.
	ErrNotRunning = vmerr.New("libvirt: domain not running", vmerr.ErrNotPresent)
	// ErrPID: the domain's pidfile does not name the domain's QEMU.
	ErrPID = vmerr.New("libvirt: domain pid", vmerr.ErrCorrupt)
	// ErrReply: the monitor pass-through answered something that is not
	// a QMP reply.
	ErrReply = vmerr.New("libvirt: monitor reply", vmerr.ErrCorrupt)
	// ErrStub: QEMU did not open or close the GDB stub.
	ErrStub = vmerr.New("libvirt: gdbserver", vmerr.ErrUnsupported)
	// ErrRefused: a QMP command the pass-through must not carry.
	ErrRefused = vmerr.New("libvirt: refused through the monitor pass-through", vmerr.ErrUnsupported)
)

// refused are QMP commands that Execute does not pass through, with the
// reason. dump-guest-memory: libvirtd 9.0 (Debian 12) dereferences a NULL
// job on the DUMP_COMPLETED event of a dump it did not start and crashes
// (segfault in libvirt_driver_qemu.so, every domain's management gone);
// DumpGuestMemory asks libvirt for the dump instead.
var refused = map[string]string{
	"dump-guest-memory": "libvirtd 9.0 crashes on the DUMP_COMPLETED event of a dump it did not start; use Domain.DumpGuestMemory (virDomainCoreDumpWithFormat, virsh dump --memory-only)",
}

// Bounds on what libvirt and the host give back.
const (
	maxReply   = 64 << 20 // info mtree and query-* answers are far smaller
	maxPIDFile = 64
	maxCmdline = 1 << 20
	dialTime   = 10 * time.Second
)

// RunDir is the system instance's runtime directory of the QEMU driver:
// DOMAIN.pid and DOMAIN.xml of each running domain.
var RunDir = "/run/libvirt/qemu"

// Dial connects to libvirt, looks the domain up, checks that it runs and
// returns its endpoint: the monitor pass-through, the QEMU process (PID
// from RunDir, checked against /proc/PID/cmdline) and a GDB stub opened on
// demand. Close disconnects from libvirt; it does not close a stub
// OpenGDB opened (its closer does).
func Dial(ctx context.Context, spec string) (qemu.Endpoint, error) {
	sp, err := ParseSpec(spec)
	if err != nil {
		return qemu.Endpoint{}, err
	}
	c, err := dial(ctx, sp)
	if err != nil {
		return qemu.Endpoint{}, err
	}
	d, err := c.domain(ctx, sp.Domain)
	if err == nil {
		d.pid, err = DomainPID(sp.Domain)
	}
	if err != nil {
		c.close()
		return qemu.Endpoint{}, err
	}
	return qemu.Endpoint{
		Name:    spec,
		Monitor: d,
		PID:     d.pid,
		OpenGDB: d.OpenGDB,
		Close:   c.close,
	}, nil
}

// conn is a connection to libvirt.
type conn struct {
	l   *golibvirt.Libvirt
	uri string
}

// call runs f, which cannot be interrupted (go-libvirt takes no context),
// and returns early with ctx's error when ctx ends first; f's answer is
// then dropped.
func call[T any](ctx context.Context, f func() (T, error)) (T, error) {
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() {
		v, err := f()
		ch <- res{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

func dial(ctx context.Context, sp Spec) (*conn, error) {
	u, err := url.Parse(sp.URI)
	if err != nil {
		return nil, fmt.Errorf("libvirt: uri %q: %w", sp.URI, err)
	}
	var opts []dialers.LocalOption
	opts = append(opts, dialers.WithLocalTimeout(dialTime))
	if s := u.Query().Get("socket"); s != "" {
		opts = append(opts, dialers.WithSocket(s))
	}
	l := golibvirt.NewWithDialer(dialers.NewLocal(opts...))
	_, err = call(ctx, func() (struct{}, error) {
		return struct{}{}, l.ConnectToURI(golibvirt.QEMUSystem)
	})
	if err != nil {
		if ctx.Err() != nil {
			// the connect may still complete: close it then
			go func() { time.Sleep(dialTime); l.Disconnect() }()
		}
		return nil, fmt.Errorf("libvirt: connect %s: %w", sp.URI, err)
	}
	return &conn{l: l, uri: sp.URI}, nil
}

func (c *conn) close() error {
	if err := c.l.Disconnect(); err != nil {
		return fmt.Errorf("libvirt: disconnect %s: %w", c.uri, err)
	}
	return nil
}

// domainStateRunning is VIR_DOMAIN_RUNNING; paused is VIR_DOMAIN_PAUSED.
const (
	domainStateRunning = 1
	domainStatePaused  = 3
)

func (c *conn) domain(ctx context.Context, name string) (*Domain, error) {
	dom, err := call(ctx, func() (golibvirt.Domain, error) { return c.l.DomainLookupByName(name) })
	if err != nil {
		return nil, fmt.Errorf("libvirt: domain %q on %s: %w", name, c.uri, err)
	}
	st, err := call(ctx, func() (int32, error) {
		s, _, err := c.l.DomainGetState(dom, 0)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("libvirt: domain %q: state: %w", name, err)
	}
	if st != domainStateRunning && st != domainStatePaused {
		return nil, fmt.Errorf("%w: %q is in libvirt state %d (1 running, 3 paused)", ErrNotRunning, name, st)
	}
	return &Domain{c: c, dom: dom, name: name}, nil
}

// Domain is a running libvirt domain's QEMU monitor, reached through
// libvirt's monitor pass-through (virDomainQemuMonitorCommand, as
// `virsh qemu-monitor-command`). It is a qemu.Monitor. Each use taints
// the domain (see the package documentation).
type Domain struct {
	c    *conn
	dom  golibvirt.Domain
	name string
	pid  int
}

var _ qemu.Monitor = (*Domain)(nil)

// Execute runs one QMP command through the pass-through and returns its
// "return" member; an error answer of QEMU is a *qemu.QMPError, an error
// of libvirt (domain gone, connection lost) wraps libvirt's.
func (d *Domain) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	if why, ok := refused[command]; ok {
		return nil, fmt.Errorf("%w: %s: %s", ErrRefused, command, why)
	}
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	out, err := call(ctx, func() (string, error) { return d.c.l.QEMUDomainMonitorCommand(d.dom, string(b), 0) })
	if err != nil {
		return nil, fmt.Errorf("libvirt: domain %q: qemu-monitor-command %s: %w", d.name, command, err)
	}
	return parseReply(command, []byte(out))
}

// parseReply takes the "return" member of a QMP reply, or its "error" as
// a *qemu.QMPError.
func parseReply(command string, b []byte) (json.RawMessage, error) {
	if len(b) > maxReply {
		return nil, fmt.Errorf("%w: %s: %d bytes (at most %d)", ErrReply, command, len(b), maxReply)
	}
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrReply, command, err)
	}
	switch {
	case r.Error != nil:
		return nil, &qemu.QMPError{Command: command, Class: r.Error.Class, Desc: r.Error.Desc}
	case r.Return == nil:
		return nil, fmt.Errorf("%w: %s: neither return nor error in %q", ErrReply, command, trunc(b))
	}
	return r.Return, nil
}

func trunc(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

// HMP runs one human-monitor command line. It goes as QMP
// human-monitor-command through the same pass-through (what libvirt does
// itself for `virsh qemu-monitor-command --hmp`, flag 1), so that an error
// QEMU answers keeps its class as a *qemu.QMPError.
func (d *Domain) HMP(ctx context.Context, line string) (string, error) {
	r, err := d.Execute(ctx, "human-monitor-command", map[string]any{"command-line": line})
	if err != nil {
		return "", err
	}
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		return "", fmt.Errorf("%w: hmp %q: %v", ErrReply, line, err)
	}
	return s, nil
}

// Dump formats of DumpGuestMemory (virDomainCoreDumpFormat).
var dumpFormats = map[string]golibvirt.DomainCoreDumpFormat{
	"elf":          golibvirt.DomainCoreDumpFormatRaw,
	"kdump-zlib":   golibvirt.DomainCoreDumpFormatKdumpZlib,
	"kdump-lzo":    golibvirt.DomainCoreDumpFormatKdumpLzo,
	"kdump-snappy": golibvirt.DomainCoreDumpFormatKdumpSnappy,
	"win-dmp":      golibvirt.DomainCoreDumpFormatWinDmp,
}

// DumpGuestMemory writes the guest's memory to path (absolute; libvirt opens it, as
// root) in format "elf", "kdump-zlib", "kdump-lzo", "kdump-snappy" or
// "win-dmp": virDomainCoreDumpWithFormat with VIR_DUMP_MEMORY_ONLY, what
// `virsh dump --memory-only` does, and what QMP dump-guest-memory does
// for plain QEMU (the same signature as (*qemu.QMP).DumpGuestMemory, so
// one interface covers both). libvirt pauses a running domain for the dump and
// resumes it; one libvirt sees paused (also by a GDB stub) stays paused.
func (d *Domain) DumpGuestMemory(ctx context.Context, path, format string) error {
	f, ok := dumpFormats[format]
	if !ok {
		return fmt.Errorf("libvirt: dump format %q (want elf, kdump-zlib, kdump-lzo, kdump-snappy or win-dmp)", format)
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("libvirt: dump path %q is not absolute", path)
	}
	_, err := call(ctx, func() (struct{}, error) {
		return struct{}{}, d.c.l.DomainCoreDumpWithFormat(d.dom, path, uint32(f), golibvirt.DumpMemoryOnly)
	})
	if err != nil {
		return fmt.Errorf("libvirt: domain %q: dump %s: %w", d.name, format, err)
	}
	return nil
}

// Messages returns libvirt's messages about the domain
// (virDomainGetMessages, as in `virsh dominfo`): its taints and
// deprecations, e.g. "tainted: custom monitor control commands issued".
func (d *Domain) Messages(ctx context.Context) ([]string, error) {
	m, err := call(ctx, func() ([]string, error) { return d.c.l.DomainGetMessages(d.dom, 0) })
	if err != nil {
		return nil, fmt.Errorf("libvirt: domain %q: messages: %w", d.name, err)
	}
	return m, nil
}

// Name is the domain's name.
func (d *Domain) Name() string { return d.name }

// PID is the domain's QEMU process.
func (d *Domain) PID() int { return d.pid }

// gdbRetries bounds the attempts at a free loopback port (another process
// may take the port between the probe and QEMU's bind).
const gdbRetries = 3

// OpenGDB opens a GDB stub of the domain's QEMU on a free loopback port
// (HMP "gdbserver tcp:127.0.0.1:PORT") and returns its address and the
// function that closes it again (HMP "gdbserver none"). QEMU has one
// gdbserver: one the domain already had (a -gdb in its XML) is replaced,
// and closed by the closer.
func (d *Domain) OpenGDB(ctx context.Context) (string, func(context.Context) error, error) {
	var last string
	for range gdbRetries {
		port, err := freePort()
		if err != nil {
			return "", nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		out, err := d.HMP(ctx, "gdbserver tcp:"+addr)
		if err != nil {
			return "", nil, err
		}
		// QEMU 7.2: "Waiting for gdb connection on device 'tcp:127.0.0.1:PORT'";
		// "Could not open gdbserver on device '...'" when the bind failed.
		if strings.Contains(out, "Waiting for gdb connection") {
			return addr, d.closeGDB, nil
		}
		last = strings.TrimSpace(out)
	}
	return "", nil, fmt.Errorf("%w: domain %q: gdbserver on loopback: %q", ErrStub, d.name, last)
}

func (d *Domain) closeGDB(ctx context.Context) error {
	out, err := d.HMP(ctx, "gdbserver none")
	if err != nil {
		return err
	}
	// QEMU 7.2: "Disabled gdbserver".
	if !strings.Contains(out, "Disabled gdbserver") {
		return fmt.Errorf("%w: domain %q: gdbserver none: %q", ErrStub, d.name, strings.TrimSpace(out))
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// DomainPID reads the QEMU pid of a running domain from RunDir/NAME.pid
// and checks that the process is that domain's QEMU: its command line
// has "-name guest=NAME[,...]".
func DomainPID(name string) (int, error) {
	if err := checkDomainName(name); err != nil {
		return 0, fmt.Errorf("libvirt: %w", err)
	}
	path := filepath.Join(RunDir, name+".pid")
	b, err := readBounded(path, maxPIDFile)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrPID, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%w: %s: %q is not a pid", ErrPID, path, trunc(b))
	}
	cmd, err := readBounded(fmt.Sprintf("/proc/%d/cmdline", pid), maxCmdline)
	if err != nil {
		return 0, fmt.Errorf("%w: %s names pid %d: %v", ErrPID, path, pid, err)
	}
	if g, ok := guestName(cmd); !ok || g != name {
		return 0, fmt.Errorf("%w: %s names pid %d, which is not domain %q's QEMU (its -name guest= is %q)", ErrPID, path, pid, name, g)
	}
	return pid, nil
}

// guestName returns the guest= value of the -name option of a QEMU
// command line (NUL-separated, as /proc/PID/cmdline), with QEMU's ",,"
// escape of a comma undone.
func guestName(cmdline []byte) (string, bool) {
	args := bytes.Split(bytes.TrimSuffix(cmdline, []byte{0}), []byte{0})
	for i := 0; i+1 < len(args); i++ {
		if string(args[i]) != "-name" {
			continue
		}
		for _, opt := range splitOpts(string(args[i+1])) {
			if v, ok := strings.CutPrefix(opt, "guest="); ok {
				return v, true
			}
		}
		return "", false
	}
	return "", false
}

// splitOpts splits a QEMU option string at single commas; ",," is a comma
// of the value.
func splitOpts(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != ',' {
			cur.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == ',' {
			cur.WriteByte(',')
			i++
			continue
		}
		out = append(out, cur.String())
		cur.Reset()
	}
	return append(out, cur.String())
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: longer than %d bytes", path, limit)
	}
	return b, nil
}
