package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/scan"
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
}

func newScanCmd() *cobra.Command {
	var f scanFlags
	c := &cobra.Command{
		Use:   "scan IMAGE",
		Short: "YARA-scan every file of every guest filesystem, straight from the image",
		Long: `Scan every regular file of every filesystem of IMAGE with YARA rules, streaming
each file from the image in bounded memory, in parallel.

With no --rules, the embedded default ruleset is used (scan/rules/README.md).
Exit status: 1 when anything matched; otherwise 2 when a file could not be
read (it is listed in the output) or the scan could not run; otherwise 0.`,
		Args: rangeArgs(1, 1),
		RunE: func(c *cobra.Command, args []string) error { return runScan(c, args[0], &f) },
	}
	fl := c.Flags()
	fl.StringArrayVar(&f.rules, "rules", nil, "YARA rule file or directory of .yar/.yara files (repeatable; default: the embedded rules)")
	fl.StringVar(&f.format, "format", "table", "output format: table, json, ndjson or sarif")
	fl.StringVarP(&f.output, "output", "o", "", "write the report to this file instead of stdout")
	fl.IntVar(&f.jobs, "jobs", runtime.NumCPU(), "files scanned in parallel")
	fl.StringVar(&f.maxSize, "max-filesize", "", "skip (and report) files larger than this, e.g. 512MiB (default: no limit)")
	fl.StringVar(&f.modMax, "module-max-size", "256MiB", "when the rules import pe, elf, dotnet, macho, dex, magic or math, scan files up to this size whole (one buffer per job); bigger ones are scanned in blocks and listed as module_prefix")
	fl.StringArrayVar(&f.include, "include", nil, "scan only guest paths matching this glob (repeatable; ** spans directories; a pattern without / matches the base name)")
	fl.StringArrayVar(&f.exclude, "exclude", nil, "leave out guest paths matching this glob (repeatable; wins over --include)")
	fl.BoolVar(&f.hash, "hash", false, "compute the sha256 of every scanned file (matched files always get one)")
	fl.StringVar(&f.progress, "progress", "auto", "progress line on stderr: auto (when stderr is a terminal), always or never")
	fl.StringVar(&f.dirty, "dirty", "", "scan only the files changed since the last poll: auto, cow, bitmap:NAME, hash (need --state) or base:IMAGE")
	fl.StringVar(&f.state, "state", "", "poll state database for --dirty (created on the first poll, which scans everything)")
	return c
}

func runScan(c *cobra.Command, image string, f *scanFlags) error {
	if err := checkFormat(f.format, scan.Formats...); err != nil {
		return err
	}
	if err := checkFormat(f.progress, "auto", "always", "never"); err != nil {
		return err
	}
	var opts []scan.Option
	if f.maxSize != "" {
		n, err := humanize.ParseBytes(f.maxSize)
		if err != nil {
			return usageError{fmt.Errorf("--max-filesize %q: %w", f.maxSize, err)}
		}
		opts = append(opts, scan.WithMaxFileSize(int64(n)))
	}
	if n, err := humanize.ParseBytes(f.modMax); err != nil || n > 1<<34 {
		if err == nil {
			err = fmt.Errorf("more than 16GiB")
		}
		return usageError{fmt.Errorf("--module-max-size %q: %w", f.modMax, err)}
	} else {
		opts = append(opts, scan.WithModuleMaxSize(int64(n)))
	}
	if f.jobs < 1 {
		return usageError{fmt.Errorf("--jobs %d: want at least 1", f.jobs)}
	}
	opts = append(opts, scan.WithJobs(f.jobs), scan.WithHash(f.hash), scan.WithInclude(f.include...), scan.WithExclude(f.exclude...))

	var rules *scan.Rules
	var err error
	if len(f.rules) == 0 {
		rules, err = scan.DefaultRules()
	} else {
		rules, err = scan.LoadRules(f.rules...)
	}
	if err != nil {
		return err
	}

	im, d, err := openDisk(image)
	if err != nil {
		return err
	}
	defer im.Close()

	report := &scan.Report{Version: version, Rules: rules, Image: scan.ImageInfo{Path: image, Format: string(im.Format()), Size: im.Size()}}
	for _, l := range im.Layers() {
		report.Image.Layers = append(report.Image.Layers, scan.LayerInfo{Path: l.Path, Format: string(l.Format)})
	}
	for _, v := range d.Volumes {
		report.Image.Filesystems = append(report.Image.Filesystems, scan.FSInfo{Partition: v.ID, Type: v.Type, Label: v.Label, UUID: v.UUID})
	}

	progress := &scan.Progress{}
	for _, v := range d.Volumes {
		if v.Ext4 != nil {
			sb := v.Ext4.Super()
			progress.TotalFiles.Add(int64(sb.InodesCount - sb.FreeInodes))
			progress.TotalBytes.Add(int64(sb.BlocksCount-sb.FreeBlocks) * int64(sb.BlockSize))
		}
	}
	opts = append(opts, scan.WithProgress(progress))
	ctx, cancel := context.WithCancel(c.Context())
	defer cancel()
	if showProgress(f.progress) {
		rctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { progress.Render(rctx, c.ErrOrStderr(), 200*time.Millisecond); close(done) }()
		defer func() { stop(); <-done }()
	}

	var sel *dirty.Selection
	if f.dirty != "" {
		if sel, err = selectDirty(ctx, c, im, d, f, rules.Digest()); err != nil {
			return err
		}
		defer sel.Close()
	}

	files := make(chan scan.File, 256)
	walkErrs := make(chan []scan.FileError, 1)
	if sel != nil {
		go func() { walkErrs <- feedSelection(ctx, sel, d, files) }()
	} else {
		go func() { walkErrs <- feed(ctx, d, files) }()
	}
	res, scanErr := scan.Scan(ctx, rules, files, opts...)
	cancel() // stops the walk if the scan ended early
	errs := <-walkErrs
	if scanErr != nil {
		return scanErr
	}
	for _, p := range d.Problems {
		res.Errors = append(res.Errors, scan.FileError{Path: "/", Err: p})
	}
	res.Errors = append(res.Errors, errs...)
	sort.SliceStable(res.Errors, func(i, j int) bool {
		a, b := res.Errors[i], res.Errors[j]
		if a.Partition != b.Partition {
			return a.Partition < b.Partition
		}
		return a.Path < b.Path
	})
	res.Summary.Errors = len(res.Errors)
	report.Result = res
	if sel != nil {
		if err := commitPoll(c, sel, res); err != nil {
			return err
		}
	}

	out := c.OutOrStdout()
	if f.output != "" {
		file, err := os.Create(f.output)
		if err != nil {
			return err
		}
		defer file.Close()
		out = file
	}
	if err := report.Write(out, f.format); err != nil {
		return err
	}
	if f.output != "" {
		if err := out.(*os.File).Close(); err != nil {
			return err
		}
	}
	switch {
	case res.Summary.Findings > 0:
		return errFindings
	case res.Summary.Errors > 0:
		return errPartial
	}
	return nil
}

