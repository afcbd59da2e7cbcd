// Command vmscope inspects virtual machines from outside the guest: disk
// images (raw, qcow2 and backing chains: info, ls, cat, extract, scan,
// dirty, diff), memory snapshots and running QEMU guests (mem, guest).
// Each verb is a thin command over the library packages; this package
// decides what the user sees and maps errors to exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/internal/output"
	"github.com/vmscope/vmscope/vmerr"
)

// Exit codes, as scanners use them (vmerr.ExitCode maps them).
const (
	exitOK       = vmerr.ExitClean
	exitFindings = vmerr.ExitFindings
	exitError    = vmerr.ExitError
	exitCanceled = vmerr.ExitCanceled
)

// errFindings is returned by a command that ran to the end and found
// something; it maps to exit code 1 and prints nothing.
var errFindings = errors.New("findings")

// errPartial is returned by a command that wrote its output but met errors
// on the way (reported already); it maps to exit code 2.
var errPartial = output.ErrPartial

// problems returns errPartial for n problems with the one-line summary run
// prints on stderr, first being the first one (an error or a string);
// n == 0 gives nil.
func problems(n int, first any) error { return output.Problems(n, first) }

// usageError marks bad arguments or flags.
type usageError struct{ error }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "vmscope",
		Short: "Agentless forensic scanner for virtual machines",
		Long: `vmscope inspects virtual machines from outside the guest, without an agent, without
mounting or booting anything; evidence is opened read-only.

Disk images (raw, qcow2, backing chains):
  info      format, backing chain, partitions, filesystems, bitmaps
  ls, cat   list files, print one (like fls / icat)
  extract   copy a tree out into a directory
  scan      YARA over every file (or only the changed ones: --dirty)
  dirty     files changed since a point (overlay, dirty bitmap, poll state)
  diff      files that differ between two images
  timeline  file timeline: body file (fls -m), mactime CSV, NDJSON
  report    one self-contained HTML report from scan/diff/dirty/timeline NDJSON
Memory (dumps: ELF, kdump, LiME, raw; or a live QEMU guest):
  mem       ps, files, modules, mounts, info, check (kernel integrity)... of the Linux kernel in memory
Live QEMU guests (qemu:pid=…, libvirt:DOMAIN, gdb://…; scan/dirty --guest poll their disks):
  guest     info, dump, break, release... a running guest
  cfi       learn, monitor, show: page-level kernel control-flow integrity
  watch     report (or deny) accesses to named files, from the guest's kernel objects
  inject    ls, stat, cat, ps, netstat, kill through a borrowed guest process, restored after
Fleets (one task of Kubernetes, Slurm, systemd or GNU parallel):
  inventory, fleet   list images; plan, scan (--shard i/N, per-image state and lock), report`,
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newInfoCmd(), newLsCmd(), newCatCmd(), newExtractCmd(), newScanCmd(), newDirtyCmd(), newDiffCmd(), newMemCmd())
	root.AddCommand(newGuestCmd(), newWatchCmd(), newCfiCmd())
	root.AddCommand(newInventoryCmd(), newFleetCmd())
	addPVImageFlag(root)
	root.AddCommand(newTimelineCmd(), newReportCmd())
	root.AddCommand(newInjectCmd())
	return root
}

// exitCode is the one place that maps the error a command returned to the
// process exit status (vmerr.ExitCode): findings 1, an interrupted command
// (SIGINT/SIGTERM cancel ctx) 130, any other error 2. A command that fails
// after ctx was cancelled counts as interrupted, whatever its error says
// (a live guest's stub or a read cut short need not wrap context.Canceled).
func exitCode(ctx context.Context, err error) int {
	if es := (exitStatus{}); errors.As(err, &es) {
		return es.code
	}
	if err != nil && ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return vmerr.ExitCode(err, errors.Is(err, errFindings))
}

// run executes the CLI with args and returns the exit status; main and the
// tests share it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	defer closePVImages()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if pe := (*output.ProblemsError)(nil); errors.As(err, &pe) {
		fmt.Fprintf(stderr, "vmscope: %v\n", pe)
	}
	if err != nil && !errors.Is(err, errFindings) && !errors.Is(err, errPartial) {
		fmt.Fprintf(stderr, "vmscope: %v\n", err)
		var u usageError
		if errors.As(err, &u) {
			fmt.Fprintf(stderr, "Run 'vmscope --help' for usage.\n")
		}
	}
	return exitCode(ctx, err)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	endProfile := startProfile(os.Getenv("VMSCOPE_CPUPROFILE"))
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	endProfile()
	writeHeapProfile(os.Getenv("VMSCOPE_MEMPROFILE"))
	stop()
	os.Exit(code)
}

// writeHeapProfile writes the profile of the memory allocated during the
// run to path (the environment variable VMSCOPE_MEMPROFILE); "" does
// nothing.
func writeHeapProfile(path string) {
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup("allocs").WriteTo(f, 0)
		f.Close()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmscope: VMSCOPE_MEMPROFILE: %v\n", err)
	}
}

// startProfile writes a CPU profile of the run to path (the environment
// variable VMSCOPE_CPUPROFILE, for `go tool pprof`); "" does nothing.
func startProfile(path string) (end func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmscope: VMSCOPE_CPUPROFILE: %v\n", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// exactArgs is cobra.RangeArgs with a usage error.
func rangeArgs(lo, hi int) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := cobra.RangeArgs(lo, hi)(c, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
