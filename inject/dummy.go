package inject

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// Candidate is a process considered as the dummy, with why it was
// rejected ("" when it qualifies).
type Candidate struct {
	PID      int    `json:"pid"`
	Comm     string `json:"comm"`
	UID      uint32 `json:"uid"`
	EUID     uint32 `json:"euid"`
	Threads  int    `json:"threads"`
	Switches uint64 `json:"switches"` // context switches seen in the vetting window
	Gadget   string `json:"gadget,omitempty"`
	Rejected string `json:"rejected,omitempty"`

	task   taskState
	gadget vmi.VA
}

// ErrNoDummy is a guest with no process fit to be the dummy (or a
// --dummy that is not fit): each candidate's reason is in the error.
var ErrNoDummy = vmerr.New("inject: no process fit to be the dummy", nil)

// DummyError is ErrNoDummy with the candidates and their reasons.
type DummyError struct {
	Candidates []Candidate
}

func (e *DummyError) Error() string {
	var b bytes.Buffer
	b.WriteString(ErrNoDummy.Error())
	for i, c := range e.Candidates {
		if i == 12 {
			fmt.Fprintf(&b, "; … %d more", len(e.Candidates)-i)
			break
		}
		fmt.Fprintf(&b, "; pid %d (%s): %s", c.PID, c.Comm, c.Rejected)
	}
	return b.String()
}

func (e *DummyError) Unwrap() error { return ErrNoDummy }

// maxVdsoPages bounds the vDSO gadget search; maxTextPages the search
// around the process's user RIP.
const (
	maxVdsoPages = 4
	maxTextPages = 16
)

// findGadget looks for a `syscall` instruction (0f 05) the task can
// execute: in its vDSO first (mm->context.vdso), then in the pages of its
// own text around its user RIP. Each page must translate with user and
// execute rights in the task's page tables.
func (kr *kernel) findGadget(t taskState) (vmi.VA, string, error) {
	try := func(start vmi.VA, pages int, where string) (vmi.VA, string, bool) {
		prev := byte(0)
		for i := 0; i < pages; i++ {
			pa := start + vmi.VA(i)*vmi.PageBytes
			p, err := translate(kr.K.Mem, t.PGD, kr.K.AS.LA57, pa)
			if err != nil || !p.User || !p.Execute {
				prev = 0
				continue
			}
			b := make([]byte, vmi.PageBytes)
			if _, err := kr.K.Mem.ReadAt(b, int64(p.PA&^0xfff)); err != nil {
				prev = 0
				continue
			}
			if prev == 0x0f && b[0] == 0x05 && i > 0 {
				return pa - 1, where, true
			}
			if j := bytes.Index(b, []byte{0x0f, 0x05}); j >= 0 {
				return pa + vmi.VA(j), where, true
			}
			prev = b[len(b)-1]
		}
		return 0, "", false
	}
	if t.Vdso != 0 && t.Vdso%vmi.PageBytes == 0 {
		if g, w, ok := try(t.Vdso, maxVdsoPages, "vdso"); ok {
			return g, w, nil
		}
	}
	if t.Regs.IP != 0 && t.Regs.IP < 1<<47 {
		start := vmi.VA(t.Regs.IP&^0xfff) - maxTextPages/2*vmi.PageBytes
		if uint64(start) > t.Regs.IP {
			start = 0
		}
		if g, w, ok := try(start, maxTextPages, "text"); ok {
			return g, w, nil
		}
	}
	return 0, "", errors.New("no syscall instruction in its vDSO or text")
}

// vet checks a task against every rule for a dummy except the switch
// counters (which need a window): it returns why the task cannot be one.
func (kr *kernel) vet(t taskState, caps uint64) string {
	switch {
	case t.MM == 0 || t.Flags&pfKthread != 0:
		return "kernel thread (no mm)"
	case t.PID == 1:
		return "pid 1 (init)"
	case t.Flags&pfExiting != 0 || t.ExitState != 0:
		return "exiting"
	case t.Ptrace != 0 || t.State&taskTraced != 0:
		return "traced"
	case t.State&taskStopped != 0:
		return "stopped"
	case t.State&taskFrozen != 0 || t.Flags&pfFrozen != 0:
		return "frozen"
	case t.Seccomp != 0:
		return fmt.Sprintf("seccomp mode %d (a filter or strict mode could kill it)", t.Seccomp)
	case t.Pending != 0 || t.Shared != 0:
		return fmt.Sprintf("pending signals %#x/%#x", t.Pending, t.Shared)
	case t.RegsErr != nil:
		return "no user frame: " + t.RegsErr.Error()
	case t.Regs.CS != userCS:
		return fmt.Sprintf("not a 64-bit process (user CS %#x)", t.Regs.CS)
	case t.PGD == 0:
		return "no page tables"
	case t.CapEff&caps != caps:
		return fmt.Sprintf("lacks capabilities %#x (has %#x)", caps, t.CapEff)
	}
	return ""
}

