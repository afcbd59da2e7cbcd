package inject

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// Call is one injected system call as the result records it.
type Call struct {
	Name  string   `json:"name"`
	Args  []string `json:"args"`
	Ret   int64    `json:"ret"`
	Error string   `json:"error,omitempty"`
	// Steps is how many instructions were single-stepped (protect full);
	// Blocked says the call reached schedule(), Handoffs how many times:
	// each time it ran by a breakpoint until schedule() returned.
	// ResumedSteps are the steps after the first hand-off: the part of a
	// blocking call checked once it ran again.
	Steps        int  `json:"steps,omitempty"`
	Blocked      bool `json:"blocked,omitempty"`
	Handoffs     int  `json:"handoffs,omitempty"`
	ResumedSteps int  `json:"resumed_steps,omitempty"`
	// RepRuns is how many rep string instructions were run to their end
	// by a breakpoint instead of stepped one iteration at a time.
	RepRuns int `json:"rep_runs,omitempty"`
	// SpinWaits is how many times the dummy spun (pause instructions)
	// and the other vCPUs ran a moment to let go of what it waited for.
	SpinWaits int `json:"spin_waits,omitempty"`
}

// ErrAborted is an operation that a check stopped: the dummy was
// restored and the reason is in the error.
var ErrAborted = vmerr.New("inject: operation aborted", nil)

// ErrDummyGone is a dummy that exited, exec'd or changed address space
// while it was borrowed.
var ErrDummyGone = errors.New("inject: the dummy changed under the operation")

// Session is a dummy borrowed at a safe point: its registers saved, every
// signal blocked, a scratch mapping made. Calls run through Call; Close
// puts everything back and verifies it.
type Session struct {
	t   vmi.Tracer
	c   vmi.Controller
	kr  *kernel
	j   *journal
	o   *Options
	cpu int

	dummy  Candidate
	saved  vmi.CPU
	gadget vmi.VA

	scratch   vmi.VA
	scratchPA vmi.PA
	buf       vmi.VA // the mmap'd buffer; 0 before it is made
	bufLen    uint64
	onStack   bool // the buffer is scratch on the stack, not a mapping

	calls   []Call
	steps   int
	bufWant uint64 // the mapping's size (bufferFor)
	// mapLater: the mapping (of this size) is made only once the
	// operation needs it; until then the buffer is on the stack (cat
	// under full checks the file's size first)
	mapLater uint64
	checker  *pathChecker
	// broken is the error that left the dummy mid-call (an abort, a
	// failed step): no call runs until end() has brought it back to a
	// user-mode boundary.
	broken error
	// exited: the dummy's task was seen entering do_exit; nothing of it
	// is left to restore.
	exited bool
}

// The buffer the operations read into (and write paths to): a 256 KiB
// mapping; or, when every call is stepped (mmap populates, and so zeroes,
// each page, and munmap frees it, with the guest stepped one instruction
// at a time: some 25,000 steps for one page), 20 KiB for ls and cat (a
// 4 KiB path, then 16 KiB per getdents64 or read, so a call's fixed cost
// is paid once per 16 KiB), and for stat and a cat capped at 512 bytes
// 1 KiB of the dummy's stack below the red zone (saved and put back like
// the 16 scratch bytes; no mapping at all), else one page.
const (
	bufSize          = 256 << 10
	bufSizeStepped   = 20 << 10
	bufSizeStepSmall = vmi.PageBytes
	stackBuf         = 1 << 10
)

// bufferFor is the buffer's size for op at protection p (stackBuf: on
// the stack).
func bufferFor(op Op, p Protect) uint64 {
	switch {
	case p < ProtectFull:
		return bufSize
	case op.Kind == "stat", op.Kind == "cat" && op.MaxBytes > 0 && op.MaxBytes <= stackBuf/2:
		return stackBuf
	case op.Kind == "ls" && !op.Long, op.Kind == "cat":
		return bufSizeStepped
	}
	return bufSizeStepSmall
}

// failpoint calls the test hook of a protocol step.
func (s *Session) failpoint(step string) {
	if s.o.Failpoint != nil {
		s.o.Failpoint(step)
	}
}

