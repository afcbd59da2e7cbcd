package inject

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// Protect is how much of the kernel inject checks around an operation.
type Protect int

// The protection levels.
const (
	// ProtectOff checks nothing but the cross-view after the operation.
	ProtectOff Protect = iota
	// ProtectBefore runs the static integrity checks first and refuses
	// the operation on any finding.
	ProtectBefore
	// ProtectFull also single-steps every injected call and checks each
	// kernel page it runs against the model.
	ProtectFull
)

func (p Protect) String() string {
	return [...]string{"off", "before", "full"}[p]
}

// ParseProtect parses off, before or full.
func ParseProtect(s string) (Protect, error) {
	for p := ProtectOff; p <= ProtectFull; p++ {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("inject: protect %q: want off, before or full", s)
}

// ErrRefused is an operation refused before any change: the kernel's
// integrity checks found something (the reasons are in the error).
var ErrRefused = vmerr.New("inject: operation refused", nil)

// Options are the optional settings of Run.
type Options struct {
	// Dummy is the pid to borrow (still vetted); 0 picks one.
	Dummy   int
	Protect Protect
	// Journal is the undo journal's path (required).
	Journal string
	// Guest names the guest in the journal.
	Guest string
	// AllowWrite permits calls that change the guest (kill).
	AllowWrite bool
	// Model is the page-level model the stepped calls are checked
	// against (protect full); without it every kernel instruction must be
	// in core kernel text.
	Model *cfi.Model
	// CPUs are the vCPUs' registers for the static checks (IDT).
	CPUs []vmi.CPU
	// Disk is the independent view for the after-check of ls, stat, cat.
	Disk *DiskView
	// Window is how long the switch counters of candidates are watched
	// (2 s when zero).
	Window time.Duration
	// MaxSteps bounds the instructions stepped per call (1,000,000 when 0).
	MaxSteps int
	// Failpoint, when set, is called at each protocol step (tests kill
	// the process there).
	Failpoint func(step string)

	// noBefore skips the static checks under ProtectFull (tests of the
	// during phase alone).
	noBefore bool
	// onStep sees every stepped kernel instruction (tests learn a model
	// from it).
	onStep func(rip vmi.VA, call string, first bool)
}

// Verdict is what one protection phase concluded.
type Verdict struct {
	Phase   string   `json:"phase"`  // before, during, after
	Status  string   `json:"status"` // pass, fail, skipped
	Reasons []string `json:"reasons,omitempty"`
}

// Result is an operation's answer and how it was obtained.
type Result struct {
	Op       string      `json:"op"`
	Target   string      `json:"target,omitempty"`
	Protect  string      `json:"protect"`
	Dummy    *Candidate  `json:"dummy,omitempty"`
	Calls    []Call      `json:"calls"`
	Steps    int         `json:"steps"`
	Verdicts []Verdict   `json:"verdicts"`
	Entries  []Entry     `json:"entries,omitempty"`
	Stat     *Stat       `json:"stat,omitempty"`
	Data     []byte      `json:"-"`
	Size     int64       `json:"size,omitempty"`
	SHA256   string      `json:"sha256,omitempty"`
	Procs    []Proc      `json:"processes,omitempty"`
	Sockets  []Socket    `json:"sockets,omitempty"`
	Killed   *KillResult `json:"kill,omitempty"`
	// Restored: the dummy was put back and verified.
	Restored bool `json:"restored"`
	// PausedMS is how long the guest was stopped for the operation.
	PausedMS int64 `json:"paused_ms"`
	// Handoffs is how many times a stepped call reached schedule() and
	// ran by a breakpoint until it returned (protect full).
	Handoffs int `json:"handoffs,omitempty"`
	// BufferBytes is the size of the mapping the calls read into: with
	// protect full it bounds each getdents64 and read (see bufferFor).
	BufferBytes uint64 `json:"buffer_bytes,omitempty"`
}

// Findings reports whether an after-check disagreed (the kernel lies).
func (r *Result) Findings() bool {
	for _, v := range r.Verdicts {
		if v.Status == "fail" {
			return true
		}
	}
	return false
}

// Op is an operation: one of ls, stat, cat, ps, netstat, kill.
type Op struct {
	Kind     string
	Path     string
	Long     bool  // ls -l: stat every entry
	MaxBytes int64 // cat: the cap (16 MiB when 0)
	PID      int   // kill
	Signal   int   // kill
}

// caps are the capabilities an operation needs of the dummy.
func (op Op) caps() uint64 {
	switch op.Kind {
	case "kill":
		return 1 << capKill
	case "netstat":
		return 0
	}
	return 1<<capDACOverride | 1<<capDACReadSearch
}

// Run borrows a dummy process of the paused guest t, runs op through it,
// and restores it: every exit path (an error, a failed check, ctx
// cancelled by SIGINT or SIGTERM) puts the registers, stack bytes, signal
// mask and mappings back and verifies them; a process killed outright
// leaves the journal for Recover. t must be paused; it is paused again
// when Run returns.
func Run(ctx context.Context, t vmi.Tracer, c vmi.Controller, k *linux.Kernel, op Op, o Options) (res *Result, err error) {
	res = &Result{Op: op.Kind, Target: op.Path, Protect: o.Protect.String(), Calls: []Call{}, Verdicts: []Verdict{}}
	if o.Journal == "" {
		return res, errors.New("inject: no journal path")
	}
	if op.Kind == "kill" && !o.AllowWrite {
		return res, errors.New("inject: kill changes the guest: it needs --allow-write")
	}
	if o.Window == 0 {
		o.Window = 2 * time.Second
	}
	if o.MaxSteps == 0 {
		o.MaxSteps = 1_000_000
	}
	kr, err := newKernel(k)
	if err != nil {
		return res, err
	}
	// before: the static checks, with nothing changed yet
	if o.Protect >= ProtectBefore && !o.noBefore {
		v, err := checkBefore(ctx, k, o.CPUs)
		res.Verdicts = append(res.Verdicts, v)
		if err != nil {
			return res, err
		}
		if v.Status == "fail" {
			return res, fmt.Errorf("%w: %s", ErrRefused, joinReasons(v.Reasons))
		}
	}
	s := &Session{t: t, c: c, kr: kr, o: &o, bufWant: bufferFor(op, o.Protect)}
	if o.Protect == ProtectFull && op.Kind == "cat" && s.bufWant != stackBuf {
		// the size check runs on the stack; a refused file costs no mapping
		s.mapLater, s.bufWant = s.bufWant, stackBuf
	}
	if o.Protect == ProtectFull {
		if s.checker, err = newPathChecker(ctx, k, o.Model, o.MaxSteps); err != nil {
			return res, err
		}
		s.checker.onStep = o.onStep
	}
	j, err := openJournal(o.Journal, o.Guest)
	if err != nil {
		return res, err
	}
	s.j = j
	dummy, _, err := s.selectDummy(ctx, o.Dummy, op.caps(), o.Window)
	if err != nil {
		j.finish()
		return res, err
	}
	s.dummy, s.gadget = *dummy, dummy.gadget
	res.Dummy = &s.dummy
	start := time.Now()
	defer func() {
		res.Calls, res.Steps = s.calls, s.steps
		res.PausedMS = time.Since(start).Milliseconds()
	}()
	before := viewBefore(ctx, k, op, res) // memory view for the after-check, the guest paused
	pc := s.checker
	during := func(opErr error) {
		if pc != nil {
			res.Verdicts = append(res.Verdicts, pc.verdict(opErr))
			res.Handoffs = pc.blocked
		}
	}
	if err := s.begin(ctx); err != nil {
		err = s.rollback(ctx, res, err)
		during(err)
		return res, err
	}
	opErr := runOp(ctx, s, op, res)
	res.BufferBytes = s.bufLen
	// the restoring calls are stepped too: their findings join the
	// during verdict
	err = s.rollback(ctx, res, opErr)
	during(opErr)
	if err != nil {
		return res, err
	}
	// after: the cross-view, with the dummy restored
	res.Verdicts = append(res.Verdicts, crossView(ctx, k, op, res, o.Disk, before))
	return res, nil
}

// rollback restores the dummy after the operation (or its failure) and
// removes the journal once the restore is verified; a failed restore
// keeps it for Recover.
func (s *Session) rollback(ctx context.Context, res *Result, opErr error) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	s.failpoint("restore")
	if s.checker != nil {
		s.checker.restoring = true // stepped, but a finding does not abort them
	}
	if err := s.end(rctx); err != nil {
		if errors.Is(err, ErrDummyGone) {
			// the task is gone with everything borrowed from it
			return errors.Join(opErr, err, s.j.finish())
		}
		s.j.keep()
		return errors.Join(opErr, fmt.Errorf("inject: restoring the dummy (the journal %s stays for `vmscope inject recover`): %w", s.j.path, err))
	}
	res.Restored = true
	if err := s.j.finish(); err != nil {
		return errors.Join(opErr, err)
	}
	return opErr
}

func joinReasons(r []string) string {
	s := ""
	for i, x := range r {
		if i == 8 {
			s += fmt.Sprintf("; … %d more", len(r)-i)
			break
		}
		if i > 0 {
			s += "; "
		}
		s += x
	}
	return s
}
