package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/internal/output"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/watch"
	"github.com/vmscope/vmscope/watch/denyctl"
)

// watchOpts are the flags of vmscope watch.
type watchOpts struct {
	guest     string
	pathsFrom string
	events    string
	mode      string
	policy    string
	duration  time.Duration
	format    string
	method    string
}

func newWatchCmd() *cobra.Command {
	var o watchOpts
	c := &cobra.Command{
		Use:   "watch --guest SPEC PATH...",
		Short: "Watch critical files of a running guest: only their kernel objects are trapped; each access is one NDJSON line",
		Long: "watch resolves each PATH in the guest's dentry cache, traps the fields of its inode and dentry " +
			"(lock, size, mode and owner, link count, state, name and parent) with watchpoints, and reports each " +
			"access (one system call) with its kind, the task (pid, tgid, comm, uid, euid, exe) and the kernel " +
			"function and VFS entry it came through. A path not cached is pending until a lookup in its directory. " +
			"With --policy, an access by a forbidden user is an alert and the exit status is 1. Every exit " +
			"(the end of --duration, SIGINT, an error) removes all watches and leaves the guest running; after a " +
			"SIGKILL, `vmscope guest release` does.",
		RunE: func(c *cobra.Command, args []string) error {
			return runWatch(c.Context(), o, args, c.OutOrStdout(), c.ErrOrStderr())
		},
	}
	f := c.Flags()
	f.StringVar(&o.guest, "guest", "", guestFlagHelp)
	f.StringVar(&o.pathsFrom, "paths-from", "", "a file of paths to watch, one a line (# comments)")
	f.StringVar(&o.events, "events", "", "report only these kinds: "+strings.Join(watch.Kinds, ","))
	f.StringVar(&o.mode, "mode", "alert", "alert: report the accesses the policy forbids; deny: also make the guest's permission check fail for them (open, truncate: EACCES); what deny cannot stop is reported as deny_unavailable")
	f.StringVar(&o.policy, "policy", "", "policy file: lines `deny PATH uid=N[,N...]` (an access to PATH by one of those uids or euids breaks it)")
	f.DurationVar(&o.duration, "duration", 0, "stop after this long (0: until SIGINT)")
	f.StringVar(&o.format, "format", output.NDJSON, "output format: ndjson or table")
	f.StringVar(&o.method, "method", "target", "target: trap the files' kernel objects; operation: the baseline bench/watch.sh measures (breakpoints on the VFS functions, filtered on the files; counts only, no events)")
	f.StringVar(&guestJournal, "journal", "", "the journal of what vmscope changed on the guest (default: $XDG_RUNTIME_DIR/vmscope/gdb-HOST_PORT.json, or /run/vmscope/…)")
	return c
}

// policyRule forbids accesses to a path by some users.
type policyRule struct {
	path string
	uids map[uint32]bool
}

// parsePolicy reads `deny PATH uid=N[,N...]` lines.
func parsePolicy(r io.Reader) ([]policyRule, error) {
	var rules []policyRule
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		if len(f) != 3 || f[0] != "deny" || !strings.HasPrefix(f[2], "uid=") {
			return nil, fmt.Errorf("policy line %d: %q: want `deny PATH uid=N[,N...]`", n, l)
		}
		r := policyRule{path: f[1], uids: map[uint32]bool{}}
		for _, s := range strings.Split(strings.TrimPrefix(f[2], "uid="), ",") {
			u, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("policy line %d: uid %q: %w", n, s, err)
			}
			r.uids[uint32(u)] = true
		}
		rules = append(rules, r)
	}
	return rules, sc.Err()
}

func breaks(rules []policyRule, ev watch.Event) bool {
	for _, r := range rules {
		if r.path == ev.Path && (r.uids[ev.UID] || r.uids[ev.EUID]) {
			return true
		}
	}
	return false
}

