package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/fsparse"
)

type dirtyFlags struct {
	base, bitmap, state, source, format string
	live                                liveFlags
}

func newDirtyCmd() *cobra.Command {
	var f dirtyFlags
	c := &cobra.Command{
		Use:   "dirty IMAGE [--base IMAGE | --bitmap NAME | --state PATH] | dirty --guest SPEC [--disk ID] --state PATH",
		Short: "List the files changed since a base image or the last poll, and why",
		Long: `List the guest files that changed, found from the dirty blocks up:
  --base IMAGE   against an older image of the same disk (shared layers are skipped)
  (no flag)      an overlay against its backing file (copy-on-write)
  --state PATH   since the last poll recorded in PATH (bbolt); the first poll lists
                 every file and fills the state; --source picks the dirty source
                 (auto, cow, bitmap:NAME, hash); --bitmap NAME is --source bitmap:NAME
vmscope never writes to the image, so an overlay and a bitmap are cumulative;
the state keeps a hash of every 4 KiB block as the last poll saw it, so each
poll reports only what changed since. To keep a bitmap small, rotate it as
incremental backup does: a QMP transaction of block-dirty-bitmap-add (new,
persistent) and block-dirty-bitmap-disable (old), poll the old one, then
block-dirty-bitmap-remove it; poll the new one next time. A bitmap that was
not enabled at the last poll, or holds less than then, makes a full pass.

--guest SPEC polls a running QEMU (its QMP socket) without pausing it: each
poll takes a point in time of the disk (a fleecing image, blockdev-backup
sync=none) and, in the same QMP transaction, rotates vmscope's persistent
tracking bitmap (vmscope-track-*); the files the guest wrote since the last
poll's point in time are read from that view over NBD. The output names the
point in time and the bitmap generation. A killed poll leaves vmscope- nodes
and bitmaps: vmscope guest release --guest SPEC removes and merges them.`,
		Args: rangeArgs(0, 1),
		RunE: func(c *cobra.Command, args []string) error {
			if f.live.guest != "" {
				if len(args) > 0 {
					return usageError{fmt.Errorf("--guest reads a running guest's disk: no IMAGE with it")}
				}
				return runDirtyGuest(c.Context(), &f, c.OutOrStdout(), c.ErrOrStderr())
			}
			if len(args) != 1 {
				return usageError{fmt.Errorf("give an IMAGE, or --guest SPEC")}
			}
			return runDirty(c.Context(), args[0], &f, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.base, "base", "", "older image of the same disk to compare with")
	fl.StringVar(&f.bitmap, "bitmap", "", "persistent dirty bitmap of the image to use (needs --state)")
	fl.StringVar(&f.state, "state", "", "poll state file (created when missing)")
	fl.StringVar(&f.source, "source", "auto", "dirty source with --state: auto, cow, bitmap:NAME or hash")
	fl.StringVar(&f.format, "format", "table", "output format: table, json or ndjson")
	f.live.add(fl)
	return c
}

// runDirtyGuest lists the files the running guest of f changed since the
// last poll of the state, at one point in time.
func runDirtyGuest(ctx context.Context, f *dirtyFlags, out, errOut io.Writer) (err error) {
	if err := checkFormat(f.format, dirty.Formats...); err != nil {
		return err
	}
	if f.state == "" || f.base != "" || f.bitmap != "" || f.source != "auto" {
		return usageError{fmt.Errorf("--guest polls with --state PATH alone (its source is the guest's own tracking bitmap)")}
	}
	l, err := openLive(ctx, &f.live, f.state, errOut)
	if err != nil {
		return err
	}
	saved := false
	defer func() { err = errors.Join(err, l.close(ctx, saved)) }()
	sel, err := l.selectLive(ctx, errOut, "")
	if err != nil {
		return err
	}
	if err := dirty.WriteChanges(out, f.format, sel); err != nil {
		return err
	}
	if len(sel.Errors) > 0 {
		fmt.Fprintf(errOut, "vmscope: poll state not updated: %d errors; the next poll redoes this one\n", len(sel.Errors))
		return partial(errOut, sel)
	}
	if err := sel.CommitContext(ctx); err != nil {
		return err
	}
	saved = true
	l.view.Step(4, "poll state saved")
	return nil
}

// runDirty lists the changed files of image as f says on out; problems and
// the poll's fate go to errOut.
func runDirty(ctx context.Context, image string, f *dirtyFlags, out, errOut io.Writer) error {
	if err := checkFormat(f.format, dirty.Formats...); err != nil {
		return err
	}
	if f.base != "" && (f.state != "" || f.bitmap != "") {
		return usageError{fmt.Errorf("--base compares two images; it does not go with --state or --bitmap")}
	}
	if f.bitmap != "" {
		if f.state == "" {
			return usageError{fmt.Errorf("--bitmap needs --state: a bitmap is cumulative, and the state says what was already seen")}
		}
		f.source = "bitmap:" + f.bitmap
	}
	im, d, err := openDisk(image)
	if err != nil {
		return err
	}
	defer im.Close()
	spec := f.source
	switch {
	case f.base != "":
		spec = "base:" + f.base
	case f.state == "":
		ls := im.Layers()
		if len(ls) < 2 {
			return usageError{fmt.Errorf("%s is a single %s file: give --base IMAGE, or --state PATH (bitmap or hash source)", image, ls[0].Format())}
		}
		spec = "base:" + ls[1].Name() // an overlay against its backing file
	case strings.HasPrefix(spec, "base:"):
		return usageError{fmt.Errorf("--source %s: --base compares two images; it does not go with --state", spec)}
	}
	sel, err := pollDirty(ctx, im, d, spec, f.state, "")
	if err != nil {
		return err
	}
	defer sel.Close()
	if err := dirty.WriteChanges(out, f.format, sel); err != nil {
		return err
	}
	enc := encryptedVolumes(d)
	if f.state == "" {
		return partial(errOut, sel, enc...)
	}
	if len(sel.Errors) > 0 {
		// As a scan poll: what could not be read is looked at again
		// by the next poll, which redoes this one.
		fmt.Fprintf(errOut, "vmscope: poll state not updated: %d errors; the next poll redoes this one\n", len(sel.Errors))
		return partial(errOut, sel, enc...)
	}
	// A listing moves the cursor; the files it lists stay due for the
	// next scan poll (the state keeps them apart as unscanned). An
	// encrypted volume does not hold the poll back: no later poll could
	// read it either.
	if err := sel.CommitContext(ctx); err != nil {
		return err
	}
	return partial(errOut, sel, enc...)
}

// encryptedVolumes returns the problems that name the encrypted volumes of
// d (LUKS, BitLocker): no changed file is found in them, so dirty names
// them, as info, ls and scan do, and exits 2, never passing over one
// silently.
func encryptedVolumes(d *fsparse.Disk) []error {
	var out []error
	for _, p := range d.Problems {
		if errors.Is(p, fsparse.ErrEncrypted) {
			out = append(out, p)
		}
	}
	return out
}

// partial prints the problems of the poll sel and the further ones given
// (the disk's encrypted volumes) on errOut and returns their summary (nil
// without problems).
func partial(errOut io.Writer, sel *dirty.Selection, more ...error) error {
	errs := append(slices.Clip(sel.Errors), more...)
	for _, e := range errs {
		fmt.Fprintf(errOut, "vmscope: %v\n", e)
	}
	if len(errs) > 0 {
		return problems(len(errs), errs[0])
	}
	return nil
}
