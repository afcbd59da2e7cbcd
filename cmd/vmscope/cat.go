package main

import (
	"bufio"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func newCatCmd() *cobra.Command {
	var deleted bool
	c := &cobra.Command{
		Use:   "cat IMAGE PATH",
		Short: "Write a guest file's content to stdout, byte for byte",
		Long:  "Write the content of the regular file PATH (/etc/passwd, or p2:/etc/passwd on a disk with several filesystems) to stdout. Holes and unwritten extents read as zeros.",
		Args:  rangeArgs(2, 2),
		RunE: func(c *cobra.Command, args []string) error {
			if deleted {
				return runCatDeleted(c.Context(), args[0], args[1], c.OutOrStdout(), c.ErrOrStderr())
			}
			return runCat(args[0], args[1], c.OutOrStdout())
		},
	}
	c.Flags().BoolVar(&deleted, "deleted", false, "PATH is a deleted name (as ls --deleted lists it): write what its freed blocks hold, best effort")
	return c
}

// runCat writes the content of the regular file at path of image to out.
func runCat(image, path string, out io.Writer) error {
	im, d, err := openDisk(image)
	if err != nil {
		return err
	}
	defer im.Close()
	v, name, err := d.Resolve(path)
	if err != nil {
		return err
	}
	f, err := v.Open(name)
	if err != nil {
		return fmt.Errorf("%s:/%s: %w", v.ID, name, err)
	}
	w := bufio.NewWriterSize(out, 1<<20)
	if _, err := io.Copy(w, io.NewSectionReader(f, 0, f.Size())); err != nil {
		return fmt.Errorf("%s:/%s: %w", v.ID, name, err)
	}
	return w.Flush()
}
