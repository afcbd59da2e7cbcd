package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/fleet"
)

// exitStatus is an error that sets the process exit status itself (fleet
// scan: 2 when interrupted, as a scheduler's retry wants, and
// --findings-exit-code).
type exitStatus struct {
	code int
	err  error
}

func (e exitStatus) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e exitStatus) Unwrap() error { return e.err }

// exitUsage is fleet scan's exit status for a usage error (EX_USAGE), apart
// from 2 (worth a retry), so a Kubernetes podFailurePolicy can fail the
// index at once.
const exitUsage = 64

func newFleetCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "fleet plan|scan|report",
		Short: "Scan a fleet of images as one shard of a scheduler's job (Kubernetes, Slurm, systemd, GNU parallel)",
	}
	c.AddCommand(newFleetPlanCmd(), newFleetScanCmd(), newFleetReportCmd())
	return c
}

type shardFlags struct {
	shard, balance string
}

func (s *shardFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&s.shard, "shard", "0/1", "this task's shard: i/N, or auto/N (i from $JOB_COMPLETION_INDEX or $SLURM_ARRAY_TASK_ID)")
	c.Flags().StringVar(&s.balance, "balance", "hash", "how images are spread: hash (rendezvous hashing of the id: adding an image moves only it) or size (greedy by allocated bytes)")
}

func (s *shardFlags) parse() (fleet.Shard, fleet.Balance, error) {
	sh, err := fleet.ParseShard(s.shard, os.Getenv)
	if err != nil {
		return sh, "", usageError{err}
	}
	if s.balance != "hash" && s.balance != "size" {
		return sh, "", usageError{fmt.Errorf("--balance %q: want hash or size", s.balance)}
	}
	return sh, fleet.Balance(s.balance), nil
}

func readInventory(path string) (*fleet.Inventory, error) {
	inv, err := fleet.ReadInventoryFile(path)
	if err != nil {
		return nil, usageError{err}
	}
	return inv, nil
}

func newFleetPlanCmd() *cobra.Command {
	var s shardFlags
	c := &cobra.Command{
		Use:   "plan INVENTORY --shard i/N",
		Short: "List the images (id and path) this shard takes",
		Args:  rangeArgs(1, 1),
		RunE: func(c *cobra.Command, args []string) error {
			inv, err := readInventory(args[0])
			if err != nil {
				return err
			}
			sh, b, err := s.parse()
			if err != nil {
				return err
			}
			plan, err := fleet.Plan(inv, sh, b, nil)
			if err != nil {
				return err
			}
			for _, im := range plan {
				fmt.Fprintf(c.OutOrStdout(), "%s\t%s\n", im.ID, im.Path)
			}
			return nil
		},
	}
	s.add(c)
	return c
}

type fleetScanFlags struct {
	shardFlags
	scan          scanFlags
	stateDir, out string
	runID         string
	lockWait      time.Duration
	findingsExit  int
	noState       bool
}

func newFleetScanCmd() *cobra.Command {
	var f fleetScanFlags
	c := &cobra.Command{
		Use:   "scan INVENTORY --shard i/N|auto/N --state-dir DIR --out DIR [--run-id ID]",
		Short: "Scan this shard's images: per-image state and lock, results in OUT/<run-id>/<id>.ndjson",
		Long: `Scan the images of INVENTORY that this shard takes, one after the other. For
each image: take DIR/<id>.lock (flock; it names host, pid, run id and start),
poll DIR/<id>.state (the first poll scans everything; later ones only the
files changed since), scan, commit the state, then write
OUT/<run-id>/<id>.ndjson (temporary file and rename). An image another
poller holds is reported skipped after --lock-wait. A re-run with the same
run id skips the images already complete. An overlay's first poll reuses its
base's verdicts: the base is scanned once per rules digest.

Exit status: 0 nothing found, --findings-exit-code (1) findings, 2 worth a
retry (an I/O error, interrupted by SIGTERM/SIGINT: no half-written file),
64 a usage error (bad flags or inventory: a retry cannot fix it). A
missing or corrupt image is an error line in its result, not a failure of
the shard.`,
		Args: rangeArgs(1, 1),
		RunE: func(c *cobra.Command, args []string) error {
			err := runFleetScan(c.Context(), args[0], &f, c.ErrOrStderr())
			if u := (usageError{}); errors.As(err, &u) {
				return exitStatus{exitUsage, u}
			}
			return err
		},
	}
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return exitStatus{exitUsage, usageError{err}} })
	f.shardFlags.add(c)
	fl := c.Flags()
	fl.StringVar(&f.stateDir, "state-dir", "", "folder of the per-image poll states and locks (shared by every shard: a ReadWriteMany volume)")
	fl.StringVar(&f.out, "out", "", "folder of the results: OUT/<run-id>/<id>.ndjson")
	fl.StringVar(&f.runID, "run-id", os.Getenv("JOB_NAME"), "the run's id (default $JOB_NAME); a re-run with the same id resumes it")
	fl.DurationVar(&f.lockWait, "lock-wait", 0, "how long to wait for an image another poller holds before reporting it skipped")
	fl.IntVar(&f.findingsExit, "findings-exit-code", 1, "exit status when something was found (0 for Kubernetes, where non-zero fails the pod)")
	fl.BoolVar(&f.noState, "no-state", false, "scan every image whole, without poll state or base sharing")
	fl.StringArrayVar(&f.scan.rules, "rules", nil, "YARA rule file or directory (repeatable; default: the embedded rules)")
	fl.StringVar(&f.scan.cache, "rules-cache", "", "folder of the compiled-rules cache (default: DIR/vmscope-rules-cache; \"off\" disables it)")
	fl.IntVar(&f.scan.jobs, "jobs", 2, "files scanned in parallel per image")
	fl.StringVar(&f.scan.maxSize, "max-filesize", "", "skip (and report) files larger than this")
	fl.StringVar(&f.scan.modMax, "module-max-size", "256MiB", "as vmscope scan --module-max-size")
	fl.StringArrayVar(&f.scan.include, "include", nil, "scan only guest paths matching this glob (repeatable)")
	fl.StringArrayVar(&f.scan.exclude, "exclude", nil, "leave out guest paths matching this glob (repeatable)")
	fl.BoolVar(&f.scan.hash, "hash", false, "compute the sha256 of every scanned file")
	return c
}

