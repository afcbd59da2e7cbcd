package qemu

import (
	"fmt"
	"strings"
)

// Spec says where a live guest is: its GDB stub and, optionally, its QMP
// socket. The text form is gdb://HOST:PORT[,qmp=unix:PATH].
type Spec struct {
	GDB string // host:port
	QMP string // unix socket path; "" when none
}

// ParseSpec parses gdb://HOST:PORT[,qmp=unix:PATH].
func ParseSpec(s string) (Spec, error) {
	rest, ok := strings.CutPrefix(s, "gdb://")
	if !ok {
		return Spec{}, fmt.Errorf("qemu: guest %q: want gdb://HOST:PORT[,qmp=unix:PATH]", s)
	}
	parts := strings.Split(rest, ",")
	sp := Spec{GDB: parts[0]}
	if sp.GDB == "" || !strings.Contains(sp.GDB, ":") {
		return Spec{}, fmt.Errorf("qemu: guest %q: want HOST:PORT after gdb://", s)
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch {
		case k == "qmp" && strings.HasPrefix(v, "unix:") && len(v) > len("unix:"):
			sp.QMP = strings.TrimPrefix(v, "unix:")
		default:
			return Spec{}, fmt.Errorf("qemu: guest %q: unknown option %q (want qmp=unix:PATH)", s, p)
		}
	}
	return sp, nil
}

func (s Spec) String() string {
	if s.QMP == "" {
		return "gdb://" + s.GDB
	}
	return "gdb://" + s.GDB + ",qmp=unix:" + s.QMP
}
