package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/inject"
	"github.com/vmscope/vmscope/internal/output"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// injectOpts are the common flags of vmscope inject.
type injectOpts struct {
	guest      string
	dummy      string
	protect    string
	journal    string
	timeout    time.Duration
	format     string
	disk       string
	diskMount  string
	model      string
	allowWrite bool
	hardware   bool
	long       bool
	maxBytes   int64
	signal     int
}

func newInjectCmd() *cobra.Command {
	var o injectOpts
	c := &cobra.Command{
		Use:   "inject ls|stat|cat|ps|netstat|kill|recover --guest SPEC …",
		Short: "Manage a running guest from outside: system calls run by a borrowed guest process, which is then restored",
		Long: "inject borrows a guest process as a dummy (auto: vetted and ranked; --dummy PID is vetted too), takes it at a " +
			"user-mode instruction boundary, saves its registers, blocks its signals, makes it run the system calls of the " +
			"operation from a fixed allow-list, and restores and verifies it. The undo journal is written and synced before " +
			"the first change; every exit path (errors, SIGINT, SIGTERM, --timeout) rolls back; after a SIGKILL, " +
			"`vmscope inject recover` does.\n\n" +
			"--protect before runs the kernel integrity checks first and refuses (exit 2) on any finding; full also " +
			"single-steps every call and aborts on kernel code outside core text (or outside --model). After every " +
			"operation the answer is compared with an independent view (ls/stat/cat: --disk IMAGE mounted at --disk-mount; " +
			"ps: the task list in memory): a disagreement is a finding (exit 1).",
	}
	f := c.PersistentFlags()
	f.StringVar(&o.guest, "guest", "", guestFlagHelp)
	f.StringVar(&o.dummy, "dummy", "auto", "the process to borrow: a pid (vetted) or auto")
	f.StringVar(&o.protect, "protect", "full", "off, before (static integrity checks first) or full (also single-step every call)")
	f.StringVar(&o.journal, "journal", "", "the undo journal (default: in $XDG_RUNTIME_DIR/vmscope or /run/vmscope, named by the guest); the guest's own journal is FILE.guest.json")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "bound of the whole operation (the dummy is restored when it ends)")
	f.StringVar(&o.format, "format", output.Table, "output format: table or json")
	f.StringVar(&o.disk, "disk", "", "the guest's disk image, for the after-check of ls, stat and cat (read-only)")
	f.StringVar(&o.diskMount, "disk-mount", "/", "where the guest mounts --disk's filesystem")
	f.BoolVar(&o.hardware, "hardware-breakpoints", false, "hardware breakpoints (KVM: a software breakpoint would write int3 into guest memory; 4 per vCPU)")
	f.StringVar(&o.model, "model", "", "a page-level model (cfi learn) the stepped calls must stay in (protect full)")
	op := func(use, short string, args cobra.PositionalArgs, kind string) *cobra.Command {
		return &cobra.Command{Use: use, Short: short, Args: args, RunE: func(c *cobra.Command, args []string) error {
			return runInject(c.Context(), kind, args, o, c.OutOrStdout(), c.ErrOrStderr())
		}}
	}
	ls := op("ls --guest SPEC PATH [-l]", "list a directory (openat, getdents64, close; -l: newfstatat each)", exactArgs(1), "ls")
	ls.Flags().BoolVarP(&o.long, "long", "l", false, "long listing (mode, links, uid, gid, size, mtime)")
	stat := op("stat --guest SPEC PATH", "describe a file (newfstatat)", exactArgs(1), "stat")
	cat := op("cat --guest SPEC PATH", "a file's content to stdout (openat, read, close)", exactArgs(1), "cat")
	cat.Flags().Int64Var(&o.maxBytes, "max-bytes", 0, "a larger file is an error (0: 16 MiB, or 1 MiB with --protect full, where every copied byte is single-stepped)")
	ps := op("ps --guest SPEC", "the processes, from /proc", exactArgs(0), "ps")
	ns := op("netstat --guest SPEC", "the sockets, from /proc/net/{tcp,tcp6,udp,udp6,unix}", exactArgs(0), "netstat")
	kill := op("kill --guest SPEC PID --allow-write", "send a signal to a guest process (kill)", exactArgs(1), "kill")
	kill.Flags().IntVar(&o.signal, "signal", 15, "the signal number")
	kill.Flags().BoolVar(&o.allowWrite, "allow-write", false, "allow an operation that changes the guest")
	rec := op("recover --guest SPEC [--journal FILE]", "restore the dummy and the guest a killed vmscope inject left", exactArgs(0), "recover")
	c.AddCommand(ls, stat, cat, ps, ns, kill, rec)
	return c
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %d argument(s), got %d", c.Name(), n, len(args))}
		}
		return nil
	}
}

