package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// newCfiCmd is `vmscope cfi`: page-level kernel control-flow integrity
// of a live guest (learn a model, monitor against it, show a model).
func newCfiCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "cfi",
		Short: "Page-level kernel control-flow integrity: learn, monitor, show",
		Long: "cfi follows kernel execution by the code pages it runs on. learn records which kernel code pages execute " +
			"(core text as offsets from _stext, module text as (module, offset), so the model survives a reboot with another " +
			"KASLR slide) and the transitions between them; monitor reports kernel-mode execution on a page outside the " +
			"model (alert) or outside every known code region (critical). Sources: plugin (QEMU TCG plugin of " +
			"testdata/cfi-plugin, every transition), sample (interrupts through the GDB stub at --rate, unwinds the kernel " +
			"stack), step (single-steps windows from --step-entry to its return), vmi (page execute traps in EPT/NPT through " +
			"LibVMI, re-armed as execution moves: --guest libvmi:DOMAIN on Xen or KVMi, a build with -tags libvmi; " +
			"the QEMU stub refuses it). The guest is left running with no trap " +
			"on every exit path.",
	}
	c.PersistentFlags().StringVar(&guestJournal, "journal", "", "the journal of what vmscope changed on the guest")
	c.AddCommand(newCfiLearnCmd(), newCfiMonitorCmd(), newCfiShowCmd())
	return c
}

// cfiSourceFlags choose and tune the execution source.
type cfiSourceFlags struct {
	spec      string
	source    string
	duration  time.Duration
	rate      float64
	socket    string
	entry     string
	windows   int
	maxSteps  int
	maxFrames int
}

func (f *cfiSourceFlags) add(c *cobra.Command, defDuration time.Duration) {
	c.Flags().StringVar(&f.spec, "guest", "", guestFlagHelp)
	c.Flags().StringVar(&f.source, "source", "sample", "sample, step, plugin or vmi (vmi: page execute traps through LibVMI on Xen or KVMi; --guest libvmi:DOMAIN, needs a build with -tags libvmi)")
	c.Flags().DurationVar(&f.duration, "duration", defDuration, "how long to run (0: until SIGINT/SIGTERM)")
	c.Flags().Float64Var(&f.rate, "rate", 100, "samples per second (--source sample)")
	c.Flags().StringVar(&f.socket, "plugin-socket", "", "the unix socket of QEMU's cfi-plugin (-plugin cfi-plugin.so,sock=PATH; --source plugin)")
	c.Flags().StringVar(&f.entry, "step-entry", "__x64_sys_getdents64", "the kernel function whose calls are stepped (--source step)")
	c.Flags().IntVar(&f.windows, "step-windows", 0, "windows to step (0: until --duration or SIGINT)")
	c.Flags().IntVar(&f.maxSteps, "step-max", 20000, "instructions per window (--source step)")
	c.Flags().IntVar(&f.maxFrames, "frames", 16, "return addresses unwound per sample (--source sample)")
}

// cfiSession is an attached guest, its kernel and regions, and a source.
type cfiSession struct {
	src     *memSource                  // nil for a libvmi: guest
	closer  func(context.Context) error // closes a libvmi: guest
	kernel  *linux.Kernel
	regions *cfi.Regions
	source  cfi.Source
}

