package main

import (
	"encoding/json"
	"io"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/dirty"
)

func newDiffCmd() *cobra.Command {
	var format string
	var full bool
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
			if err := checkFormat(format, "table", "json", "ndjson"); err != nil {
				return err
			}
			im, d, err := openDisk(args[1])
			if err != nil {
				return err
			}
			defer im.Close()
			var sel *dirty.Selection
			if full {
				oim, od, oerr := openDisk(args[0])
				if oerr != nil {
					return oerr
				}
				defer oim.Close()
				sel, err = dirty.FullCompare(c.Context(), od, d)
			} else {
				sel, err = compareWith(c, args[0], im, d)
			}
			if err != nil {
				return err
			}
			defer sel.Close() // the older image compareWith opened
			if err := writeChanges(c.OutOrStdout(), format, sel); err != nil {
				return err
			}
			return partial(c, sel)
		},
	}
	c.Flags().StringVar(&format, "format", "table", "output format: table, json or ndjson")
	c.Flags().BoolVar(&full, "full", false, "compare full walks of both images, with a sha256 of every file")
	return c
}

func writeNDJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