// injectJournals are the undo journal and the guest's own journal.
func injectJournals(o injectOpts) (string, string) {
	if o.journal != "" {
		return o.journal, o.journal + ".guest.json"
	}
	name := []byte(o.guest)
	for i, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			name[i] = '_'
		}
	}
	if len(name) > 120 {
		name = name[:120]
	}
	return filepath.Join(qemu.JournalDir(), "inject-"+string(name)+".json"), ""
}

func runInject(ctx context.Context, kind string, args []string, o injectOpts, out, errOut io.Writer) (err error) {
	if err := checkFormat(o.format, output.Table, output.JSON); err != nil {
		return err
	}
	prot, err := inject.ParseProtect(o.protect)
	if err != nil {
		return usageError{err}
	}
	op := inject.Op{Kind: kind, Long: o.long, MaxBytes: o.maxBytes, Signal: o.signal}
	switch kind {
	case "ls", "stat", "cat":
		if !strings.HasPrefix(args[0], "/") {
			return usageError{fmt.Errorf("path %q is not absolute", args[0])}
		}
		op.Path = args[0]
	case "kill":
		if op.PID, err = strconv.Atoi(args[0]); err != nil || op.PID <= 0 {
			return usageError{fmt.Errorf("pid %q", args[0])}
		}
		if !o.allowWrite {
			return usageError{errors.New("kill changes the guest: give --allow-write")}
		}
	}
	opts := inject.Options{Protect: prot, Guest: o.guest, AllowWrite: o.allowWrite}
	if o.dummy != "auto" {
		if opts.Dummy, err = strconv.Atoi(o.dummy); err != nil || opts.Dummy <= 0 {
			return usageError{fmt.Errorf("--dummy %q: want a pid or auto", o.dummy)}
		}
	}
	if o.model != "" {
		mf, err := os.Open(o.model)
		if err != nil {
			return err
		}
		opts.Model, err = cfi.ParseModel(mf)
		mf.Close()
		if err != nil {
			return err
		}
	}
	if o.disk != "" {
		im, d, err := openDisk(o.disk)
		if err != nil {
			return err
		}
		defer im.Close()
		v, _, err := d.Resolve("/")
		if err != nil {
			return err
		}
		opts.Disk = &inject.DiskView{FS: v.FS, Mount: o.diskMount}
	}
	var guestJ string
	opts.Journal, guestJ = injectJournals(o)
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	ep, err := resolveGuest(ctx, o.guest)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeEndpoint(ep)) }()
	if kind == "recover" {
		rec, err := inject.RecoverEndpoint(ctx, ep, opts.Journal, guestJ)
		if rec != nil {
			writeRecovered(out, o.format, rec)
		}
		return err
	}
	var qopts []qemu.Option
	if guestJ != "" {
		qopts = append(qopts, qemu.WithJournal(guestJ))
	}
	if o.hardware {
		qopts = append(qopts, qemu.WithHardwareBreakpoints())
	}
	g, err := qemu.OpenEndpoint(ctx, ep, qopts...)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.Close(context.WithoutCancel(ctx))) }()
	if err := g.Pause(ctx); err != nil {
		return err
	}
	if opts.CPUs, err = g.CPUs(ctx); err != nil {
		return err
	}
	k, err := linux.Discover(ctx, g, linux.WithCPUs(opts.CPUs))
	if err != nil {
		return fmt.Errorf("%s: %w", o.guest, budgetHint(err))
	}
	res, rerr := inject.Run(ctx, g, inject.Controller(g), k, op, opts)
	if res != nil {
		injectSummary(errOut, res)
		if rerr == nil {
			if werr := writeResult(out, o.format, res); werr != nil {
				return werr
			}
		}
	}
	if rerr != nil {
		return rerr
	}
	if res.Findings() {
		return errFindings
	}
	return nil
}