// openCfi attaches to the guest, finds its kernel and code regions, and
// builds the source. The caller closes it (s.close: the guest is left as
// found).
func openCfi(ctx context.Context, f *cfiSourceFlags, replay bool) (*cfiSession, error) {
	if f.spec == "" {
		return nil, usageError{errors.New("--guest is required")}
	}
	switch f.source {
	case "sample", "step", "vmi":
	case "plugin":
		if f.socket == "" {
			return nil, usageError{errors.New("--source plugin needs --plugin-socket")}
		}
	default:
		return nil, usageError{fmt.Errorf("--source %q: want sample, step, plugin or vmi", f.source)}
	}
	if name, ok := strings.CutPrefix(f.spec, libvmiSpec); ok {
		if f.source != "vmi" {
			return nil, usageError{fmt.Errorf("--guest %s…: only with --source vmi", libvmiSpec)}
		}
		return openLibVMICfi(ctx, name)
	}
	src, err := openMemory(ctx, memTarget{Guest: f.spec, Journal: guestJournal})
	if err != nil {
		return nil, err
	}
	s := &cfiSession{src: src}
	fail := func(err error) (*cfiSession, error) { return nil, errors.Join(err, src.Close(ctx)) }
	if s.kernel, err = linux.Discover(ctx, src.guest, linux.WithCPUs(src.cpus)); err != nil {
		return fail(err)
	}
	if s.regions, err = cfi.LoadRegions(ctx, s.kernel); err != nil {
		return fail(err)
	}
	switch f.source {
	case "plugin":
		s.source = &cfi.PluginSource{Socket: f.socket, Replay: replay}
	case "sample":
		s.source = &cfi.SampleSource{Guest: src.guest, AS: s.kernel.AS, Regions: s.regions, Rate: f.rate, MaxFrames: f.maxFrames}
	case "step":
		entry, ok := s.kernel.Symbols.Addr(f.entry)
		if !ok {
			return fail(usageError{fmt.Errorf("--step-entry %q: no such kernel symbol", f.entry)})
		}
		s.source = &cfi.StepSource{Guest: src.guest, AS: s.kernel.AS, Entry: entry, MaxSteps: f.maxSteps, Windows: f.windows}
	case "vmi":
		// The QEMU stub traps one address, not a page: the source says so
		// (cfi.ErrNeedsPageTraps) and leaves the guest as found.
		s.source = &cfi.VMISource{Tracer: src.guest, Regions: s.regions}
	}
	return s, nil
}

// libvmiSpec prefixes a LibVMI domain name in --guest (--source vmi).
const libvmiSpec = "libvmi:"

// close leaves the guest as found.
func (s *cfiSession) close(ctx context.Context) error {
	if s.closer != nil {
		return s.closer(context.WithoutCancel(ctx))
	}
	return s.src.Close(ctx)
}

func (s *cfiSession) refresh(ctx context.Context) (*cfi.Regions, error) {
	return s.regions.ReloadModules(ctx, s.kernel)
}

// withDuration bounds ctx by d (0: unbounded).
func withDuration(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

func newCfiLearnCmd() *cobra.Command {
	var f cfiSourceFlags
	var out string
	var sinceBoot bool
	c := &cobra.Command{
		Use:   "learn --guest G --out MODEL [--duration D] [--source sample|step|plugin]",
		Short: "Learn the kernel code pages a live guest executes and their transitions",
		Args:  rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCfiLearn(cmd.Context(), &f, out, sinceBoot, cmd.OutOrStdout())
		},
	}
	f.add(c, 10*time.Minute)
	c.Flags().StringVar(&out, "out", "", "the model file to write")
	c.Flags().BoolVar(&sinceBoot, "since-boot", false, "--source plugin: also take every transition since QEMU started")
	return c
}

func runCfiLearn(ctx context.Context, f *cfiSourceFlags, out string, sinceBoot bool, w io.Writer) (err error) {
	if out == "" {
		return usageError{errors.New("--out is required")}
	}
	s, err := openCfi(ctx, f, sinceBoot)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.close(ctx)) }()
	lctx, cancel := withDuration(ctx, f.duration)
	defer cancel()
	m, st, err := cfi.Learn(lctx, s.source, s.regions, s.refresh)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b, err := m.Marshal()
	if err != nil {
		return err
	}
	if err := writeFileAtomic(out, b); err != nil {
		return err
	}
	fmt.Fprintf(w, "model: %s\n", out)
	if err := m.Summary().WriteText(w, printable); err != nil {
		return err
	}
	fmt.Fprintf(w, "events: %d, outside core and module text (not kept): %d\n", st.Events, st.Unknown)
	writeSourceStats(w, s.source)
	return nil
}

// writeSourceStats prints what a sampling or stepping source counted.
func writeSourceStats(w io.Writer, src cfi.Source) {
	switch x := src.(type) {
	case *cfi.SampleSource:
		st := x.Stats()
		fmt.Fprintf(w, "samples: %d (%d in kernel mode), return addresses: %d\n", st.Samples, st.Kernel, st.Frames)
		fmt.Fprintf(w, "probability of seeing a page that takes 1%% / 0.1%% / 0.01%% of kernel time: %.4f / %.4f / %.4f\n",
			st.SeenProbability(1e-2), st.SeenProbability(1e-3), st.SeenProbability(1e-4))
	case *cfi.StepSource:
		st := x.Stats()
		fmt.Fprintf(w, "windows: %d (%d cut at the step bound), steps: %d\n", st.Windows, st.Cut, st.Steps)
	case *cfi.VMISource:
		fmt.Fprintf(w, "transitions over the rate bound, not reported: %d\n", x.Dropped())
	}
}

