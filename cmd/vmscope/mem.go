package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/internal/output"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// memFlags are the flags every mem verb takes.
type memFlags struct {
	format    string
	kallsyms  string
	systemMap string
	guest     string
	pause     bool
	vmlinux   string
	maxRead   string
	maxCands  int
}

func (f *memFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.format, "format", "table", "output format: table, json or ndjson")
	c.Flags().StringVar(&f.kallsyms, "kallsyms", "", "a /proc/kallsyms of the same boot, instead of recovering kallsyms from memory")
	c.Flags().StringVar(&f.systemMap, "system-map", "", "the kernel build's System.map, instead of recovering kallsyms from memory")
	c.Flags().StringVar(&f.vmlinux, "vmlinux", "", "the kernel build's vmlinux (ELF: BTF, and symbols when not stripped) or the distribution's vmlinuz, instead of the types (and symbols) in memory")
	c.Flags().StringVar(&f.guest, "guest", "", "a running QEMU guest instead of a snapshot: "+guestSpecHelp)
	c.Flags().BoolVar(&f.pause, "pause", false, "with --guest: pause the guest for a consistent view, resume it after")
	c.Flags().StringVar(&f.maxRead, flagMaxRead, fmt.Sprintf("%dMiB", linux.DefaultBudget.Bytes>>20), "kernel discovery reads at most this much guest memory besides one pass over it")
	c.Flags().IntVar(&f.maxCands, flagMaxCands, linux.DefaultBudget.Candidates, "kernel discovery tries at most this many page-table roots and kallsyms tables")
}

// The flags of the discovery budget, named when it runs out.
const (
	flagMaxRead  = "discovery-max-read"
	flagMaxCands = "discovery-max-candidates"
)

// budgetHint names the flag that raises the bound a *linux.StopError ran
// into.
func budgetHint(err error) error {
	var se *linux.StopError
	if !errors.As(err, &se) || se.Over == "" {
		return err
	}
	flag := flagMaxRead
	if se.Over == "candidates" {
		flag = flagMaxCands
	}
	return fmt.Errorf("%w (raise it with --%s)", err, flag)
}

func newMemCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "mem",
		Short: "Reconstruct a Linux guest from a memory snapshot (ELF core, kdump, LiME, raw) with no profile",
	}
	c.AddCommand(newMemInfoCmd(), newMemPsCmd(), newMemModulesCmd(), newMemFilesCmd(), newMemMountsCmd(), newMemSocketsCmd(), newMemCheckCmd())
	return c
}

