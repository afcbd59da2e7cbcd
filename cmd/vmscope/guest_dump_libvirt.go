package main

import (
	"context"

	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/qemu/libvirt"
)

// memoryDumper writes a guest's memory to a file: *qemu.QMP (QMP
// dump-guest-memory) and *libvirt.Domain (virDomainCoreDumpWithFormat,
// virsh dump --memory-only) are.
type memoryDumper interface {
	DumpGuestMemory(ctx context.Context, path, format string) error
}

var (
	_ memoryDumper = (*qemu.QMP)(nil)
	_ memoryDumper = (*libvirt.Domain)(nil)
)

// dumpGuest writes the guest's memory dump of ep to out. A monitor that
// must not carry QMP dump-guest-memory — libvirt's pass-through: libvirtd
// 9.0 crashes on the DUMP_COMPLETED event of a dump it did not start —
// dumps itself (libvirt pauses a running domain for the dump and resumes
// it). A plain QEMU is stopped, dumped and resumed over QMP, journaled
// (guest release resumes it after a kill).
func dumpGuest(ctx context.Context, ep qemu.Endpoint, out, format string) error {
	if d, ok := ep.Monitor.(*libvirt.Domain); ok {
		return d.DumpGuestMemory(ctx, out, format)
	}
	return qemu.ConsistentDumpEndpoint(ctx, ep, out, format, journalOpts()...)
}