// runWatch attaches to the guest, discovers its kernel, watches the paths
// and writes one line per event until the duration ends or ctx does.
func runWatch(ctx context.Context, o watchOpts, args []string, out, errOut io.Writer) (err error) {
	if o.guest == "" {
		return usageError{errors.New("--guest is required")}
	}
	if err := checkFormat(o.format, output.NDJSON, output.Table); err != nil {
		return err
	}
	switch o.mode {
	case "alert":
	case "deny":
		if o.policy == "" {
			return usageError{errors.New("--mode deny needs --policy")}
		}
	default:
		return usageError{fmt.Errorf("--mode %q: want alert or deny", o.mode)}
	}
	if o.method != "target" && o.method != "operation" {
		return usageError{fmt.Errorf("--method %q: want target or operation", o.method)}
	}
	if o.method == "operation" && o.mode != "alert" {
		return usageError{errors.New("--method operation reports counts only: no --mode deny")}
	}
	paths := append([]string(nil), args...)
	if o.pathsFrom != "" {
		b, err := os.ReadFile(o.pathsFrom)
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				paths = append(paths, l)
			}
		}
	}
	if len(paths) == 0 {
		return usageError{errors.New("name at least one PATH (or --paths-from)")}
	}
	for _, p := range paths {
		if !strings.HasPrefix(p, "/") {
			return usageError{fmt.Errorf("path %q is not absolute", p)}
		}
	}
	var rules []policyRule
	if o.policy != "" {
		f, err := os.Open(o.policy)
		if err != nil {
			return err
		}
		rules, err = parsePolicy(f)
		f.Close()
		if err != nil {
			return usageError{err}
		}
	}
	var kinds map[string]bool
	if o.events != "" {
		kinds = map[string]bool{}
		for _, k := range strings.Split(o.events, ",") {
			ok := false
			for _, want := range watch.Kinds {
				ok = ok || k == want
			}
			if !ok {
				return usageError{fmt.Errorf("--events: unknown kind %q (want %s)", k, strings.Join(watch.Kinds, ","))}
			}
			kinds[k] = true
		}
	}

	g, err := qemu.Open(ctx, o.guest, journalOpts()...)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.Close(context.WithoutCancel(ctx))) }()
	if err := g.Pause(ctx); err != nil {
		return err
	}
	cpus, err := g.CPUs(ctx)
	if err != nil {
		return err
	}
	k, err := linux.Discover(ctx, g, linux.WithCPUs(cpus))
	if err != nil {
		return fmt.Errorf("%s: %w", o.guest, budgetHint(err))
	}
	wk, err := watch.NewKernel(k)
	if err != nil {
		return err
	}
	wopts := watch.Options{Kinds: kinds, Armed: func(n int) {
		fmt.Fprintf(errOut, "watch: %d traps armed\n", n)
	}}
	if o.mode == "deny" {
		wopts.Deny = &watch.Deny{Controller: denyctl.Controller(g), Forbid: func(p string, ti watch.TaskInfo) bool {
			return breaks(rules, watch.Event{Path: p, TaskInfo: ti})
		}}
	}
	x, err := watch.New(ctx, g, wk, paths, wopts)
	if err != nil {
		return err
	}
	if o.method == "target" && kvmGuest(ctx, g.Monitor()) {
		// the stub's watchpoints are the four debug registers: refuse a
		// plan that needs more, saying how many
		if err := x.CheckDebugRegisters(watch.KVMDebugRegisters); err != nil {
			return err
		}
	}
	for _, p := range paths {
		if t := x.Targets()[p]; t != nil {
			fmt.Fprintf(errOut, "watching %s (dev %d, inode %d)\n", printable(p), t.DevT, t.Ino)
		} else if pd := x.Pending()[p]; pd != nil {
			fmt.Fprintf(errOut, "pending %s (%s not cached)\n", printable(p), printable(pd.Missing))
		}
	}
	rctx := ctx
	if o.duration > 0 {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	if o.method == "operation" {
		var targets []*watch.Target
		for _, t := range x.Targets() {
			targets = append(targets, t)
		}
		st, err := watch.RunOperation(rctx, g, wk, targets, func() { fmt.Fprintln(errOut, "watch: operation breakpoints armed") })
		fmt.Fprintf(errOut, "watch (operation-based): %d stops, %d on the watched files\n", st.Stops, st.Matched)
		if err != nil {
			return err
		}
		return ctx.Err()
	}
	done := make(chan error, 1)
	go func() { done <- x.Run(rctx) }()
	broken := 0
	var werr error
	for ev := range x.Events() {
		denied := ev.Action == "deny"
		ev.Action = "log"
		if breaks(rules, ev) {
			broken++
			switch {
			case o.mode != "deny":
				ev.Action = "alert"
			case denied:
				ev.Action = "deny"
			default:
				// not through inode_permission (a descriptor opened
				// earlier, a mapping): deny mode cannot stop it
				ev.Action = "deny_unavailable"
			}
		}
		if werr != nil {
			continue // drain the queue: Run must not block
		}
		// one line per event, written as it comes (no buffering)
		if o.format == output.NDJSON {
			b, err := json.Marshal(ev)
			if err == nil {
				_, err = out.Write(append(b, '\n'))
			}
			werr = err
		} else {
			_, werr = fmt.Fprintf(out, "%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n", ev.Time.Format(time.RFC3339Nano), ev.Kind, printable(ev.Path),
				ev.PID, printable(ev.Comm), ev.UID, ev.VFSEntry, ev.Action)
		}
	}
	rerr := <-done
	st := x.Stats()
	fmt.Fprintf(errOut, "watch: %d events (%d access), %d stops, %d outside watched ranges, %d at string ops elsewhere, %d misreported, %d dropped, %d denied\n",
		st.Events, st.Access, st.Stops, st.Outside, st.StringOps, st.Misreported, st.Dropped, st.Denied)
	if err := errors.Join(rerr, werr); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if broken > 0 {
		fmt.Fprintf(errOut, "watch: the policy was broken %d times\n", broken)
		return errFindings
	}
	return nil
}

// kvmGuest reports whether the guest runs under KVM (QMP query-kvm), whose
// GDB stub has only the four x86 debug registers for watchpoints. Without
// a monitor, or with one that does not answer, it is not known to be KVM.
func kvmGuest(ctx context.Context, mon qemu.Monitor) bool {
	if mon == nil {
		return false
	}
	b, err := mon.Execute(ctx, "query-kvm", nil)
	if err != nil {
		return false
	}
	var r struct {
		Enabled bool `json:"enabled"`
	}
	return json.Unmarshal(b, &r) == nil && r.Enabled
}