// memVerb builds a mem subcommand: it opens the snapshot or live guest,
// discovers the kernel, runs run, and leaves the source as found.
func memVerb(name, short string, f *memFlags, run func(ctx context.Context, m *memSession, out, errOut io.Writer) error) *cobra.Command {
	c := &cobra.Command{
		Use:   name + " SNAPSHOT | --guest SPEC",
		Short: short,
		Args:  rangeArgs(0, 1),
		RunE: func(c *cobra.Command, args []string) error {
			m, err := openMem(c.Context(), args, f)
			if err != nil {
				return err
			}
			defer m.Close()
			return run(c.Context(), m, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
	f.add(c)
	return c
}

// memSession is an opened snapshot or live guest and the kernel found in it.
type memSession struct {
	mem    vmi.Memory
	cpus   []vmi.CPU
	format string // snapshot format, or "live"
	k      *linux.Kernel
	size   int64
	path   string
	close  func() error
}

// Close releases the snapshot, or leaves the live guest as it was found.
func (m *memSession) Close() error { return m.close() }

// openMem opens the snapshot named by args, or the live guest of --guest,
// and discovers its kernel.
func openMem(ctx context.Context, args []string, f *memFlags) (*memSession, error) {
	if err := checkFormat(f.format, output.Table, output.JSON, output.NDJSON); err != nil {
		return nil, err
	}
	maxRead, err := humanize.ParseBytes(f.maxRead)
	if err != nil || f.maxCands < 1 || maxRead < 1 || maxRead > math.MaxInt64 {
		return nil, usageError{fmt.Errorf("--%s %q, --%s %d: want sizes above 0", flagMaxRead, f.maxRead, flagMaxCands, f.maxCands)}
	}
	budget := linux.Budget{Bytes: int64(maxRead), Candidates: f.maxCands}
	src, err := openMemory(ctx, memTarget{Snapshot: strings.Join(args, ""), Guest: f.guest, Pause: f.pause})
	if err != nil {
		return nil, err
	}
	m := &memSession{mem: src.mem, cpus: src.cpus, format: src.format, size: src.size, path: src.name,
		close: func() error { return src.Close(ctx) }}
	opts := []linux.Option{linux.WithCPUs(m.cpus), linux.WithBudget(budget)}
	for _, in := range []struct {
		p   string
		opt func(io.Reader) linux.Option
	}{{f.kallsyms, linux.WithKallsyms}, {f.systemMap, linux.WithSystemMap}} {
		if in.p == "" {
			continue
		}
		fh, err := os.Open(in.p)
		if err != nil {
			m.Close()
			return nil, err
		}
		defer fh.Close()
		opts = append(opts, in.opt(fh))
	}
	if f.vmlinux != "" {
		ki, err := linux.ReadKernelImage(f.vmlinux)
		if err != nil {
			m.Close()
			return nil, err
		}
		opts = append(opts, ki.Options()...)
	}
	if m.k, err = linux.Discover(ctx, m.mem, opts...); err != nil {
		m.Close()
		return nil, fmt.Errorf("%s: %w", m.path, budgetHint(err))
	}
	return m, nil
}

// writeRows writes rows as a JSON document {key: rows, problems} or as
// NDJSON (one row a line; problems go to stderr), or calls table.
func writeRows[T any](w, errOut io.Writer, format, key string, rows []T, probs []linux.Problem, table func(w io.Writer) error) error {
	var err error
	switch format {
	case output.JSON:
		if rows == nil {
			rows = []T{}
		}
		err = writeJSON(w, map[string]any{key: rows, "problems": problemsOrEmpty(probs)})
	case output.NDJSON:
		for _, r := range rows {
			if err = output.WriteNDJSON(w, r); err != nil {
				break
			}
		}
	default:
		err = table(w)
	}
	if err != nil {
		return err
	}
	if format != "json" {
		for _, p := range probs {
			fmt.Fprintf(errOut, "vmscope: %v\n", p)
		}
	}
	if len(probs) > 0 {
		p := probs[0]
		return problems(len(probs), p.Error())
	}
	return nil
}

func problemsOrEmpty(p []linux.Problem) []linux.Problem {
	if p == nil {
		return []linux.Problem{}
	}
	return p
}

type memInfoDoc struct {
	Snapshot      string   `json:"snapshot"`
	Format        string   `json:"format"`
	FileSize      int64    `json:"file_size"`
	MemoryBytes   uint64   `json:"memory_bytes"`
	CPUs          []memCPU `json:"cpus"`
	Kernel        string   `json:"kernel"`
	PageTables    string   `json:"page_tables"`
	PageTablesSrc string   `json:"page_tables_from"`
	LA57          bool     `json:"la57"`
	Text          string   `json:"text"`
	TextPA        string   `json:"text_pa"`
	KASLRSlide    string   `json:"kaslr_slide"`
	PhysBase      string   `json:"phys_base"`
	PageOffset    string   `json:"page_offset_base"`
	Symbols       int      `json:"symbols"`
	SymbolSource  string   `json:"symbol_source"`
	TypeSource    string   `json:"type_source"`
	BytesRead     int64    `json:"discovery_bytes_read"`
}

type memCPU struct {
	ID  int    `json:"id"`
	CR3 string `json:"cr3"`
	RIP string `json:"rip"`
}

func newMemInfoCmd() *cobra.Command {
	var f memFlags
	c := memVerb("info", "Snapshot format, CPUs, kernel version, KASLR slide, symbol and type sources", &f, func(ctx context.Context, m *memSession, out, errOut io.Writer) error {
		k := m.k
		d := memInfoDoc{
			Snapshot: m.path, Format: m.format, FileSize: m.size,
			CPUs: []memCPU{}, Kernel: k.Version,
			PageTables: fmt.Sprintf("%#x", uint64(k.AS.Root)), PageTablesSrc: k.CR3From, LA57: k.AS.LA57,
			Text: fmt.Sprintf("%#x", uint64(k.Text)), TextPA: fmt.Sprintf("%#x", uint64(k.TextPA)),
			KASLRSlide: fmt.Sprintf("%#x", k.Slide), PhysBase: fmt.Sprintf("%#x", k.PhysBase),
			PageOffset: fmt.Sprintf("%#x", uint64(k.PageOffset)),
			Symbols:    len(k.Symbols.List), SymbolSource: k.SymbolsSrc, TypeSource: k.TypesSrc,
			BytesRead: k.BytesRead(),
		}
		for _, r := range m.mem.Ranges() {
			d.MemoryBytes += r.Size
		}
		for _, cpu := range m.cpus {
			d.CPUs = append(d.CPUs, memCPU{ID: cpu.ID, CR3: fmt.Sprintf("%#x", cpu.CR3), RIP: fmt.Sprintf("%#x", cpu.RIP)})
		}
		if f.format != "table" {
			return output.WriteJSON(out, d)
		}
		tw := output.NewTable(out)
		fmt.Fprintf(tw, "snapshot:\t%s\n", d.Snapshot)
		fmt.Fprintf(tw, "format:\t%s\n", d.Format)
		fmt.Fprintf(tw, "file size:\t%d\n", d.FileSize)
		fmt.Fprintf(tw, "memory:\t%d bytes\n", d.MemoryBytes)
		for _, cpu := range d.CPUs {
			fmt.Fprintf(tw, "cpu %d:\tcr3 %s rip %s\n", cpu.ID, cpu.CR3, cpu.RIP)
		}
		fmt.Fprintf(tw, "kernel:\t%s\n", d.Kernel)
		fmt.Fprintf(tw, "page tables:\t%s (found from %s, la57 %v)\n", d.PageTables, d.PageTablesSrc, d.LA57)
		fmt.Fprintf(tw, "_text:\t%s at guest-physical %s\n", d.Text, d.TextPA)
		fmt.Fprintf(tw, "KASLR slide:\t%s\n", d.KASLRSlide)
		fmt.Fprintf(tw, "phys_base:\t%s\n", d.PhysBase)
		fmt.Fprintf(tw, "page_offset_base:\t%s\n", d.PageOffset)
		fmt.Fprintf(tw, "symbols:\t%d from %s\n", d.Symbols, d.SymbolSource)
		fmt.Fprintf(tw, "types:\t%s\n", d.TypeSource)
		fmt.Fprintf(tw, "discovery read:\t%d bytes\n", d.BytesRead)
		return tw.Flush()
	})
	return c
}

func newMemPsCmd() *cobra.Command {
	var f memFlags
	var threads bool
	c := memVerb("ps", "Processes: pid, ppid, tgid, comm, uid/gid, state, start time, argv (from the process's memory)", &f, func(ctx context.Context, m *memSession, out, errOut io.Writer) error {
		tasks, probs, err := m.k.Tasks(ctx, threads)
		if err != nil {
			return err
		}
		return writeRows(out, errOut, f.format, "processes", tasks, probs, func(w io.Writer) error {
			tw := output.NewTable(w)
			fmt.Fprintln(tw, "PID\tPPID\tTGID\tUID\tGID\tS\tSTART\tCOMM\tARGS")
			row := func(t linux.Task, tid bool) {
				args := printable(strings.Join(t.Args, " "))
				if t.Kernel {
					args = "[" + printable(t.Name) + "]"
				}
				pid := fmt.Sprint(t.PID)
				if tid {
					pid = "  " + pid
				}
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", pid, t.PPID, t.TGID, t.UID, t.GID, t.State,
					time.Duration(t.StartTime).Truncate(time.Millisecond), printable(t.Name), args)
			}
			for _, t := range tasks {
				row(t, false)
				for _, th := range t.Threads {
					if th.PID != t.PID {
						row(th, true)
					}
				}
			}
			return tw.Flush()
		})
	})
	c.Flags().BoolVarP(&threads, "threads", "t", false, "list each process's threads")
	return c
}

func newMemModulesCmd() *cobra.Command {
	var f memFlags
	var symbols bool
	c := memVerb("modules", "Loaded kernel modules: name, base, size, state (sorted by name); --symbols: their symbols as /proc/kallsyms", &f, func(ctx context.Context, m *memSession, out, errOut io.Writer) error {
		if symbols {
			syms, probs, err := m.k.ModuleSymbols(ctx)
			if err != nil {
				return err
			}
			return writeRows(out, errOut, f.format, "symbols", syms, probs, func(w io.Writer) error {
				for _, y := range syms {
					fmt.Fprintf(w, "%016x %c %s\t[%s]\n", y.Addr, y.Type, printable(y.Name), printable(y.Module))
				}
				return nil
			})
		}
		mods, probs, err := m.k.Modules(ctx)
		if err != nil {
			return err
		}
		linux.SortModules(mods)
		return writeRows(out, errOut, f.format, "modules", mods, probs, func(w io.Writer) error {
			tw := output.NewTable(w)
			fmt.Fprintln(tw, "NAME\tBASE\tSIZE\tREFS\tSTATE")
			for _, x := range mods {
				fmt.Fprintf(tw, "%s\t%#x\t%d\t%d\t%s\n", printable(x.Name), x.Base, x.Size, x.Refs, x.State)
			}
			return tw.Flush()
		})
	})
	c.Flags().BoolVar(&symbols, "symbols", false, "list the modules' symbols in /proc/kallsyms order and format")
	return c
}

func newMemFilesCmd() *cobra.Command {
	var f memFlags
	var pid int
	c := memVerb("files", "Open file descriptors with full paths; pipes and sockets named as /proc does", &f, func(ctx context.Context, m *memSession, out, errOut io.Writer) error {
		tasks, probs, err := m.k.Tasks(ctx, false)
		if err != nil {
			return err
		}
		files, fprobs, err := m.k.Files(ctx, tasks, pid)
		if err != nil {
			return err
		}
		probs = append(probs, fprobs...)
		return writeRows(out, errOut, f.format, "files", files, probs, func(w io.Writer) error {
			tw := output.NewTable(w)
			fmt.Fprintln(tw, "PID\tFD\tINODE\tPATH")
			for _, x := range files {
				fmt.Fprintf(tw, "%d\t%d\t%d\t%s\n", x.PID, x.FD, x.Inode, printable(x.Path))
			}
			return tw.Flush()
		})
	})
	c.Flags().IntVar(&pid, "pid", 0, "only this process")
	return c
}

func newMemMountsCmd() *cobra.Command {
	var f memFlags
	c := memVerb("mounts", "Mounts of the initial mount namespace, in /proc/mounts order", &f, func(ctx context.Context, m *memSession, out, errOut io.Writer) error {
		mounts, probs, err := m.k.Mounts(ctx)
		if err != nil {
			return err
		}
		return writeRows(out, errOut, f.format, "mounts", mounts, probs, func(w io.Writer) error {
			tw := output.NewTable(w)
			fmt.Fprintln(tw, "SOURCE\tTARGET\tTYPE\tOPTIONS")
			for _, x := range mounts {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", printable(x.Source), printable(x.Target), printable(x.FSType), x.Options)
			}
			return tw.Flush()
		})
	})
	return c
}
