package cfi

import (
	"context"
	"fmt"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// Report is what Check found.
type Report struct {
	Kernel   string          `json:"kernel"`
	Findings []Finding       `json:"findings"`
	Checks   []CheckStat     `json:"checks"`
	Problems []vmerr.Problem `json:"problems"`
}

// CheckStat says what one check looked at.
type CheckStat struct {
	Name     string `json:"name"`
	Checked  int    `json:"checked"` // entries, gates, modules, pages, ops, probes or frames
	Findings int    `json:"findings"`
	Skipped  string `json:"skipped,omitempty"` // why the check did not run
}

// Option is an optional input to Check.
type Option func(*options)

type options struct {
	cpus    []vmi.CPU
	vmlinux []byte
}

// WithCPUs gives the vCPUs' state (a snapshot's saved registers, a live
// guest's): the IDT check reads IDTR from it.
func WithCPUs(c []vmi.CPU) Option { return func(o *options) { o.cpus = c } }

// WithKernelImage gives the build's kernel ELF (linux.ReadVmlinux of the
// distribution's vmlinuz, with its relocation table): core text is
// compared with it.
func WithKernelImage(vmlinux []byte) Option { return func(o *options) { o.vmlinux = vmlinux } }

// checker runs the checks on one kernel map.
type checker struct {
	m    *KernelMap
	k    *linux.Kernel
	o    options
	rep  *Report
	exec execSet // ExecRanges, once walked
	// kprobeAddrs are the probed addresses (the kprobes check finds them,
	// the text check allows their int3 or jump)
	kprobeAddrs []vmi.VA
	// carved are the modules the modules check carved from memory
	carved []CarvedModule
	// img is the kernel image (WithKernelImage), parsed on first use
	img    *textImage
	imgErr error
}

// Check runs every static check on k and returns its findings, sorted.
// Each check that cannot run on this kernel (a symbol or type it lacks)
// says so in its CheckStat; what a check could not read is a Problem.
func Check(ctx context.Context, k *linux.Kernel, opts ...Option) (*Report, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	m, err := NewKernelMap(ctx, k)
	if err != nil {
		return nil, err
	}
	c := &checker{m: m, k: k, o: o, rep: &Report{Kernel: k.Version, Findings: []Finding{}}}
	c.rep.Problems = append(c.rep.Problems, m.Problems...)
	for _, ch := range []struct {
		name string
		run  func(ctx context.Context) (int, []Finding, error)
	}{
		{"syscall-table", c.syscalls},
		{"idt", c.idt},
		{"modules", c.modules},
		{"exec-pages", c.execPages},
		{"ftrace", c.ftrace},
		{"kprobes", c.kprobes},
		{"stacks", c.stacks},
		{"text", c.text},
		{"kallsyms", c.kallsyms},
	} {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, fs, err := ch.run(ctx)
		st := CheckStat{Name: ch.name, Checked: n, Findings: len(fs)}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			st.Skipped = err.Error()
		}
		c.rep.Checks = append(c.rep.Checks, st)
		c.rep.Findings = append(c.rep.Findings, fs...)
	}
	SortFindings(c.rep.Findings)
	if c.rep.Problems == nil {
		c.rep.Problems = []vmerr.Problem{}
	}
	return c.rep, nil
}

func (c *checker) problem(where string, va vmi.VA, err error) {
	c.rep.Problems = append(c.rep.Problems, vmerr.Problem{Where: where, Offset: -1, Addr: uint64(va), Err: err})
}

// execPages reports supervisor-executable pages of the kernel half that
// no code region covers (regions rounded out to whole pages).
func (c *checker) execPages(ctx context.Context) (int, []Finding, error) {
	ranges, err := c.execRanges(ctx)
	if err != nil {
		return 0, nil, err
	}
	// the regions rounded out to whole pages and merged where they
	// overlap or nest, sorted
	var regions []Region
	for _, r := range c.m.Regions {
		r.Start &^= vmi.PageBytes - 1
		r.End = (r.End + vmi.PageBytes - 1) &^ (vmi.PageBytes - 1)
		if n := len(regions); n > 0 && r.Start <= regions[n-1].End {
			regions[n-1].End = max(regions[n-1].End, r.End)
			continue
		}
		regions = append(regions, r)
	}
	var out []Finding
	pages := 0
	for _, er := range ranges {
		pages += int((er.End - er.Start) / vmi.PageBytes)
		for _, u := range subtract(er.Start, er.End, regions) {
			pa := er.PA + vmi.PA(u[0]-er.Start)
			ev := fmt.Sprintf("%d KiB [%#x, %#x) mapped executable for the kernel (guest-physical %#x), outside core text, module text and known trampolines",
				(u[1]-u[0])>>10, uint64(u[0]), uint64(u[1]), uint64(pa))
			for _, cm := range c.carved {
				if u[0] >= cm.Base && u[0] < cm.Base+vmi.VA(cm.Text) {
					ev += fmt.Sprintf("; it is the core text of module %q, whose struct module (at %#x) was carved from memory", cm.Name, uint64(cm.Addr))
				}
			}
			out = append(out, c.m.newFinding(KindExecPage, u[0], "", ev))
		}
	}
	return pages, out, nil
}
