package qemu

import (
	"context"
	"encoding/json"
)

// Monitor is QEMU's monitor: QMP commands and HMP command lines. A *QMP on
// QEMU's own socket is one; a libvirt domain's monitor pass-through
// (vmi/qemu/libvirt) is another. Every live path that needs the monitor
// (memory layout, run state, registers through HMP, block jobs for dirty
// polls) takes a Monitor, never a socket path.
type Monitor interface {
	// Execute runs one QMP command and returns its "return" member. A
	// QMP error reply is a *QMPError.
	Execute(ctx context.Context, command string, args any) (json.RawMessage, error)
	// HMP runs one human-monitor command line and returns its output.
	HMP(ctx context.Context, line string) (string, error)
}

var _ Monitor = (*QMP)(nil)

// Endpoint is everything vmscope can reach of one running QEMU: its
// monitor, its process (for memory at memory speed) and its GDB stub (for
// registers of every vCPU, breakpoints, watchpoints and single-step).
// A guest spec (gdb://…, qemu:pid=…, libvirt:DOMAIN) resolves to one.
type Endpoint struct {
	// Name is the spec the user gave, for messages and the journal.
	Name string
	// Monitor is the QMP/HMP monitor; nil when there is none.
	Monitor Monitor
	// PID is the QEMU process; 0 when unknown.
	PID int
	// GDB is the HOST:PORT of a GDB stub that is already listening; "".
	GDB string
	// OpenGDB, when not nil, opens a stub on demand (libvirt: HMP
	// "gdbserver tcp:127.0.0.1:PORT") and returns its address and the
	// function that closes it again at detach.
	OpenGDB func(ctx context.Context) (addr string, closeStub func(context.Context) error, err error)
	// Close releases what resolving the spec opened (a libvirt
	// connection, a QMP socket); nil when there is nothing.
	Close func() error
}