// isDummy reports whether vCPU state c is the dummy in user mode: CS RPL
// 3, its page tables in CR3 (the PTI user bit and PCID masked), and the
// current task its task_struct.
func (s *Session) isDummy(c vmi.CPU) bool {
	if c.CS.Selector&3 != 3 {
		return false
	}
	if c.PageTableRoot()&^ptiUserBit != s.dummy.task.PGD&^ptiUserBit {
		return false
	}
	cur, err := s.kr.currentTask(c)
	return err == nil && cur == s.dummy.task.Addr
}

// runTo lets the guest run until the dummy reaches one of addrs in user
// mode. Hits of other address spaces or tasks (TCG breakpoints fire for
// every address space at that address) are stepped past. The guest is
// stopped when it returns; the breakpoints are removed.
func (s *Session) runTo(ctx context.Context, addrs ...vmi.VA) (vmi.CPU, error) {
	return s.runUntil(ctx, addrs, s.isDummy)
}

// runUntil lets the guest run until a breakpoint at one of addrs stops a
// vCPU whose state want accepts. A breakpoint on do_exit ends the wait
// early with ErrDummyGone when the dummy's task enters it (it exits, is
// killed, or another of its threads execs): without it a dummy gone
// midway would hold the operation until its timeout.
func (s *Session) runUntil(ctx context.Context, addrs []vmi.VA, want func(vmi.CPU) bool) (vmi.CPU, error) {
	var traps []vmi.Trap
	for _, a := range addrs {
		traps = append(traps, vmi.Breakpoint(a))
	}
	exit := s.kr.doExit
	if exit != 0 && !slices.Contains(addrs, exit) {
		traps = append(traps, vmi.Breakpoint(exit))
	}
	var got vmi.CPU
	found, exited := false, false
	err := vmi.Trace(ctx, s.t, traps, func(ctx context.Context, h vmi.Hit) (bool, error) {
		if len(h.Traps) == 0 {
			return true, nil
		}
		if exit != 0 && vmi.VA(h.Regs.RIP) == exit {
			if cur, err := s.kr.currentTask(h.Regs); err == nil && cur == s.dummy.task.Addr {
				exited = true
				s.cpu = max(h.Stop.CPU, 0)
				return false, nil
			}
			return true, nil
		}
		if !want(h.Regs) {
			return true, nil
		}
		got, found = h.Regs, true
		s.cpu = max(h.Stop.CPU, 0)
		return false, nil
	})
	var errs []error
	if err != nil {
		errs = append(errs, err)
		if perr := s.t.Pause(context.WithoutCancel(ctx)); perr != nil {
			errs = append(errs, perr)
		}
	}
	for _, tr := range traps {
		if rerr := s.t.Remove(context.WithoutCancel(ctx), tr); rerr != nil {
			errs = append(errs, rerr)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return got, err
	}
	if exited {
		s.exited = true
		return got, fmt.Errorf("%w: pid %d entered do_exit (it exited, was killed, or another of its threads exec'd)", ErrDummyGone, s.dummy.PID)
	}
	if !found {
		return got, fmt.Errorf("inject: the dummy never reached %v", addrs)
	}
	got.ID = s.cpu
	return got, nil
}

// begin takes the dummy at a safe point and saves its state: a
// breakpoint at the user RIP its pt_regs hold, then the journal, then
// the scratch bytes, every signal blocked, and the buffer mapped.
func (s *Session) begin(ctx context.Context) error {
	rip := vmi.VA(s.dummy.task.Regs.IP)
	s.failpoint("safepoint")
	regs, err := s.runTo(ctx, rip)
	if err != nil {
		return fmt.Errorf("inject: safe point of pid %d at %v: %w", s.dummy.PID, rip, err)
	}
	s.saved = regs
	// the task may have changed while it ran (exec, exit)
	now, err := s.kr.readTask(s.dummy.task.Addr)
	if err != nil || now.StartTime != s.dummy.task.StartTime || now.PGD != s.dummy.task.PGD {
		return fmt.Errorf("%w: pid %d", ErrDummyGone, s.dummy.PID)
	}
	if now.Pending != 0 || now.Shared != 0 {
		return fmt.Errorf("%w: pid %d has pending signals now", ErrAborted, s.dummy.PID)
	}
	s.dummy.task = now
	// scratch: 16 bytes below the red zone, inside the stack (and the
	// buffer after them when the operation's fits there)
	if regs.RSP < 1<<16 {
		return fmt.Errorf("%w: stack pointer %#x", ErrCorrupt, regs.RSP)
	}
	n := uint64(16)
	if s.bufWant == stackBuf {
		n += stackBuf
	}
	sc, p, err := s.placeScratch(regs.RSP, now.StartStack, n)
	if err != nil && s.bufWant == stackBuf {
		// no room on the stack: map the buffer now
		s.bufWant, n = max(bufSizeStepSmall, s.mapLater), 16
		s.mapLater = 0
		sc, p, err = s.placeScratch(regs.RSP, now.StartStack, n)
	}
	if err != nil {
		return err
	}
	s.scratch, s.scratchPA = sc, p.PA
	orig := make([]byte, n)
	if _, err := s.kr.K.Mem.ReadAt(orig, int64(p.PA)); err != nil {
		return err
	}
	fds, err := s.kr.openFDs(now.Addr)
	if err != nil {
		return err
	}
	s.failpoint("journal")
	if err := s.j.update(func(d *journalDoc) {
		d.Dummy, d.Task, d.StartTime, d.PGD = s.dummy.PID, uint64(now.Addr), now.StartTime, uint64(now.PGD)
		d.CPU, d.Regs, d.Gadget = s.cpu, regs, uint64(s.gadget)
		d.ScratchVA, d.ScratchPA, d.ScratchOrig, d.FDs = uint64(sc), uint64(p.PA), orig, fds
		d.RegsChanged, d.MaskBlocked = true, true
		// the mask to put back: task->blocked as vetted (the call's
		// answer is checked against it)
		d.MaskKnown, d.OldMask = true, now.Blocked
	}); err != nil {
		return err
	}
	// block every signal: the kernel leaves SIGKILL and SIGSTOP out
	s.failpoint("scratch")
	all := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0}
	if err := s.c.WritePhys(ctx, all, p.PA); err != nil {
		return err
	}
	if _, err := s.Call(ctx, sysRtSigprocmask, sigSetmask, uint64(sc), uint64(sc+8), 8); err != nil {
		return err
	}
	old := make([]byte, 8)
	if _, err := s.kr.K.Mem.ReadAt(old, int64(p.PA+8)); err != nil {
		return err
	}
	if got := leU64(old); got != s.j.doc.OldMask {
		return fmt.Errorf("%w: rt_sigprocmask gave the old mask %#x, task->blocked was %#x", ErrAborted, got, s.j.doc.OldMask)
	}
	// the buffer: on the stack after the 16 scratch bytes, or mapped
	if s.bufWant == stackBuf {
		s.buf, s.bufLen, s.onStack = sc+16, stackBuf, true
		return nil
	}
	return s.mapBuffer(ctx, s.bufWant)
}

