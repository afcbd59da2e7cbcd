package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/dirty"
)

type diffFlags struct {
	format string
	full   bool
}

func newDiffCmd() *cobra.Command {
	var f diffFlags
	c := &cobra.Command{
		Use:   "diff IMAGE_A IMAGE_B",
		Short: "File-level diff of two images of the same disk (added, deleted, modified, metadata)",
		Long: `Compare the files of IMAGE_A (older) and IMAGE_B (newer), like virt-diff. When one
is a layer of the other's chain, or they share a backing file, only the ranges the
layers above the shared one hold are read; otherwise the disks are compared chunk
by chunk first. Files are then found from the differing blocks through the
filesystem metadata, and content changes are confirmed against IMAGE_A's bytes.
--full walks every filesystem of both images instead and compares them path by
path with the sha256 of every file (virt-diff --checksum), trusting no
block-level tracking: for images that do not share a disk history.`,
		Args: rangeArgs(2, 2),
		RunE: func(c *cobra.Command, args []string) error {
			return runDiff(c.Context(), args[0], args[1], &f, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
	c.Flags().StringVar(&f.format, "format", "table", "output format: table, json or ndjson")
	c.Flags().BoolVar(&f.full, "full", false, "compare full walks of both images, with a sha256 of every file")
	return c
}

// runDiff writes the changes from image older to image newer on out;
// problems go to errOut. Every image it opens is closed when it returns.
func runDiff(ctx context.Context, older, newer string, f *diffFlags, out, errOut io.Writer) error {
	if err := checkFormat(f.format, dirty.Formats...); err != nil {
		return err
	}
	im, d, err := openDisk(newer)
	if err != nil {
		return err
	}
	defer im.Close()
	var sel *dirty.Selection
	if f.full {
		oim, od, oerr := openDisk(older)
		if oerr != nil {
			return oerr
		}
		defer oim.Close()
		sel, err = dirty.FullCompare(ctx, od, d)
	} else {
		// The base source opens the older image; sel.Close closes it,
		// and pollDirty closes it itself when the poll fails.
		sel, err = pollDirty(ctx, im, d, "base:"+older, "", "")
	}
	if err != nil {
		return err
	}
	defer sel.Close()
	if err := dirty.WriteChanges(out, f.format, sel); err != nil {
		return err
	}
	return partial(errOut, sel)
}