// selectDummy vets every user process (or only pid when it is not 0),
// watches their switch counters for window with the guest running, and
// returns the best candidate, single-threaded first, then the one that
// switched most, then the lowest pid; and every candidate with its
// reason.
func (s *Session) selectDummy(ctx context.Context, pid int, caps uint64, window time.Duration) (*Candidate, []Candidate, error) {
	tasks, _, err := s.kr.K.Tasks(ctx, false)
	if err != nil {
		return nil, nil, err
	}
	var cands []Candidate
	for _, t := range tasks {
		if pid != 0 && t.PID != pid {
			continue
		}
		ts, err := s.kr.readTask(vmi.VA(t.Addr))
		c := Candidate{PID: ts.PID, Comm: ts.Comm, UID: ts.UID, EUID: ts.EUID, Threads: ts.Threads, task: ts}
		if err != nil {
			c.Rejected = "unreadable: " + err.Error()
		} else {
			c.Rejected = s.kr.vet(ts, caps)
		}
		if c.Rejected == "" {
			g, where, err := s.kr.findGadget(ts)
			if err != nil {
				c.Rejected = err.Error()
			} else {
				c.gadget, c.Gadget = g, fmt.Sprintf("%s %#x", where, uint64(g))
			}
		}
		cands = append(cands, c)
	}
	if pid != 0 && len(cands) == 0 {
		return nil, nil, &DummyError{Candidates: []Candidate{{PID: pid, Rejected: "no such process"}}}
	}
	// the switch counters must move while the guest runs: it runs in
	// short slices until the asked-for pid moved (or, picking one, a
	// single-threaded candidate did), at most window
	waited, err := s.watchSwitches(ctx, cands, pid, window)
	if err != nil {
		return nil, cands, err
	}
	var ok []*Candidate
	for i := range cands {
		c := &cands[i]
		if c.Rejected != "" {
			continue
		}
		now, err := s.kr.readTask(c.task.Addr)
		switch {
		case err != nil || now.StartTime != c.task.StartTime || now.PID != c.PID:
			c.Rejected = "exited while vetted"
			continue
		case now.Switches == c.task.Switches:
			c.Rejected = fmt.Sprintf("does not return to user mode (no context switch in %v)", waited.Round(time.Millisecond))
			continue
		}
		if r := s.kr.vet(now, caps); r != "" {
			c.Rejected = r
			continue
		}
		c.Switches = now.Switches - c.task.Switches
		c.task = now
		ok = append(ok, c)
	}
	rank(ok)
	if len(ok) == 0 {
		return nil, cands, &DummyError{Candidates: cands}
	}
	return ok[0], cands, nil
}

// rank orders qualified candidates: single-threaded first (the other
// threads of a multi-threaded dummy run on while it is borrowed), then
// the one that switched most, then the lowest pid.
func rank(ok []*Candidate) {
	sort.SliceStable(ok, func(i, j int) bool {
		a, b := ok[i], ok[j]
		if (a.Threads <= 1) != (b.Threads <= 1) {
			return a.Threads <= 1
		}
		if a.Switches != b.Switches {
			return a.Switches > b.Switches
		}
		return a.PID < b.PID
	})
}

// watchSwitches lets the guest run in slices of 200 ms and stops early
// once the candidate asked for (pid) or, when picking, a single-threaded
// qualified candidate switched; it returns how long the guest ran.
func (s *Session) watchSwitches(ctx context.Context, cands []Candidate, pid int, window time.Duration) (time.Duration, error) {
	const slice = 200 * time.Millisecond
	var ran time.Duration
	for ran < window {
		d := min(slice, window-ran)
		if err := s.t.Resume(ctx); err != nil {
			return ran, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
		if err := s.t.Pause(context.WithoutCancel(ctx)); err != nil {
			return ran, err
		}
		if err := ctx.Err(); err != nil {
			return ran, err
		}
		ran += d
		for _, c := range cands {
			if c.Rejected != "" || (pid == 0 && c.Threads > 1) {
				continue
			}
			if now, err := s.kr.readTask(c.task.Addr); err == nil && now.Switches != c.task.Switches {
				return ran, nil
			}
		}
	}
	return ran, nil
}