// mapBuffer maps the buffer (size bytes, populated) with an injected
// mmap, journaled before and after, and makes it the one calls use.
func (s *Session) mapBuffer(ctx context.Context, size uint64) error {
	if err := s.j.update(func(d *journalDoc) { d.MapPending, d.MapLen = true, size }); err != nil {
		return err
	}
	addr, err := s.Call(ctx, sysMmap, 0, size, protRead|protWrite, mapPrivate|mapAnonymous|mapPopulate, ^uint64(0), 0)
	if err != nil {
		return err
	}
	if addr%vmi.PageBytes != 0 || addr >= 1<<47 {
		return fmt.Errorf("%w: mmap returned %#x", ErrResult, addr)
	}
	s.buf, s.bufLen, s.onStack = vmi.VA(addr), size, false
	return s.j.update(func(d *journalDoc) { d.MapPending, d.MapAddr, d.MapLen = false, addr, size })
}

// placeScratch places n bytes of scratch below the red zone under rsp,
// 16-aligned and inside one page (moved down below the page boundary
// they would cross), within 64 MiB under the stack start, on a present,
// writable user page.
func (s *Session) placeScratch(rsp uint64, stackStart vmi.VA, n uint64) (vmi.VA, pte, error) {
	sc := (rsp - 128 - n) &^ 15
	if end := sc + n - 1; sc/vmi.PageBytes != end/vmi.PageBytes {
		sc = (end&^(vmi.PageBytes-1) - n) &^ 15
	}
	if sc > uint64(stackStart) || uint64(stackStart)-sc > 64<<20 {
		return 0, pte{}, fmt.Errorf("%w: stack pointer %#x not below the stack start %#x", ErrCorrupt, rsp, uint64(stackStart))
	}
	p, err := translate(s.kr.K.Mem, s.dummy.task.PGD, s.kr.K.AS.LA57, vmi.VA(sc))
	if err != nil || !p.User || !p.Write {
		return 0, p, fmt.Errorf("inject: scratch at %#x below the red zone is not a present writable user page: %v", sc, err)
	}
	return vmi.VA(sc), p, nil
}

