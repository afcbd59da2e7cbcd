package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// QMP is a client of the QEMU Machine Protocol on a unix socket: JSON
// lines, one command at a time, each with an id so that the answer to an
// abandoned command is never taken for the next one. Events are queued
// (bounded) for Events.
//
// It is a small client of its own rather than go-qemu's qmp package,
// which pulls in libvirt's RPC packages for what is here ~200 lines.
type QMP struct {
	conn net.Conn
	rd   *bufio.Reader

	mu     sync.Mutex
	id     uint64
	events []Event
}

// Event is a QMP event ("STOP", "RESUME", "DUMP_COMPLETED", ...).
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// QMPError is an error answer of QMP.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qemu: qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Bounds on what the QMP server sends.
const (
	maxQMPLine     = 64 << 20 // info mtree and query-* answers are far smaller
	maxQueuedEvent = 256
)

const greetingTimeout = 10 * time.Second

// DialQMP connects to a QMP unix socket, reads the greeting and enters
// command mode (qmp_capabilities).
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qemu: qmp %s: %w", path, err)
	}
	q := &QMP{conn: conn, rd: bufio.NewReaderSize(conn, 64<<10)}
	// QEMU serves one client per QMP socket: a second one is accepted
	// and then hears nothing. Do not wait for the greeting for ever.
	gctx, cancel := context.WithTimeout(ctx, greetingTimeout)
	defer cancel()
	err = q.withDeadline(gctx, func() error {
		line, err := q.readLine()
		if err != nil {
			return err
		}
		var greet struct {
			QMP *json.RawMessage `json:"QMP"`
		}
		if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
			return fmt.Errorf("%w: greeting %q", ErrProtocol, trunc(line))
		}
		return nil
	})
	if err != nil && gctx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("no greeting in %v (is another client on this socket? QEMU serves one per -qmp socket): %w", greetingTimeout, err)
	}
	if err == nil {
		_, err = q.Execute(ctx, "qmp_capabilities", nil)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qemu: qmp %s: %w", filepath.Base(path), err)
	}
	return q, nil
}

func (q *QMP) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := q.rd.ReadSlice('\n')
		line = append(line, chunk...)
		if err == nil {
			return line, nil
		}
		if err != bufio.ErrBufferFull {
			return nil, err
		}
		if len(line) > maxQMPLine {
			return nil, fmt.Errorf("%w: qmp line longer than %d bytes", ErrProtocol, maxQMPLine)
		}
	}
}

// withDeadline runs f with the connection's deadline set from ctx, and
// cancels a blocked read or write when ctx is cancelled.
func (q *QMP) withDeadline(ctx context.Context, f func() error) error {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Minute) // dump-guest-memory of a big guest takes long
	}
	q.conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Unix(1, 0)) })
	err := f()
	if !stop() || ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Execute runs one command with arguments (nil for none) and returns its
// "return" value. An error answer is a *QMPError.
func (q *QMP) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.id++
	id := q.id
	req := map[string]any{"execute": command, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var ret json.RawMessage
	err = q.withDeadline(ctx, func() error {
		if _, err := q.conn.Write(append(b, '\n')); err != nil {
			return err
		}
		for {
			line, err := q.readLine()
			if err != nil {
				return err
			}
			var resp struct {
				ID     *uint64         `json:"id"`
				Return json.RawMessage `json:"return"`
				Error  *struct {
					Class string `json:"class"`
					Desc  string `json:"desc"`
				} `json:"error"`
				Event string `json:"event"`
			}
			if err := json.Unmarshal(line, &resp); err != nil {
				return fmt.Errorf("%w: %v", ErrProtocol, err)
			}
			if resp.Event != "" {
				var ev Event
				json.Unmarshal(line, &ev)
				if len(q.events) >= maxQueuedEvent {
					q.events = q.events[1:]
				}
				q.events = append(q.events, ev)
				continue
			}
			if resp.ID == nil || *resp.ID != id {
				continue // the answer to an abandoned command
			}
			if resp.Error != nil {
				return &QMPError{Command: command, Class: resp.Error.Class, Desc: resp.Error.Desc}
			}
			ret = resp.Return
			return nil
		}
	})
	if err != nil {
		var qe *QMPError
		if errors.As(err, &qe) {
			return nil, err
		}
		return nil, fmt.Errorf("qemu: qmp %s: %w", command, err)
	}
	return ret, nil
}

