package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Spec says where a live guest is. Two text forms:
//
//	gdb://HOST:PORT[,qmp=unix:PATH]
//	qemu:pid=PID,qmp=unix:PATH[,gdb=HOST:PORT]
//	qemu:pidfile=FILE,qmp=unix:PATH[,gdb=HOST:PORT]
//	qemu:qmp=unix:PATH[,gdb=HOST:PORT]   (PID: the QMP socket's peer)
//
// gdb:// reads memory through the GDB stub. qemu: reads it from the QEMU
// process (process_vm_readv), which needs the QMP socket for the memory
// layout; the stub, when given, is attached only for what needs it
// (registers through the stub, traps, single-step).
type Spec struct {
	GDB     string // host:port; "" when none
	QMP     string // unix socket path; "" when none
	Process bool   // the qemu: form: memory from the QEMU process
	PID     int    // qemu:pid=; 0 when from PIDFile or the QMP peer
	PIDFile string // qemu:pidfile=
}

// ParseSpec parses a guest spec (see Spec).
func ParseSpec(s string) (Spec, error) {
	if rest, ok := strings.CutPrefix(s, "qemu:"); ok {
		return parseProcessSpec(s, rest)
	}
	rest, ok := strings.CutPrefix(s, "gdb://")
	if !ok {
		return Spec{}, fmt.Errorf("qemu: guest %q: want gdb://HOST:PORT[,qmp=unix:PATH] or qemu:pid=PID,qmp=unix:PATH[,gdb=HOST:PORT]", s)
	}
	parts := strings.Split(rest, ",")
	sp := Spec{GDB: parts[0]}
	if sp.GDB == "" || !strings.Contains(sp.GDB, ":") {
		return Spec{}, fmt.Errorf("qemu: guest %q: want HOST:PORT after gdb://", s)
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch {
		case k == "qmp" && strings.HasPrefix(v, "unix:") && len(v) > len("unix:") && sp.QMP == "":
			sp.QMP = strings.TrimPrefix(v, "unix:")
		default:
			return Spec{}, fmt.Errorf("qemu: guest %q: unknown option %q (want qmp=unix:PATH)", s, p)
		}
	}
	return sp, nil
}

func parseProcessSpec(s, rest string) (Spec, error) {
	sp := Spec{Process: true}
	seen := map[string]bool{}
	for _, p := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(p, "=")
		if !ok || v == "" || seen[k] {
			return Spec{}, fmt.Errorf("qemu: guest %q: option %q: want KEY=VALUE, each once", s, p)
		}
		seen[k] = true
		switch k {
		case "pid":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return Spec{}, fmt.Errorf("qemu: guest %q: pid %q", s, v)
			}
			sp.PID = n
		case "pidfile":
			sp.PIDFile = v
		case "qmp":
			path, ok := strings.CutPrefix(v, "unix:")
			if !ok || path == "" {
				return Spec{}, fmt.Errorf("qemu: guest %q: want qmp=unix:PATH", s)
			}
			sp.QMP = path
		case "gdb":
			if !strings.Contains(v, ":") {
				return Spec{}, fmt.Errorf("qemu: guest %q: want gdb=HOST:PORT", s)
			}
			sp.GDB = v
		default:
			return Spec{}, fmt.Errorf("qemu: guest %q: unknown option %q (want pid=, pidfile=, qmp=unix:, gdb=)", s, p)
		}
	}
	if sp.QMP == "" {
		return Spec{}, fmt.Errorf("qemu: guest %q: the process path needs the QMP socket (qmp=unix:PATH) for the memory layout", s)
	}
	if sp.PID != 0 && sp.PIDFile != "" {
		return Spec{}, fmt.Errorf("qemu: guest %q: give pid= or pidfile=, not both", s)
	}
	return sp, nil
}

func (s Spec) String() string {
	if !s.Process {
		if s.QMP == "" {
			return "gdb://" + s.GDB
		}
		return "gdb://" + s.GDB + ",qmp=unix:" + s.QMP
	}
	var p []string
	switch {
	case s.PID != 0:
		p = append(p, "pid="+strconv.Itoa(s.PID))
	case s.PIDFile != "":
		p = append(p, "pidfile="+s.PIDFile)
	}
	p = append(p, "qmp=unix:"+s.QMP)
	if s.GDB != "" {
		p = append(p, "gdb="+s.GDB)
	}
	return "qemu:" + strings.Join(p, ",")
}

// readPIDFile reads a pid file (QEMU's -pidfile): one decimal number.
func readPIDFile(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("qemu: pid file: %w", err)
	}
	defer f.Close()
	b := make([]byte, 32)
	n, _ := f.Read(b)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("qemu: pid file %s: want a pid, got %q", path, strings.TrimSpace(string(b[:n])))
	}
	return pid, nil
}

// Dial resolves a spec to an Endpoint: it connects to the QMP socket (the
// Endpoint's Monitor; QEMU serves one client per socket) and, for the
// qemu: form, finds the PID (given, from the pid file, or the QMP
// socket's peer credentials, which must agree with a given one). The
// caller closes the Endpoint.
func Dial(ctx context.Context, spec string) (Endpoint, error) {
	sp, err := ParseSpec(spec)
	if err != nil {
		return Endpoint{}, err
	}
	return DialSpec(ctx, sp)
}

// DialSpec is Dial of a parsed spec.
func DialSpec(ctx context.Context, sp Spec) (Endpoint, error) {
	ep := Endpoint{Name: sp.String(), GDB: sp.GDB}
	if sp.QMP == "" {
		return ep, nil
	}
	q, err := DialQMP(ctx, sp.QMP)
	if err != nil {
		return Endpoint{}, err
	}
	ep.Monitor, ep.Close = q, q.Close
	if !sp.Process {
		return ep, nil
	}
	fail := func(err error) (Endpoint, error) {
		q.Close()
		return Endpoint{}, err
	}
	peer, perr := q.PeerPID()
	switch {
	case sp.PID != 0:
		ep.PID = sp.PID
	case sp.PIDFile != "":
		if ep.PID, err = readPIDFile(sp.PIDFile); err != nil {
			return fail(err)
		}
	case perr != nil:
		return fail(fmt.Errorf("qemu: guest %s: no pid given and the QMP socket's peer is unknown: %w", ep.Name, perr))
	default:
		ep.PID = peer
	}
	if perr == nil && peer != ep.PID {
		return fail(fmt.Errorf("qemu: guest %s: pid %d is not the QEMU behind %s (its peer is pid %d)", ep.Name, ep.PID, sp.QMP, peer))
	}
	return ep, nil
}

// ErrNoStub is an operation that needs the GDB stub (traps, single-step,
// writes) on a guest spec that gives none.
var ErrNoStub = errors.New("qemu: the guest spec gives no GDB stub (gdb=HOST:PORT; QEMU -gdb tcp:HOST:PORT): traps, single-step and writes need it")