// feed walks every volume and sends its regular files to the scanner. A
// directory or inode that cannot be read becomes an error entry and the
// walk goes on. It closes files when done.
func feed(ctx context.Context, d *fsparse.Disk, files chan<- scan.File) []scan.FileError {
	defer close(files)
	var errs []scan.FileError
	for _, v := range d.Volumes {
		fail := func(e fsparse.Entry, err error) {
			errs = append(errs, scan.FileError{Partition: partitionName(d, v), FS: v.Type, Path: e.Path, Inode: e.Ino, Err: err})
		}
		err := v.Walk(ctx, ".", func(e fsparse.Entry, err error) error {
			if err != nil {
				fail(e, err)
				return nil
			}
			if e.Type != "file" {
				return nil
			}
			var data fsparse.File
			if e.Ino != 0 {
				data, err = v.OpenInode(e.Ino)
			} else {
				data, err = v.Open(strings.TrimPrefix(e.Path, "/"))
			}
			if err != nil {
				fail(e, err)
				return nil
			}
			select {
			case files <- scan.File{Partition: partitionName(d, v), FS: v.Type, Path: e.Path, Ino: e.Ino, Size: data.Size(), Mode: e.Mode, Uid: e.Uid, Gid: e.Gid, Data: data}:
			case <-ctx.Done():
				return ctx.Err()
			}
			return nil
		})
		if err != nil && ctx.Err() == nil {
			fail(fsparse.Entry{Path: "/"}, err)
		}
	}
	return errs
}

// partitionName is "p1"..., or "" for a filesystem on the whole disk.
func partitionName(d *fsparse.Disk, v *fsparse.Volume) string {
	if v.Partition.Index == 0 {
		return ""
	}
	return v.ID
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

// feedSelection sends the files a dirty poll found changed. A file that
// cannot be opened becomes an error entry.
func feedSelection(ctx context.Context, sel *dirty.Selection, d *fsparse.Disk, files chan<- scan.File) []scan.FileError {
	defer close(files)
	var errs []scan.FileError
	for _, e := range sel.Errors {
		errs = append(errs, scan.FileError{Path: "/", Err: e})
	}
	for _, ch := range sel.Due() {
		v, data, err := sel.Open(ch)
		if err != nil {
			errs = append(errs, scan.FileError{Partition: ch.Volume, Path: ch.Path, Inode: uint64(ch.Ino), Err: err})
			continue
		}
		select {
		case files <- scan.File{Partition: partitionName(d, v), FS: v.Type, Path: ch.Path, Ino: uint64(ch.Ino), Size: data.Size(), Data: data}:
		case <-ctx.Done():
			return errs
		}
	}
	return errs
}
