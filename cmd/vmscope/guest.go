package main

import (
	"context"
	"errors"
	"fmt"
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
		Short: "Attach to a running QEMU guest (GDB stub + QMP)",
		Long: "guest commands attach to a running QEMU guest through its GDB stub (-gdb tcp:HOST:PORT) and its QMP socket " +
			"(-qmp unix:PATH,server=on,wait=off; QEMU serves one client per QMP socket, so give vmscope its own). " +
			"The guest is left as found: breakpoints removed, detached, running if it ran, also on SIGINT/SIGTERM.",
	}
	c.AddCommand(newGuestInfoCmd(), newGuestDumpCmd(), newGuestBreakCmd())
	return c
}

const guestFlagHelp = "the guest: gdb://HOST:PORT[,qmp=unix:PATH]"

// closeGuest restores the guest even when ctx is cancelled (SIGINT).
func closeGuest(ctx context.Context, g *qemu.Guest, err *error) {
	*err = errors.Join(*err, g.Close(context.WithoutCancel(ctx)))
}

func newGuestInfoCmd() *cobra.Command {
	var spec string
	c := &cobra.Command{
		Use:   "info --guest gdb://HOST:PORT[,qmp=unix:PATH]",
		Short: "vCPUs, their mode and CR3, and the run state of a live guest",
		Args:  rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			if spec == "" {
				return usageError{errors.New("--guest is required")}
			}
			ctx := cmd.Context()
			g, err := qemu.Open(ctx, spec)
			if err != nil {
				return err
			}
			defer closeGuest(ctx, g, &err)
			// The state the guest was in when vmscope attached (attaching
			// the GDB stub stops it for a moment; Close restores it).
			state := "unknown (no QMP)"
			if running, known := g.FoundRunning(); known {
				state = map[bool]string{true: "running", false: "paused"}[running]
			}
			// registers of a consistent stop of all vCPUs
			cpus, err := g.CPUs(ctx)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "guest: %s\nstate: %s\nvcpus: %d\n", g.Spec(), state, len(cpus))
			if r := g.Ranges(); r != nil {
				var total uint64
				for _, x := range r {
					total += x.Size
				}
				fmt.Fprintf(w, "memory: %d ranges, %d MiB\n", len(r), total>>20)
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
		},
	}
	c.Flags().StringVar(&spec, "guest", "", guestFlagHelp)
	return c
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
		Use:   "dump --guest gdb://HOST:PORT,qmp=unix:PATH OUT",
		Short: "Write a consistent memory dump of a live guest (QMP stop, dump-guest-memory, cont)",
		Long: "dump pauses the guest through QMP, has QEMU write guest-physical memory to OUT with dump-guest-memory " +
			"(paging=false; --format elf or kdump-zlib), and resumes the guest if it was running. The GDB stub is not used. " +
			"OUT then feeds every mem command.",
		Args: rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			if spec == "" {
				return usageError{errors.New("--guest is required")}
			}
			sp, err := qemu.ParseSpec(spec)
			if err != nil {
				return usageError{err}
			}
			if sp.QMP == "" {
				return usageError{errors.New("guest dump needs QMP: --guest gdb://HOST:PORT,qmp=unix:PATH")}
			}
			out, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			files, err := guestFiles(ctx, sp.QMP)
			if err != nil {
				return err
			}
			if err := refuseEvidence(out, files); err != nil {
				return err
			}
			start := time.Now()
			if err := qemu.ConsistentDump(ctx, sp.QMP, out, format); err != nil {
				return err
			}
			fi, err := os.Stat(out)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d bytes (%s) in %v\n", out, fi.Size(), format, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	c.Flags().StringVar(&spec, "guest", "", guestFlagHelp)
	c.Flags().StringVar(&format, "format", "elf", "dump format: elf, kdump-zlib, kdump-lzo, kdump-snappy")
	return c
}

func newGuestBreakCmd() *cobra.Command {
	var spec, kind string
	var count, size int
	c := &cobra.Command{
		Use:   "break --guest gdb://HOST:PORT[,qmp=unix:PATH] VA",
		Short: "Report hits of a breakpoint or watchpoint at a guest-virtual address, until --count hits or SIGINT",
		Args:  rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			if spec == "" {
				return usageError{errors.New("--guest is required")}
			}
			va, perr := strconv.ParseUint(strings.TrimPrefix(args[0], "0x"), 16, 64)
			if perr != nil {
				return usageError{fmt.Errorf("address %q: want hex", args[0])}
			}
			kinds := map[string]qemu.BreakKind{"sw": qemu.SoftwareBreak, "hw": qemu.HardwareBreak, "write": qemu.WriteWatch, "read": qemu.ReadWatch, "access": qemu.AccessWatch}
			k, ok := kinds[kind]
			if !ok {
				return usageError{fmt.Errorf("--kind %q: want sw, hw, write, read or access", kind)}
			}
			ctx := cmd.Context()
			g, err := qemu.Open(ctx, spec)
			if err != nil {
				return err
			}
			defer closeGuest(ctx, g, &err)
			bp := qemu.Breakpoint{Kind: k, Addr: vmi.VA(va), Size: size}
			if err := g.SetBreakpoint(ctx, bp); err != nil {
				return err
			}
			if err := g.Resume(ctx); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "armed %s at %#x\n", k, va)
			for hits := 0; count == 0 || hits < count; {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case ev := <-g.Events():
					if ev.Exited {
						return errors.New("guest exited")
					}
					if ev.Signal != 5 {
						continue // paused by someone else: wait until they resume it
					}
					hits++
					c, err := g.Regs(ctx, ev.CPU)
					if err != nil {
						return err
					}
					fmt.Fprintf(w, "hit %d: cpu %d rip %#x cr3 %#x", hits, ev.CPU, c.RIP, c.CR3)
					if ev.Watch != "" {
						fmt.Fprintf(w, " %s %#x", ev.Watch, uint64(ev.Addr))
					}
					fmt.Fprintln(w)
					// step past the breakpoint with it cleared, then re-arm
					if err := g.ClearBreakpoint(ctx, bp); err != nil {
						return err
					}
					if _, err := g.Step(ctx, ev.CPU); err != nil {
						return err
					}
					if err := g.SetBreakpoint(ctx, bp); err != nil {
						return err
					}
					if err := g.Resume(ctx); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
	c.Flags().StringVar(&spec, "guest", "", guestFlagHelp)
	c.Flags().StringVar(&kind, "kind", "sw", "sw, hw (breakpoints), write, read, access (watchpoints)")
	c.Flags().IntVar(&count, "count", 0, "stop after this many hits (0: until SIGINT/SIGTERM)")
	c.Flags().IntVar(&size, "size", 1, "watched bytes (1, 2, 4, 8)")
	return c
}
