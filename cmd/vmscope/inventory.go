package main

import (
	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/fleet"
)

func newInventoryCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "inventory glob PATTERN... | libvirt DIR",
		Short: "Write a fleet inventory (NDJSON: id, path, format, labels) for vmscope fleet",
	}
	c.AddCommand(&cobra.Command{
		Use:   "glob PATTERN...",
		Short: "The image files matching the patterns (id: the file's base name without extension)",
		Args:  rangeArgs(1, 1<<20),
		RunE: func(c *cobra.Command, args []string) error {
			inv, err := fleet.Glob(args...)
			if err != nil {
				return usageError{err}
			}
			return inv.WriteNDJSON(c.OutOrStdout())
		},
	}, &cobra.Command{
		Use:   "libvirt DIR",
		Short: "The file-backed disks of the libvirt domain XML files in DIR (no libvirtd): ids DOMAIN#DEV",
		Args:  rangeArgs(1, 1),
		RunE: func(c *cobra.Command, args []string) error {
			inv, err := fleet.Libvirt(args[0])
			if err != nil {
				return err
			}
			return inv.WriteNDJSON(c.OutOrStdout())
		},
	})
	return c
}
