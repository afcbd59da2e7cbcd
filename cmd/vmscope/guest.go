package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// newGuestCmd is `vmscope guest`: helpers for a running QEMU guest.
func newGuestCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "guest",
		Short: "Attach to a running QEMU guest (its process, QMP, GDB stub)",
		Long: "guest commands attach to a running QEMU guest: " + guestSpecHelp + ". With qemu: the memory is read from the QEMU " +
			"process (process_vm_readv; root, or QEMU's user with CAP_SYS_PTRACE under Yama) and the guest never stops; the GDB " +
			"stub (-gdb tcp:HOST:PORT) is attached only for traps and single-step. The QMP socket " +
			"(-qmp unix:PATH,server=on,wait=off; QEMU serves one client per QMP socket, so give vmscope its own) gives the layout. " +
			"The guest is left as found: breakpoints removed, detached, running if it ran, also on errors, SIGINT and SIGTERM. " +
			"Before its first change vmscope writes a journal (--journal; by default $XDG_RUNTIME_DIR/vmscope or /run/vmscope, " +
			"one per GDB address); after a SIGKILL, `guest release` undoes what it names.",
	}
	c.PersistentFlags().StringVar(&guestJournal, "journal", "", "the journal of what vmscope changed on the guest (default: $XDG_RUNTIME_DIR/vmscope/gdb-HOST_PORT.json, or /run/vmscope/…)")
	c.AddCommand(newGuestInfoCmd(), newGuestDumpCmd(), newGuestBreakCmd(), newGuestReleaseCmd())
	return c
}

// guestJournal is the --journal flag of the guest commands.
var guestJournal string

// journalOpts are the qemu options --journal gives.
func journalOpts() []qemu.Option {
	if guestJournal == "" {
		return nil
	}
	return []qemu.Option{qemu.WithJournal(guestJournal)}
}

const guestFlagHelp = "the guest: " + guestSpecHelp

func newGuestInfoCmd() *cobra.Command {
	var spec string
	c := &cobra.Command{
		Use:   "info --guest SPEC",
		Short: "vCPUs, their mode and CR3, the run state, the memory path and its read speed of a live guest",
		Args:  rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runGuestInfo(cmd.Context(), spec, cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&spec, "guest", "", guestFlagHelp)
	return c
}

// runGuestInfo writes the vCPUs, run state and kernel of the live guest
// spec on w, and leaves the guest as it was found.
func runGuestInfo(ctx context.Context, spec string, w io.Writer) (err error) {
	if spec == "" {
		return usageError{errors.New("--guest is required")}
	}
	src, err := openMemory(ctx, memTarget{Guest: spec, Journal: guestJournal})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, src.Close(ctx)) }()
	g := src.guest
	// The state the guest was in when vmscope attached (attaching
	// the GDB stub stops it for a moment; Close restores it).
	state := "unknown (no QMP)"
	if running, known := g.FoundRunning(); known {
		state = map[bool]string{true: "running", false: "paused"}[running]
	}
	// registers of a consistent stop of all vCPUs (through the stub), or
	// from HMP (the process path: the guest is not stopped)
	cpus := src.cpus
	fmt.Fprintf(w, "guest: %s\nstate: %s\nvcpus: %d\n", g.Name(), state, len(cpus))
	if r := g.Ranges(); r != nil {
		var total uint64
		for _, x := range r {
			total += x.Size
		}
		fmt.Fprintf(w, "memory: %d ranges, %d MiB\n", len(r), total>>20)
	}
	if pm := g.Process(); pm != nil {
		fmt.Fprintf(w, "memory path: process (pid %d, %s; layout verified on %d pages)\n", pm.PID(), pm.Method(), pm.Verified)
	} else {
		fmt.Fprintln(w, "memory path: gdb stub")
	}
	switch stub := g.Stub(); {
	case stub != "":
		fmt.Fprintf(w, "stub: %s (attached)\n", stub)
	case src.ep.GDB != "" || src.ep.OpenGDB != nil:
		fmt.Fprintln(w, "stub: available, not attached (attached on demand for traps and single-step)")
	default:
		fmt.Fprintln(w, "stub: none (registers from HMP info registers)")
	}
	if speed, n, err := readSpeed(ctx, g); err != nil {
		fmt.Fprintf(w, "read speed: not measured: %v\n", err)
	} else {
		fmt.Fprintf(w, "read speed: %.0f MiB/s (%d MiB read)\n", speed, n>>20)
	}
	fmt.Fprintf(w, "%-4s %-12s %-18s %-18s %-18s\n", "CPU", "MODE", "CR3", "RIP", "EFER")
	for _, c := range cpus {
		fmt.Fprintf(w, "%-4d %-12s %#-18x %#-18x %#-18x\n", c.ID, cpuMode(&c), c.CR3, c.RIP, c.EFER)
	}
	// The kernel, found as in a snapshot (vmi/linux), with no profile.
	if k, err := linux.Discover(ctx, g, linux.WithCPUs(cpus)); err != nil {
		fmt.Fprintf(w, "kernel: not found: %v\n", err)
	} else {
		fmt.Fprintf(w, "kernel: %s\nKASLR slide: %#x\nsymbols: %d from %s; types from %s\n", k.Version, k.Slide, len(k.Symbols.List), k.SymbolsSrc, k.TypesSrc)
	}
	return nil
}