func leU64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// Call runs one system call in the dummy: the arguments in RDI, RSI,
// RDX, R10, R8, R9, RAX the number, RIP the gadget; it runs to gadget+2
// (stepped and checked with protect full) and returns RAX, or the errno
// as an Errno error.
func (s *Session) Call(ctx context.Context, nr uint64, args ...uint64) (uint64, error) {
	name, ok := allowed[nr]
	if !ok || len(args) > 6 {
		return 0, fmt.Errorf("inject: system call %d is not on the allow-list", nr)
	}
	if nr == sysKill && !s.o.AllowWrite {
		return 0, errors.New("inject: kill needs --allow-write")
	}
	if s.broken != nil {
		return 0, fmt.Errorf("inject: %s not run: the dummy is mid-call: %w", name, s.broken)
	}
	call := Call{Name: name}
	for _, a := range args {
		call.Args = append(call.Args, fmt.Sprintf("%#x", a))
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.j.doc.Call = name // written with the next change it goes with
	s.failpoint("call " + name)
	r := s.saved
	r.RAX = nr
	regs := []*uint64{&r.RDI, &r.RSI, &r.RDX, &r.R10, &r.R8, &r.R9}
	for i, a := range args {
		*regs[i] = a
	}
	r.RIP = uint64(s.gadget)
	// never half-written: a cancelled context must not leave some of the
	// call's registers set and the others not
	if err := s.c.SetRegs(context.WithoutCancel(ctx), s.cpu, r); err != nil {
		s.broken = err
		return 0, err
	}
	var out vmi.CPU
	var err error
	if s.checker != nil {
		out, err = s.checker.stepCall(ctx, s, &call)
	} else {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		out, err = s.runTo(cctx, s.gadget+2)
		cancel()
	}
	s.steps += call.Steps
	if err != nil {
		s.broken = err
		call.Error = err.Error()
		s.calls = append(s.calls, call)
		return 0, err
	}
	if out.RIP != uint64(s.gadget+2) || !s.isDummy(out) {
		return 0, fmt.Errorf("%w: after %s the vCPU is at %#x", ErrDummyGone, name, out.RIP)
	}
	call.Ret = int64(out.RAX)
	if e := errnoOf(out.RAX); e != nil {
		call.Error = e.Error()
		s.calls = append(s.calls, call)
		s.j.doc.Call = ""
		return 0, e
	}
	s.calls = append(s.calls, call)
	s.j.doc.Call = ""
	return out.RAX, nil
}

// callTimeout bounds one injected call run to its breakpoint: a dummy
// that exits or blocks for good ends the operation.
const callTimeout = time.Minute

// writeBuf writes p at offset off of the buffer, page by page through the
// dummy's page tables.
func (s *Session) writeBuf(ctx context.Context, off uint64, p []byte) error {
	if off+uint64(len(p)) > s.bufLen {
		return fmt.Errorf("inject: %d bytes at %d do not fit the buffer", len(p), off)
	}
	for len(p) > 0 {
		va := s.buf + vmi.VA(off)
		n := min(uint64(len(p)), vmi.PageBytes-uint64(va)%vmi.PageBytes)
		pt, err := translate(s.kr.K.Mem, s.dummy.task.PGD, s.kr.K.AS.LA57, va)
		if err != nil || !pt.Write || !pt.User {
			return fmt.Errorf("inject: buffer page %v: not a writable user page (%v)", va, err)
		}
		if err := s.c.WritePhys(ctx, p[:n], pt.PA); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// readBuf reads n bytes at offset off of the buffer.
func (s *Session) readBuf(off, n uint64) ([]byte, error) {
	if off+n > s.bufLen {
		return nil, fmt.Errorf("inject: %d bytes at %d are outside the buffer", n, off)
	}
	out := make([]byte, n)
	for done := uint64(0); done < n; {
		va := s.buf + vmi.VA(off+done)
		k := min(n-done, vmi.PageBytes-uint64(va)%vmi.PageBytes)
		pt, err := translate(s.kr.K.Mem, s.dummy.task.PGD, s.kr.K.AS.LA57, va)
		if err != nil {
			return nil, fmt.Errorf("inject: buffer page %v: %w", va, err)
		}
		if _, err := s.kr.K.Mem.ReadAt(out[done:done+k], int64(pt.PA)); err != nil {
			return nil, err
		}
		done += k
	}
	return out, nil
}

// putPath writes a NUL-terminated path at the start of the buffer.
func (s *Session) putPath(ctx context.Context, path string) (uint64, error) {
	if len(path) == 0 || uint64(len(path)) >= s.dataOff() {
		return 0, fmt.Errorf("inject: path of %d bytes (want 1..%d)", len(path), s.dataOff()-1)
	}
	for i := 0; i < len(path); i++ {
		if path[i] == 0 {
			return 0, errors.New("inject: path holds a NUL byte")
		}
	}
	if err := s.writeBuf(ctx, 0, append([]byte(path), 0)); err != nil {
		return 0, err
	}
	return uint64(s.buf), nil
}

// dataOff is where results go in the buffer: after the path (4 KiB, or
// half the buffer of one page).
func (s *Session) dataOff() uint64 {
	if s.bufLen <= vmi.PageBytes {
		return s.bufLen / 2
	}
	return 4096
}

// end restores the dummy: unmaps the buffer, puts the signal mask back
// (both as injected calls), then the scratch bytes and the registers, and
// reads everything back to compare it with what was saved.
func (s *Session) end(ctx context.Context) error {
	var errs []error
	d := &s.j.doc
	if !d.RegsChanged {
		return nil // nothing was changed yet
	}
	// registers are only put back at a user-mode boundary of the dummy:
	// a call cut short (a cancelled context, a killed vmscope) runs on to
	// its return first
	if now, err := s.kr.readTask(vmi.VA(d.Task)); s.exited || err != nil || !d.same(now) {
		return fmt.Errorf("%w: pid %d exited or exec'd: nothing of it is left to restore", ErrDummyGone, d.Dummy)
	}
	cur, err := s.t.Regs(ctx, s.cpu)
	if err != nil || !s.isDummy(cur) || (cur.RIP != uint64(s.gadget+2) && cur.RIP != d.Regs.RIP) {
		if _, err := s.runTo(ctx, s.gadget+2, vmi.VA(d.Regs.RIP)); err != nil {
			return fmt.Errorf("inject: the dummy did not come back to a safe point: %w", err)
		}
	}
	s.broken = nil
	if d.MapPending {
		// an mmap that did not return: its address is in RAX at the gadget
		if cur, err := s.t.Regs(ctx, s.cpu); err == nil && cur.RIP == uint64(s.gadget+2) && s.isDummy(cur) && errnoOf(cur.RAX) == nil && cur.RAX%vmi.PageBytes == 0 {
			s.buf, s.bufLen = vmi.VA(cur.RAX), d.MapLen
		}
	}
	// descriptors open now and not at the safe point: opened by inject
	if now, err := s.kr.openFDs(vmi.VA(d.Task)); err != nil {
		errs = append(errs, err)
	} else {
		for w, bits := range now {
			var was uint64
			if w < len(d.FDs) {
				was = d.FDs[w]
			}
			for b := 0; b < 64; b++ {
				if bits&^was&(1<<b) == 0 {
					continue
				}
				if _, err := s.Call(ctx, sysClose, uint64(64*w+b)); err != nil {
					errs = append(errs, fmt.Errorf("inject: closing descriptor %d: %w", 64*w+b, err))
				}
			}
		}
	}
	if s.buf != 0 && !s.onStack {
		if _, err := s.Call(ctx, sysMunmap, uint64(s.buf), s.bufLen); err != nil {
			errs = append(errs, fmt.Errorf("inject: munmap of the buffer: %w", err))
		} else {
			s.buf = 0
			errs = append(errs, s.j.update(func(d *journalDoc) { d.MapAddr, d.MapLen, d.MapPending = 0, 0, false }))
		}
	}
	if d.MaskBlocked && d.MaskKnown {
		var b [8]byte
		for i := range b {
			b[i] = byte(d.OldMask >> (8 * i))
		}
		if err := s.c.WritePhys(ctx, b[:], s.scratchPA+8); err != nil {
			errs = append(errs, err)
		} else if _, err := s.Call(ctx, sysRtSigprocmask, sigSetmask, uint64(s.scratch+8), 0, 8); err != nil {
			errs = append(errs, fmt.Errorf("inject: restoring the signal mask: %w", err))
		} else {
			errs = append(errs, s.j.update(func(d *journalDoc) { d.MaskBlocked = false }))
		}
	}
	if len(d.ScratchOrig) > 0 {
		errs = append(errs, s.c.WritePhys(ctx, d.ScratchOrig, vmi.PA(d.ScratchPA)))
	}
	if d.RegsChanged {
		errs = append(errs, s.c.SetRegs(ctx, s.cpu, d.Regs))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return s.verify(ctx)
}

// verify reads back the registers, the scratch bytes and the signal mask
// and compares them with the saved copies.
func (s *Session) verify(ctx context.Context) error {
	d := &s.j.doc
	cur, err := s.t.Regs(ctx, s.cpu)
	if err != nil {
		return err
	}
	want := d.Regs
	pairs := []struct {
		name string
		a, b uint64
	}{{"rax", cur.RAX, want.RAX}, {"rbx", cur.RBX, want.RBX}, {"rcx", cur.RCX, want.RCX}, {"rdx", cur.RDX, want.RDX},
		{"rsi", cur.RSI, want.RSI}, {"rdi", cur.RDI, want.RDI}, {"rbp", cur.RBP, want.RBP}, {"rsp", cur.RSP, want.RSP},
		{"r8", cur.R8, want.R8}, {"r9", cur.R9, want.R9}, {"r10", cur.R10, want.R10}, {"r11", cur.R11, want.R11},
		{"r12", cur.R12, want.R12}, {"r13", cur.R13, want.R13}, {"r14", cur.R14, want.R14}, {"r15", cur.R15, want.R15},
		{"rip", cur.RIP, want.RIP}, {"rflags", cur.RFLAGS, want.RFLAGS}}
	var errs []error
	for _, p := range pairs {
		if p.a != p.b {
			errs = append(errs, fmt.Errorf("inject: verify: %s is %#x, saved %#x", p.name, p.a, p.b))
		}
	}
	if len(d.ScratchOrig) > 0 {
		b := make([]byte, len(d.ScratchOrig))
		if _, err := s.kr.K.Mem.ReadAt(b, int64(d.ScratchPA)); err != nil {
			errs = append(errs, err)
		} else if string(b) != string(d.ScratchOrig) {
			errs = append(errs, fmt.Errorf("inject: verify: stack bytes at %#x differ: % x, saved % x", d.ScratchVA, b, d.ScratchOrig))
		}
	}
	if fds, err := s.kr.openFDs(vmi.VA(d.Task)); err != nil || !slices.Equal(fds, d.FDs) {
		errs = append(errs, fmt.Errorf("inject: verify: descriptor bitmap %x, saved %x (%v)", fds, d.FDs, err))
	}
	if d.MaskKnown {
		now, err := s.kr.readTask(vmi.VA(d.Task))
		if err != nil {
			errs = append(errs, err)
		} else if now.Blocked != d.OldMask {
			errs = append(errs, fmt.Errorf("inject: verify: signal mask %#x, saved %#x", now.Blocked, d.OldMask))
		}
	}
	return errors.Join(errs...)
}
