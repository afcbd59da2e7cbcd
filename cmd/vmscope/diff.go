package main

import (
	"encoding/json"
	"io"

	"github.com/spf13/cobra"
)

func newDiffCmd() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "diff IMAGE_A IMAGE_B",
		Short: "File-level diff of two images of the same disk (added, deleted, modified, metadata)",
		Long: `Compare the files of IMAGE_A (older) and IMAGE_B (newer), like virt-diff. When one
is a layer of the other's chain, or they share a backing file, only the ranges the
layers above the shared one hold are read; otherwise the disks are compared chunk
by chunk first. Files are then found from the differing blocks through the
filesystem metadata, and content changes are confirmed against IMAGE_A's bytes.`,
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
			sel, err := compareWith(c, args[0], im, d)
			if err != nil {
				return err
			}
			if err := writeChanges(c.OutOrStdout(), format, sel); err != nil {
				return err
			}
			return partial(c, sel)
		},
	}
	c.Flags().StringVar(&format, "format", "table", "output format: table, json or ndjson")
	return c
}

func writeNDJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
