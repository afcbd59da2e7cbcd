package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/scan"
	"github.com/vmscope/vmscope/scan/imagescan"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type scanFlags struct {
	rules    []string
	format   string
	output   string
	jobs     int
	maxSize  string
	modMax   string
	include  []string
	exclude  []string
	hash     bool
	progress string
	dirty    string
	state    string
	cache    string
	live     liveFlags
	deleted  bool
}

func newScanCmd() *cobra.Command {
	var f scanFlags
	c := &cobra.Command{
		Use:   "scan IMAGE | scan --guest SPEC [--disk ID] [--dirty live --state PATH]",
		Short: "YARA-scan every file of every guest filesystem, straight from the image",
		Long: `Scan every regular file of every filesystem of IMAGE with YARA rules, streaming
each file from the image in bounded memory, in parallel.

With no --rules, the embedded default ruleset is used (scan/rules/README.md).
Exit status: 1 when anything matched; otherwise 2 when a file could not be
read (it is listed in the output) or the scan could not run; otherwise 0.

--guest SPEC scans the disk of a running QEMU at one point in time, without
pausing it (see vmscope dirty --help); with --dirty live --state PATH only the
files the guest changed since the last poll.`,
		Args: rangeArgs(0, 1),
		RunE: func(c *cobra.Command, args []string) error {
			image := ""
			if len(args) == 1 {
				image = args[0]
			}
			if (image == "") == (f.live.guest == "") {
				return usageError{fmt.Errorf("give an IMAGE or --guest SPEC")}
			}
			return runScan(c.Context(), image, &f, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
	fl := c.Flags()
	fl.StringArrayVar(&f.rules, "rules", nil, "YARA rule file, directory of .yar/.yara files (recursive; includes resolved from the including file), or one compiled rule file from yarac (repeatable; default: the embedded rules)")
	fl.StringVar(&f.cache, "rules-cache", "", "folder of the compiled-rules cache (default: beside --state, else $XDG_CACHE_HOME/vmscope/rules; \"off\" disables it)")
	fl.StringVar(&f.format, "format", "table", "output format: table, json, ndjson or sarif")
	fl.StringVarP(&f.output, "output", "o", "", "write the report to this file instead of stdout")
	fl.IntVar(&f.jobs, "jobs", runtime.NumCPU(), "files scanned in parallel")
	fl.StringVar(&f.maxSize, "max-filesize", "", "skip (and report) files larger than this, e.g. 512MiB (default: no limit)")
	fl.StringVar(&f.modMax, "module-max-size", "256MiB", "when the rules import pe, elf, dotnet, macho, dex, magic or math, scan files up to this size whole (one buffer per job); bigger ones are scanned in blocks and listed as module_prefix")
	fl.StringArrayVar(&f.include, "include", nil, "scan only guest paths matching this glob (repeatable; ** spans directories; a pattern without / matches the base name)")
	fl.StringArrayVar(&f.exclude, "exclude", nil, "leave out guest paths matching this glob (repeatable; wins over --include)")
	fl.BoolVar(&f.hash, "hash", false, "compute the sha256 of every scanned file (matched files always get one)")
	fl.StringVar(&f.progress, "progress", "auto", "progress line on stderr: auto (when stderr is a terminal), always or never")
	fl.StringVar(&f.dirty, "dirty", "", "scan only the files changed since the last poll: auto, cow, bitmap:NAME, hash (need --state) or base:IMAGE; live with --guest (needs --state)")
	fl.StringVar(&f.state, "state", "", "poll state database for --dirty (created on the first poll, which scans everything)")
	fl.BoolVar(&f.deleted, "deleted", false, "scan only the deleted files whose content is still recoverable (ext2/3/4, best effort); paths end in \" (deleted)\"")
	f.live.add(fl)
	return c
}

// runScan scans image as f says and writes the report to out (or to
// --output); what the user should know on the way goes to errOut.
func runScan(ctx context.Context, image string, f *scanFlags, out, errOut io.Writer) (err error) {
	opts, err := f.options()
	if err != nil {
		return err
	}
	if f.deleted && (f.dirty != "" || f.live.guest != "") {
		return usageError{fmt.Errorf("--deleted scans an image's deleted files: not with --dirty or --guest")}
	}
	if f.live.guest != "" && f.dirty != "" && f.dirty != "live" || f.live.guest == "" && f.dirty == "live" {
		return usageError{fmt.Errorf("--dirty live goes with --guest (and --guest with no other --dirty source)")}
	}
	rules, err := f.loadRules(errOut)
	if err != nil {
		return err
	}
	var im *disk.Image
	var d *fsparse.Disk
	var lv *liveDisk // --guest: the disk at one point in time
	saved := false
	if f.live.guest != "" {
		state := ""
		if f.dirty == "live" {
			state = f.state
		}
		if lv, err = openLive(ctx, &f.live, state, errOut); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, lv.close(ctx, saved)) }()
		if f.dirty == "" {
			lv.recoverAll(ctx, errOut)
		}
		im, d, image = lv.im, lv.d, "live: "+lv.point()
	} else {
		if im, d, err = openDisk(image); err != nil {
			return err
		}
		defer im.Close()
	}
	if f.output != "" {
		if err := refuseEvidence(f.output, chainFiles(im)); err != nil {
			return err
		}
	}
	report := &scan.Report{Version: version, Rules: rules, Image: reportImage(image, im, d)}

	progress := imagescan.Progress(d)
	opts = append(opts, scan.WithProgress(progress))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if showProgress(f.progress) {
		rctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { progress.Render(rctx, errOut, 200*time.Millisecond); close(done) }()
		defer func() { stop(); <-done }()
	}

	var sel *dirty.Selection
	switch {
	case lv != nil && f.dirty == "live":
		if sel, err = lv.selectLive(ctx, errOut, rules.Digest()); err != nil {
			return err
		}
		fmt.Fprintf(errOut, "vmscope: %d changed files, %d to scan\n", len(sel.Changes), len(sel.Due()))
	case f.dirty != "":
		if sel, err = selectDirty(ctx, errOut, im, d, f, rules.Digest()); err != nil {
			return err
		}
		defer sel.Close()
	}
	var res *scan.Result
	if f.deleted {
		res, err = scanDeleted(ctx, d, rules, opts...)
	} else {
		res, err = imagescan.Scan(ctx, d, rules, sel, opts...)
	}
	if err != nil {
		return err
	}
	report.Result = res
	if sel != nil {
		if err := imagescan.Commit(ctx, d, sel, res); errors.Is(err, imagescan.ErrNotCommitted) {
			fmt.Fprintf(errOut, "vmscope: %v\n", err)
		} else if err != nil {
			return err
		} else if lv != nil {
			saved = true
			lv.view.Step(4, "poll state saved")
		}
	}
	if err := writeReport(out, f.output, report, f.format); err != nil {
		return err
	}
	var perr error
	if len(res.Errors) > 0 {
		perr = problems(len(res.Errors), res.Errors[0])
	}
	if res.Summary.Findings > 0 {
		return errors.Join(errFindings, perr)
	}
	return perr
}

// options checks the flags and turns them into the scan engine's options.
func (f *scanFlags) options() ([]scan.Option, error) {
	if err := checkFormat(f.format, scan.Formats...); err != nil {
		return nil, err
	}
	if err := checkFormat(f.progress, "auto", "always", "never"); err != nil {
		return nil, err
	}
	var opts []scan.Option
	if f.maxSize != "" {
		n, err := humanize.ParseBytes(f.maxSize)
		if err != nil {
			return nil, usageError{fmt.Errorf("--max-filesize %q: %w", f.maxSize, err)}
		}
		opts = append(opts, scan.WithMaxFileSize(int64(n)))
	}
	n, err := humanize.ParseBytes(f.modMax)
	if err == nil && n > 1<<34 {
		err = fmt.Errorf("more than 16GiB")
	}
	if err != nil {
		return nil, usageError{fmt.Errorf("--module-max-size %q: %w", f.modMax, err)}
	}
	opts = append(opts, scan.WithModuleMaxSize(int64(n)))
	if f.jobs < 1 {
		return nil, usageError{fmt.Errorf("--jobs %d: want at least 1", f.jobs)}
	}
	return append(opts, scan.WithJobs(f.jobs), scan.WithHash(f.hash), scan.WithInclude(f.include...), scan.WithExclude(f.exclude...)), nil
}

// loadRules compiles (or loads from the cache) the --rules, or the
// embedded default rules; a cache that could not be written is said on
// errOut.
func (f *scanFlags) loadRules(errOut io.Writer) (*scan.Rules, error) {
	var rules *scan.Rules
	var err error
	if len(f.rules) == 0 {
		rules, err = scan.DefaultRules()
	} else {
		rules, err = scan.LoadRulesCached(rulesCacheDir(f), f.rules...)
	}
	if err != nil {
		return nil, err
	}
	if err := rules.CacheError(); err != nil {
		fmt.Fprintf(errOut, "vmscope: %v (rules compiled, not cached)\n", err)
	}
	return rules, nil
}

// reportImage describes the image file and its filesystems for the report.
func reportImage(path string, im *disk.Image, d *fsparse.Disk) scan.ImageInfo {
	info := scan.ImageInfo{Path: path, Format: string(im.Format()), Size: im.Size(), Filesystems: imagescan.Filesystems(d)}
	for _, l := range im.Layers() {
		info.Layers = append(info.Layers, scan.LayerInfo{Path: l.Name(), Format: l.Format()})
		c := scan.ChainLayer{Path: l.Name(), Format: l.Format(), VirtualSize: l.Size()}
		if b := l.Backing(); b != nil {
			c.Backing, c.BackingFormat = b.Name(), b.Format()
		}
		info.Chain = append(info.Chain, c)
	}
	return info
}

// writeReport writes the report to out, or to the file output when given.
func writeReport(out io.Writer, output string, report *scan.Report, format string) error {
	if output == "" {
		return report.Write(out, format)
	}
	file, err := os.Create(output)
	if err != nil {
		return err
	}
	if err := report.Write(file, format); err != nil {
		file.Close()
		return err
	}
	return file.Close()
}

// rulesCacheDir is where compiled rule sets are cached: --rules-cache, else
// a rules-cache folder beside the --state file (a poll's own state
// directory), else $XDG_CACHE_HOME/vmscope/rules (~/.cache when unset).
// "" (no cache) for --rules-cache off, or when no home is known.
func rulesCacheDir(f *scanFlags) string {
	switch {
	case f.cache == "off":
		return ""
	case f.cache != "":
		return f.cache
	case f.state != "":
		return filepath.Join(filepath.Dir(f.state), "vmscope-rules-cache")
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "vmscope", "rules")
}

func showProgress(mode string) bool {
	switch mode {
	case "always":
		return true
	case "never":
		return false
	}
	fi, err := os.Stderr.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