// readSpeed reads guest RAM in 4 MiB reads (64 MiB from the process, 4
// MiB through the stub, which is ~100× slower) from the largest range and
// returns MiB/s and the bytes read.
func readSpeed(ctx context.Context, g *qemu.Guest) (float64, uint64, error) {
	var big vmi.Range
	for _, r := range g.Ranges() {
		if r.Size > big.Size {
			big = r
		}
	}
	want := uint64(64 << 20)
	if g.Process() == nil {
		want = 4 << 20
	}
	n := min(want, big.Size)
	if n == 0 {
		return 0, 0, errors.New("no memory map")
	}
	buf := make([]byte, min(n, 4<<20))
	start := time.Now()
	for off := uint64(0); off < n; off += uint64(len(buf)) {
		if _, err := g.ReadPhys(ctx, buf, big.Start+vmi.PA(off)); err != nil {
			return 0, 0, err
		}
	}
	return float64(n) / (1 << 20) / time.Since(start).Seconds(), n, nil
}

// cpuMode names the paging mode and privilege of a vCPU.
func cpuMode(c *vmi.CPU) string {
	switch {
	case c.CR0&1 == 0:
		return "real"
	case !c.LongMode():
		return "protected"
	}
	ring := "user"
	if c.CS.Selector&3 == 0 {
		ring = "kernel"
	}
	if c.LA57() {
		return "long57/" + ring
	}
	return "long/" + ring
}

func newGuestDumpCmd() *cobra.Command {
	var spec, format string
	c := &cobra.Command{
		Use:   "dump --guest SPEC OUT",
		Short: "Write a consistent memory dump of a live guest (QMP stop, dump-guest-memory, cont)",
		Long: "dump pauses the guest through QMP, has QEMU write guest-physical memory to OUT with dump-guest-memory " +
			"(paging=false; --format elf or kdump-zlib), and resumes the guest if it was running. The GDB stub is not used. " +
			"OUT then feeds every mem command.",
		Args: rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGuestDump(cmd.Context(), spec, format, args[0], cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&spec, "guest", "", guestFlagHelp)
	c.Flags().StringVar(&format, "format", "elf", "dump format: elf, kdump-zlib, kdump-lzo, kdump-snappy")
	return c
}

// runGuestDump has QEMU write a consistent memory dump of the live guest
// spec to path in format, and says what it wrote on w.
func runGuestDump(ctx context.Context, spec, format, path string, w io.Writer) (err error) {
	ep, err := resolveGuest(ctx, spec)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeEndpoint(ep)) }()
	if ep.Monitor == nil {
		return usageError{errors.New("guest dump needs QMP: --guest gdb://HOST:PORT,qmp=unix:PATH or qemu:…,qmp=unix:PATH")}
	}
	out, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	files, err := guestFiles(ctx, ep.Monitor)
	if err != nil {
		return err
	}
	if err := refuseEvidence(out, files); err != nil {
		return err
	}
	start := time.Now()
	if err := dumpGuest(ctx, ep, out, format); err != nil {
		return err
	}
	fi, err := os.Stat(out)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: %d bytes (%s) in %v\n", out, fi.Size(), format, time.Since(start).Round(time.Millisecond))
	return nil
}

