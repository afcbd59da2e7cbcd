package main

import (
	"bufio"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/report"
)

func newReportCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "report SCAN.ndjson [DIFF.ndjson] [DIRTY.ndjson] [TIMELINE.ndjson]... -o report.html",
		Short: "One self-contained HTML report from scan, diff, dirty and timeline NDJSON",
		Long: `Render NDJSON outputs of vmscope (scan, diff, dirty, timeline --format ndjson; each line is
recognised by its shape) as one self-contained HTML file: the image, the findings grouped by
severity with their strings and offsets, the changed files, and a zoomable plot of the file
events around the findings with the finding times marked. Nothing is fetched: the data, the
styles and the few lines of script are in the file. The same inputs give the same bytes.`,
		Args: rangeArgs(1, 16),
		RunE: func(c *cobra.Command, args []string) error {
			return runReport(args, out, c.OutOrStdout())
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "write the HTML here (default: stdout)")
	return c
}

func runReport(inputs []string, out string, stdout io.Writer) error {
	var in report.Input
	for _, p := range inputs {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = in.Read(f, p)
		f.Close()
		if err != nil {
			return err
		}
	}
	if out == "" {
		w := bufio.NewWriter(stdout)
		if err := report.Render(w, &in); err != nil {
			return err
		}
		return w.Flush()
	}
	for _, p := range inputs {
		if p == out {
			return usageError{fmt.Errorf("-o %s is one of the inputs", out)}
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	if err := report.Render(w, &in); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