// injectSummary says on stderr which dummy ran which calls and what each
// protection phase concluded.
func injectSummary(w io.Writer, r *inject.Result) {
	if r.Dummy != nil {
		fmt.Fprintf(w, "inject: dummy pid %d (%s, uid %d, %s), %d calls, %d steps, %d hand-offs, buffer %d bytes, guest paused %d ms, restored %v\n",
			r.Dummy.PID, printable(r.Dummy.Comm), r.Dummy.UID, r.Dummy.Gadget, len(r.Calls), r.Steps, r.Handoffs, r.BufferBytes, r.PausedMS, r.Restored)
	}
	for _, v := range r.Verdicts {
		fmt.Fprintf(w, "inject: %s: %s\n", v.Phase, v.Status)
		for _, x := range v.Reasons {
			fmt.Fprintf(w, "inject:   %s\n", printable(x))
		}
	}
}

func writeResult(out io.Writer, format string, r *inject.Result) error {
	if format == output.JSON {
		e := json.NewEncoder(out)
		e.SetIndent("", "  ")
		return e.Encode(r)
	}
	tw := tabwriter.NewWriter(out, 0, 8, 1, ' ', 0)
	switch r.Op {
	case "ls":
		for _, e := range r.Entries {
			if e.Stat == nil {
				if e.Name != "." && e.Name != ".." {
					fmt.Fprintln(tw, printable(e.Name))
				}
				continue
			}
			s := e.Stat
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\n", s.ModeString(), s.Nlink, s.UID, s.GID, s.Size, s.Mtime.Format("2006-01-02 15:04:05"), printable(e.Name))
		}
	case "stat":
		s := r.Stat
		fmt.Fprintf(tw, "path\t%s\ninode\t%d\ndevice\t%#x\nmode\t%s (%#o)\nlinks\t%d\nuid\t%d\ngid\t%d\nsize\t%d\nblocks\t%d\natime\t%s\nmtime\t%s\nctime\t%s\n",
			printable(r.Target), s.Ino, s.Dev, s.ModeString(), s.Mode, s.Nlink, s.UID, s.GID, s.Size, s.Blocks,
			s.Atime.Format(time.RFC3339Nano), s.Mtime.Format(time.RFC3339Nano), s.Ctime.Format(time.RFC3339Nano))
	case "cat":
		_, err := out.Write(r.Data)
		return err
	case "ps":
		fmt.Fprintln(tw, "PID\tPPID\tUID\tSTAT\tCOMMAND\tARGS")
		for _, p := range r.Procs {
			fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%s\n", p.PID, p.PPID, p.UID, p.State, printable(p.Comm), printable(p.Args))
		}
	case "netstat":
		fmt.Fprintln(tw, "Proto\tLocal Address\tForeign Address\tState\tInode\tPath")
		for _, s := range r.Sockets {
			if s.Proto == "unix" {
				fmt.Fprintf(tw, "unix\t\t\t%s\t%d\t%s\n", s.State, s.Inode, printable(s.UnixPth))
				continue
			}
			f := strings.Fields(inject.NetstatLine(s))
			for len(f) < 4 {
				f = append(f, "")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t\n", f[0], f[1], f[2], f[3], s.Inode)
		}
	case "kill":
		fmt.Fprintf(tw, "signal %d sent to pid %d\n", r.Killed.Signal, r.Killed.PID)
	}
	return tw.Flush()
}

func writeRecovered(out io.Writer, format string, r *inject.GuestRecovered) {
	if format == output.JSON {
		e := json.NewEncoder(out)
		e.SetIndent("", "  ")
		e.Encode(r)
		return
	}
	i := r.Inject
	switch {
	case !i.Left:
		fmt.Fprintf(out, "no dummy left altered (journal %s)\n", i.Journal)
	case i.Stale:
		fmt.Fprintf(out, "the journal's dummy (pid %d) is gone: nothing of it to restore\n", i.Dummy)
	default:
		fmt.Fprintf(out, "dummy pid %d restored (call in flight: %q, unmapped %v, signal mask %v)\n", i.Dummy, i.Call, i.Unmapped, i.MaskRestored)
	}
	if g := r.Guest; g != nil {
		fmt.Fprintf(out, "guest: journal %s left %v, %d traps removed, resumed %v\n", g.Journal, g.Left, g.Removed, g.Resumed)
	}
}