func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".vmscope-model-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func newCfiMonitorCmd() *cobra.Command {
	var f cfiSourceFlags
	var model, format string
	var edges bool
	c := &cobra.Command{
		Use:   "monitor --guest G --model MODEL [--source sample|step|plugin] [--format text|ndjson]",
		Short: "Alert on kernel execution outside a learned model; exit 1 if any",
		Args:  rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCfiMonitor(cmd.Context(), &f, model, format, edges, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f.add(c, 0)
	c.Flags().StringVar(&model, "model", "", "the model cfi learn wrote")
	c.Flags().StringVar(&format, "format", "text", "text or ndjson (one alert per line)")
	c.Flags().BoolVar(&edges, "edges", false, "also alert on page transitions outside Model 2")
	return c
}

func readModel(path string) (*cfi.Model, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	m, err := cfi.ParseModel(fh)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

func runCfiMonitor(ctx context.Context, f *cfiSourceFlags, model, format string, edges bool, w, errOut io.Writer) (err error) {
	if err := checkFormat(format, "text", "ndjson"); err != nil {
		return err
	}
	if model == "" {
		return usageError{errors.New("--model is required")}
	}
	m, err := readModel(model)
	if err != nil {
		return err
	}
	s, err := openCfi(ctx, f, false)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.close(ctx)) }()
	if err := m.Build.Check(s.regions.Build); err != nil {
		return err
	}
	mctx, cancel := withDuration(ctx, f.duration)
	defer cancel()
	enc := json.NewEncoder(w)
	st, err := cfi.Monitor(mctx, s.source, m, s.regions, cfi.MonitorOptions{Edges: edges, Refresh: s.refresh, Trampoline: s.trampolines(ctx, errOut)}, func(a cfi.Alert) error {
		if format == "ndjson" {
			return enc.Encode(a)
		}
		sym := ""
		if a.Symbol != "" {
			sym = fmt.Sprintf(" %s+%#x", printable(a.Symbol), a.Offset)
		}
		_, err := fmt.Fprintf(w, "%s %s %s%s (%s): %s\n", a.Severity, a.Kind, a.Address, sym, printable(a.Owner), printable(a.Evidence))
		return err
	})
	if err != nil {
		return err
	}
	if format == "text" {
		fmt.Fprintf(w, "events: %d, alerts: %d\n", st.Events, st.Alerts)
		writeSourceStats(w, s.source)
	}
	if st.Alerts > 0 {
		return errFindings
	}
	return nil
}

func newCfiShowCmd() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "show MODEL",
		Short: "Print a model's kernel build, pages, edges and coverage",
		Args:  rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format, "text", "json"); err != nil {
				return err
			}
			m, err := readModel(args[0])
			if err != nil {
				return err
			}
			s := m.Summary()
			if format == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			return s.WriteText(cmd.OutOrStdout(), printable)
		},
	}
	c.Flags().StringVar(&format, "format", "text", "text or json")
	return c
}

// trampolines names the code regions the kernel made on its own (ftrace
// and BPF trampolines, kprobe slots, the real-mode trampoline) from the
// static checks' kernel map, read once at the start: execution there is
// an alert, not a critical one. Without a map (its walk failed: said on
// errOut) every page outside the known text stays critical.
func (s *cfiSession) trampolines(ctx context.Context, errOut io.Writer) func(vmi.VA) string {
	km, err := cfi.NewKernelMap(ctx, s.kernel)
	if err != nil {
		fmt.Fprintf(errOut, "vmscope: cfi: no trampoline map: %v\n", err)
		return nil
	}
	return func(va vmi.VA) string {
		r, ok := km.Region(va)
		if !ok || r.Kind == cfi.RegionCore || r.Kind == cfi.RegionModule {
			return ""
		}
		return r.Kind + " " + r.Name
	}
}
