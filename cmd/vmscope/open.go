package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/vmscope/vmscope/disk"
	_ "github.com/vmscope/vmscope/disk/vhd"  // VHD joins disk's format registry
	_ "github.com/vmscope/vmscope/disk/vhdx" // VHDX joins disk's format registry
	_ "github.com/vmscope/vmscope/disk/vmdk" // VMDK joins disk's format registry
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/output"
	"github.com/vmscope/vmscope/qcow"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/qemu/libvirt"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// openDisk opens an image file read-only, with its backing chain, and reads
// its partitions and filesystems. The caller closes the image.
func openDisk(path string) (*disk.Image, *fsparse.Disk, error) {
	im, err := qcow.Open(path)
	if err != nil {
		return nil, nil, err
	}
	opts, err := pvDiskOptions()
	if err != nil {
		im.Close()
		return nil, nil, err
	}
	d, err := fsparse.Open(im, im.Size(), opts...)
	if err != nil {
		im.Close()
		return nil, nil, err
	}
	return im, d, nil
}

// memTarget says which memory to open: a snapshot file, or a live guest.
type memTarget struct {
	Snapshot string // a memory snapshot file; "" for a live guest
	Guest    string // a live guest spec (see guestSpecHelp)
	Pause    bool   // live: pause the guest for a consistent view (Close resumes it)
	Journal  string // live: the journal path; "" for the default
	// HardwareBreakpoints: live execute traps are hardware breakpoints.
	HardwareBreakpoints bool
}

// memSource is an opened snapshot or live guest: guest-physical memory and
// the vCPUs' registers. Close is the one way to close either.
type memSource struct {
	mem    vmi.Memory
	cpus   []vmi.CPU
	format string // the snapshot format, or "live"
	size   int64  // the snapshot file's size
	name   string // the snapshot path or the guest spec
	guest  *qemu.Guest
	ep     qemu.Endpoint // what resolving the guest spec opened
	snap   *snapshot.Snapshot
}

// guestSpecHelp lists the guest specs resolveGuest takes.
const guestSpecHelp = "gdb://HOST:PORT[,qmp=unix:SOCK] (memory through the GDB stub), " +
	"qemu:pid=PID,qmp=unix:SOCK[,gdb=HOST:PORT] (memory from the QEMU process; also qemu:pidfile=FILE,… " +
	"or qemu:qmp=unix:SOCK,… with the pid from the socket's peer), " +
	"libvirt:DOMAIN[?uri=qemu:///system] (a libvirt domain: its monitor, its QEMU process, a GDB stub opened on demand)"

// resolveGuest is the one place a guest spec becomes an Endpoint (its
// monitor connected, its QEMU process found). The caller closes it.
func resolveGuest(ctx context.Context, spec string) (qemu.Endpoint, error) {
	switch {
	case strings.HasPrefix(spec, "libvirt:"):
		if _, err := libvirt.ParseSpec(spec); err != nil {
			return qemu.Endpoint{}, usageError{err}
		}
		return libvirt.Dial(ctx, spec)
	case strings.HasPrefix(spec, "gdb://"), strings.HasPrefix(spec, "qemu:"):
		sp, err := qemu.ParseSpec(spec)
		if err != nil {
			return qemu.Endpoint{}, usageError{err}
		}
		return qemu.DialSpec(ctx, sp)
	case spec == "":
		return qemu.Endpoint{}, usageError{errors.New("--guest is required")}
	}
	return qemu.Endpoint{}, usageError{fmt.Errorf("--guest %q: want %s", spec, guestSpecHelp)}
}

// closeEndpoint closes what resolveGuest opened.
func closeEndpoint(ep qemu.Endpoint) error {
	if ep.Close == nil {
		return nil
	}
	return ep.Close()
}

// openMemory is the one opener of memory for the commands: a snapshot
// file (read-only) or a live guest (attached, paused with Pause; the
// registers are read at one stop). The caller closes it.
func openMemory(ctx context.Context, t memTarget) (*memSource, error) {
	if (t.Snapshot == "") == (t.Guest == "") {
		return nil, usageError{fmt.Errorf("give a SNAPSHOT file or --guest, not both or neither")}
	}
	if t.Snapshot != "" {
		if t.Pause {
			return nil, usageError{fmt.Errorf("--pause goes with --guest")}
		}
		s, err := snapshot.Open(t.Snapshot)
		if err != nil {
			return nil, err
		}
		var size int64
		if fi, err := os.Stat(t.Snapshot); err == nil {
			size = fi.Size()
		}
		return &memSource{mem: s, cpus: s.CPUs(), format: s.Format().String(), size: size, name: t.Snapshot, snap: s}, nil
	}
	var opts []qemu.Option
	if t.Journal != "" {
		opts = append(opts, qemu.WithJournal(t.Journal))
	}
	if t.HardwareBreakpoints {
		opts = append(opts, qemu.WithHardwareBreakpoints())
	}
	ep, err := resolveGuest(ctx, t.Guest)
	if err != nil {
		return nil, err
	}
	g, err := qemu.OpenEndpoint(ctx, ep, opts...)
	if err != nil {
		return nil, errors.Join(err, closeEndpoint(ep))
	}
	src := &memSource{mem: g, format: "live", name: t.Guest, guest: g, ep: ep}
	if t.Pause {
		if err := g.Pause(ctx); err != nil {
			return nil, errors.Join(err, src.Close(ctx))
		}
	}
	if src.cpus, err = g.CPUs(ctx); err != nil {
		return nil, errors.Join(err, src.Close(ctx))
	}
	return src, nil
}

// Close releases a snapshot, or leaves a live guest as it was found
// (traps removed, detached, running if it ran), also when ctx was
// cancelled by SIGINT/SIGTERM.
func (s *memSource) Close(ctx context.Context) error {
	if s.guest != nil {
		return errors.Join(s.guest.Close(context.WithoutCancel(ctx)), closeEndpoint(s.ep))
	}
	return s.snap.Close()
}

// checkFormat validates a --format value against the allowed ones.
func checkFormat(f string, allowed ...string) error {
	if err := output.Check(f, allowed...); err != nil {
		return usageError{err}
	}
	return nil
}

// printable escapes a guest name for a terminal (output.Printable).
func printable(s string) string { return output.Printable(s) }

// writeJSON writes v as indented JSON with a final newline.
func writeJSON(w io.Writer, v any) error { return output.WriteJSON(w, v) }