func newGuestBreakCmd() *cobra.Command {
	var f guestBreakFlags
	c := &cobra.Command{
		Use:   "break --guest SPEC VA",
		Short: "Report hits of a breakpoint or watchpoint at a guest-virtual address, until --count hits or SIGINT",
		Args:  rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGuestBreak(cmd.Context(), args[0], &f, cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&f.spec, "guest", "", guestFlagHelp)
	c.Flags().StringVar(&f.kind, "kind", "sw", "sw, hw (breakpoints), write, read, access (watchpoints)")
	c.Flags().IntVar(&f.count, "count", 0, "stop after this many hits (0: until SIGINT/SIGTERM)")
	c.Flags().IntVar(&f.size, "size", 1, "watched bytes (1, 2, 4, 8)")
	return c
}

type guestBreakFlags struct {
	spec, kind  string
	count, size int
}

// runGuestBreak arms a trap at the guest-virtual address addr of the live
// guest and writes each hit on w until f.count hits or ctx ends; the guest
// is left as it was found.
func runGuestBreak(ctx context.Context, addr string, f *guestBreakFlags, w io.Writer) (err error) {
	if f.spec == "" {
		return usageError{errors.New("--guest is required")}
	}
	va, perr := strconv.ParseUint(strings.TrimPrefix(addr, "0x"), 16, 64)
	if perr != nil {
		return usageError{fmt.Errorf("address %q: want hex", addr)}
	}
	var trap vmi.Trap
	switch f.kind {
	case "sw", "hw":
		trap = vmi.Breakpoint(vmi.VA(va))
	case "write":
		trap = vmi.Watchpoint(vmi.VA(va), uint64(f.size), vmi.Write)
	case "read":
		trap = vmi.Watchpoint(vmi.VA(va), uint64(f.size), vmi.Read)
	case "access":
		trap = vmi.Watchpoint(vmi.VA(va), uint64(f.size), vmi.ReadWrite)
	default:
		return usageError{fmt.Errorf("--kind %q: want sw, hw, write, read or access", f.kind)}
	}
	if err := trap.Validate(); err != nil {
		return usageError{err}
	}
	src, err := openMemory(ctx, memTarget{Guest: f.spec, Journal: guestJournal, HardwareBreakpoints: f.kind == "hw"})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, src.Close(ctx)) }()
	fmt.Fprintf(w, "armed %s\n", trap)
	hits := 0
	return vmi.Trace(ctx, src.guest, []vmi.Trap{trap}, func(_ context.Context, h vmi.Hit) (bool, error) {
		hits++
		fmt.Fprintf(w, "hit %d: cpu %d rip %#x cr3 %#x", hits, h.Stop.CPU, h.Regs.RIP, h.Regs.CR3)
		if h.Stop.Access != vmi.Execute {
			fmt.Fprintf(w, " %s %#x", h.Stop.Access, uint64(h.Stop.Addr))
		}
		fmt.Fprintln(w)
		return f.count == 0 || hits < f.count, nil
	})
}

func newGuestReleaseCmd() *cobra.Command {
	var spec string
	c := &cobra.Command{
		Use:   "release --guest SPEC [--journal PATH]",
		Short: "Restore a guest a killed vmscope left stopped or with breakpoints, as its journal says",
		Long: "release reads the journal a vmscope process left (killed with SIGKILL, or a restore that failed), attaches, " +
			"removes every breakpoint and watchpoint the journal names, turns the stub's physical-memory mode off, and " +
			"resumes the guest only if it ran before vmscope attached (or its state was unknown: without QMP vmscope always " +
			"resumes; or QMP says someone resumed it since). A guest found paused is left paused. An unfinished `guest dump` " +
			"is undone with a QMP cont. Without a journal it changes nothing. The journal is removed once the guest is restored.",
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// then what a killed live dirty poll left (dirty/live)
			return errors.Join(runGuestRelease(cmd.Context(), spec, cmd.OutOrStdout()), releaseLive(cmd.Context(), spec, cmd.OutOrStdout()))
		},
	}
	c.Flags().StringVar(&spec, "guest", "", guestFlagHelp)
	return c
}

// runGuestRelease restores the live guest spec as the journal a killed
// vmscope left says, and says what it did on w.
func runGuestRelease(ctx context.Context, spec string, w io.Writer) error {
	if spec == "" {
		return usageError{errors.New("--guest is required")}
	}
	var rel *qemu.Released
	var err error
	if strings.HasPrefix(spec, "gdb://") || strings.HasPrefix(spec, "qemu:") {
		// Release goes on when the monitor does not answer
		rel, err = qemu.Release(ctx, spec, journalOpts()...)
	} else {
		ep, rerr := resolveGuest(ctx, spec)
		if rerr != nil {
			return rerr
		}
		rel, err = qemu.ReleaseEndpoint(ctx, ep, journalOpts()...)
		err = errors.Join(err, closeEndpoint(ep))
	}
	if rel != nil {
		if !rel.Left {
			fmt.Fprintf(w, "nothing to release: no journal at %s\n", rel.Journal)
			return err
		}
		fmt.Fprintf(w, "journal: %s (left by pid %d; the guest was %s before it changed anything)\n", rel.Journal, rel.PID, rel.Found)
		fmt.Fprintf(w, "traps removed: %d (%d no longer set)\n", rel.Removed, rel.Absent)
		if err == nil {
			fmt.Fprintln(w, map[bool]string{true: "guest: resumed", false: "guest: left paused"}[rel.Resumed])
		}
	}
	return err
}
