package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/internal/output"
	"github.com/vmscope/vmscope/vmi/linux"
)

// newMemCheckCmd is `vmscope mem check`: the kernel integrity checks of
// package cfi on a snapshot or a live guest; exit status 1 on findings.
func newMemCheckCmd() *cobra.Command {
	var f memFlags
	var vmlinuz string
	c := memVerb("check", "Kernel integrity: system-call table, IDT, hidden modules, injected executable pages, ftrace and kprobe hooks, kernel stacks (exit 1 on findings)", &f, func(ctx context.Context, m *memSession, out, errOut io.Writer) error {
		opts := []cfi.Option{cfi.WithCPUs(m.cpus)}
		if vmlinuz != "" {
			img, err := linux.ReadVmlinux(vmlinuz)
			if err != nil {
				return err
			}
			opts = append(opts, cfi.WithKernelImage(img))
		}
		rep, err := cfi.Check(ctx, m.k, opts...)
		if err != nil {
			return err
		}
		switch f.format {
		case output.JSON:
			err = writeJSON(out, rep)
		case output.NDJSON:
			for _, x := range rep.Findings {
				if err = output.WriteNDJSON(out, x); err != nil {
					break
				}
			}
		default:
			tw := output.NewTable(out)
			fmt.Fprintln(tw, "KIND\tADDRESS\tSYMBOL\tOWNER\tWHERE\tEVIDENCE")
			for _, x := range rep.Findings {
				sym := "-"
				if x.Symbol != "" {
					sym = fmt.Sprintf("%s+%#x", printable(x.Symbol), x.Offset)
				}
				where := x.Where
				if where == "" {
					where = "-"
				}
				fmt.Fprintf(tw, "%s\t%#x\t%s\t%s\t%s\t%s\n", x.Kind, x.Address, sym, printable(x.Owner), printable(where), printable(x.Evidence))
			}
			err = tw.Flush()
			for _, st := range rep.Checks {
				s := fmt.Sprintf("check %s: %d checked, %d findings", st.Name, st.Checked, st.Findings)
				if st.Skipped != "" {
					s = fmt.Sprintf("check %s: skipped: %s", st.Name, st.Skipped)
				}
				fmt.Fprintln(errOut, s)
			}
		}
		if err != nil {
			return err
		}
		if f.format != output.JSON {
			for _, p := range rep.Problems {
				fmt.Fprintf(errOut, "vmscope: %v\n", p)
			}
		}
		var perr error
		if len(rep.Problems) > 0 {
			perr = problems(len(rep.Problems), rep.Problems[0].Error())
		}
		if len(rep.Findings) > 0 {
			return errors.Join(errFindings, perr)
		}
		return perr
	})
	c.Flags().StringVar(&vmlinuz, "vmlinuz", "", "the distribution's vmlinuz (or vmlinux) of the kernel build: core text is compared with it, relocated by the slide")
	return c
}