// Events returns and forgets the events received so far.
func (q *QMP) Events() []Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	ev := q.events
	q.events = nil
	return ev
}

// Status is the answer of query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "debug", ...
}

// Status runs query-status.
func (q *QMP) Status(ctx context.Context) (Status, error) {
	var s Status
	r, err := q.Execute(ctx, "query-status", nil)
	if err == nil {
		err = json.Unmarshal(r, &s)
	}
	return s, err
}

// Stop pauses the guest (QMP stop).
func (q *QMP) Stop(ctx context.Context) error {
	_, err := q.Execute(ctx, "stop", nil)
	return err
}

// Cont resumes the guest (QMP cont).
func (q *QMP) Cont(ctx context.Context) error {
	_, err := q.Execute(ctx, "cont", nil)
	return err
}

// DumpGuestMemory writes guest-physical memory to path (absolute; QEMU
// opens it) with dump-guest-memory, paging=false, in format "elf",
// "kdump-zlib", "kdump-lzo", "kdump-snappy" or "win-dmp". It returns when
// the dump is complete.
func (q *QMP) DumpGuestMemory(ctx context.Context, path, format string) error {
	_, err := q.Execute(ctx, "dump-guest-memory", map[string]any{
		"paging": false, "protocol": "file:" + path, "format": format,
	})
	return err
}

// CPUInfo is an entry of query-cpus-fast.
type CPUInfo struct {
	Index    int    `json:"cpu-index"`
	ThreadID int    `json:"thread-id"`
	QOMPath  string `json:"qom-path"`
	Target   string `json:"target"`
}

// CPUs runs query-cpus-fast.
func (q *QMP) CPUs(ctx context.Context) ([]CPUInfo, error) {
	var c []CPUInfo
	r, err := q.Execute(ctx, "query-cpus-fast", nil)
	if err == nil {
		err = json.Unmarshal(r, &c)
	}
	return c, err
}

// HMP runs a human-monitor command ("info registers", "xp /16xb 0x1000",
// "gva2gpa 0xffffffff81000000") and returns its text.
func (q *QMP) HMP(ctx context.Context, line string) (string, error) {
	r, err := q.Execute(ctx, "human-monitor-command", map[string]any{"command-line": line})
	if err != nil {
		return "", err
	}
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		return "", fmt.Errorf("qemu: hmp %q: %w", line, err)
	}
	return s, nil
}

// Quit ends QEMU (QMP quit).
func (q *QMP) Quit(ctx context.Context) error {
	_, err := q.Execute(ctx, "quit", nil)
	return err
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }

// PeerPID is the process at the other end of the QMP socket (SO_PEERCRED):
// QEMU's own pid.
func (q *QMP) PeerPID() (int, error) {
	uc, ok := q.conn.(*net.UnixConn)
	if !ok {
		return 0, errors.New("qemu: qmp: not a unix socket")
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("qemu: qmp: SO_PEERCRED: %w", cerr)
	}
	return int(cred.Pid), nil
}

// monitorPID is the pid of the process behind a monitor, when it is a
// QMP socket.
func monitorPID(m Monitor) (int, bool) {
	q, ok := m.(*QMP)
	if !ok {
		return 0, false
	}
	pid, err := q.PeerPID()
	return pid, err == nil && pid > 0
}

// monExec runs a QMP command without arguments on a monitor.
func monExec(ctx context.Context, m Monitor, command string) error {
	_, err := m.Execute(ctx, command, nil)
	return err
}

// monStatus runs query-status on a monitor.
func monStatus(ctx context.Context, m Monitor) (Status, error) {
	var s Status
	r, err := m.Execute(ctx, "query-status", nil)
	if err == nil {
		err = json.Unmarshal(r, &s)
	}
	return s, err
}

// monCPUCount is the number of vCPUs (query-cpus-fast).
func monCPUCount(ctx context.Context, m Monitor) (int, error) {
	var c []CPUInfo
	r, err := m.Execute(ctx, "query-cpus-fast", nil)
	if err == nil {
		err = json.Unmarshal(r, &c)
	}
	if err == nil && (len(c) == 0 || len(c) > maxHMPCPUs) {
		err = fmt.Errorf("%w: query-cpus-fast lists %d vCPUs", ErrMonitor, len(c))
	}
	return len(c), err
}