func runFleetScan(ctx context.Context, invPath string, f *fleetScanFlags, errOut io.Writer) error {
	if f.stateDir == "" || f.out == "" {
		return usageError{fmt.Errorf("fleet scan needs --state-dir DIR and --out DIR")}
	}
	if f.runID == "" {
		return usageError{fmt.Errorf("give --run-id ID (or set $JOB_NAME)")}
	}
	if f.findingsExit < 0 || f.findingsExit > 255 {
		return usageError{fmt.Errorf("--findings-exit-code %d: want 0 to 255", f.findingsExit)}
	}
	inv, err := readInventory(invPath)
	if err != nil {
		return err
	}
	sh, b, err := f.parse()
	if err != nil {
		return err
	}
	f.scan.format, f.scan.progress = "ndjson", "never"
	if f.scan.cache == "" {
		f.scan.state = f.stateDir + "/x" // the rules cache beside the states
	}
	opts, err := f.scan.options()
	if err != nil {
		return err
	}
	rules, err := f.scan.loadRules(errOut)
	if err != nil {
		return err
	}
	o := fleet.Options{
		Shard: sh, Balance: b, StateDir: f.stateDir, OutDir: f.out, RunID: f.runID, LockWait: f.lockWait,
		Rules: rules, Scan: opts, NoState: f.noState,
		Filtered: len(f.scan.include)+len(f.scan.exclude) > 0 || f.scan.maxSize != "",
		Done: func(o fleet.Outcome) {
			msg := o.Status
			if o.Err != nil {
				msg += ": " + o.Err.Error()
			}
			fmt.Fprintf(errOut, "vmscope: fleet %s %s: %s\n", sh, o.ID, msg)
		},
	}
	if fp := os.Getenv("VMSCOPE_FLEET_FAILPOINT"); fp != "" {
		o.Failpoint = failpoint(fp)
	}
	sum, err := fleet.Scan(ctx, inv, o)
	if err != nil {
		if ctx.Err() != nil {
			return exitStatus{exitError, fmt.Errorf("fleet scan interrupted: %w (no half-written result; re-run with --run-id %s to resume)", ctx.Err(), f.runID)}
		}
		return exitStatus{exitError, err}
	}
	fmt.Fprintf(errOut, "vmscope: fleet %s: %d images: %d already complete, %d clean, %d with findings, %d failed, %d skipped\n",
		sh, sum.Images, sum.Complete, sum.Clean, sum.Findings, sum.Failed, sum.Skipped)
	switch {
	case sum.Retry:
		return exitStatus{exitError, fmt.Errorf("some images failed in a way worth a retry")}
	case sum.Findings > 0 && f.findingsExit != 0:
		return exitStatus{f.findingsExit, errFindings}
	}
	return nil
}

// failpoint reads VMSCOPE_FLEET_FAILPOINT=NAME:ID[:sleep=DURATION] (a
// test hook): at point NAME for image ID the process kills itself with
// SIGKILL (at state-commit the kill is sent while the state's save runs),
// or sleeps for DURATION.
func failpoint(spec string) func(name, id string) {
	name, rest, _ := strings.Cut(spec, ":")
	id, act, _ := strings.Cut(rest, ":")
	return func(n, i string) {
		if n != name || i != id {
			return
		}
		if d, ok := strings.CutPrefix(act, "sleep="); ok {
			dur, _ := time.ParseDuration(d)
			time.Sleep(dur)
			return
		}
		if n == "state-commit" {
			go func() { syscall.Kill(os.Getpid(), syscall.SIGKILL) }()
			return
		}
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

func newFleetReportCmd() *cobra.Command {
	var out, invPath, format string
	c := &cobra.Command{
		Use:   "report --out DIR/RUN [--inventory INVENTORY] [--format table|json|ndjson|sarif]",
		Short: "Sort a run's results and sum them up: images clean, with findings, failed, skipped, missing",
		Args:  rangeArgs(0, 0),
		RunE: func(c *cobra.Command, args []string) error {
			if err := checkFormat(format, fleet.ReportFormats...); err != nil {
				return err
			}
			if out == "" {
				return usageError{fmt.Errorf("give --out DIR/RUN (the run's folder of results)")}
			}
			var inv *fleet.Inventory
			if invPath != "" {
				var err error
				if inv, err = readInventory(invPath); err != nil {
					return err
				}
			}
			rs, done, err := fleet.ReadResults(out)
			if err != nil {
				return err
			}
			defer done()
			rep, err := fleet.NewReport(rs, inv)
			if err != nil {
				return err
			}
			if err := rep.Write(c.OutOrStdout(), format); err != nil {
				return err
			}
			if rep.Summary.Findings > 0 {
				return errFindings
			}
			if rep.Summary.Failed > 0 || len(rep.Summary.Missing) > 0 {
				return errors.Join(errPartial)
			}
			return nil
		},
	}
	c.Flags().StringVar(&out, "out", "", "the run's folder of results (OUT/<run-id>)")
	c.Flags().StringVar(&invPath, "inventory", "", "the inventory, to name the images with no result")
	c.Flags().StringVar(&format, "format", "table", "table, json, ndjson or sarif")
	return c
}
