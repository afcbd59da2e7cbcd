package inject

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// checkBefore runs the static integrity checks of package cfi (system-call
// dispatch, IDT, modules, executable pages, ftrace and kprobe hooks,
// kernel stacks, text, kallsyms): any finding refuses the operation.
func checkBefore(ctx context.Context, k *linux.Kernel, cpus []vmi.CPU) (Verdict, error) {
	v := Verdict{Phase: "before", Status: "pass"}
	rep, err := cfi.Check(ctx, k, cfi.WithCPUs(cpus))
	if err != nil {
		return v, fmt.Errorf("inject: integrity checks before the operation: %w", err)
	}
	for _, f := range rep.Findings {
		v.Status = "fail"
		v.Reasons = append(v.Reasons, f.String())
	}
	return v, nil
}

// pathChecker single-steps injected calls and checks each kernel
// instruction's page: it must be core kernel text (no module text, no
// ftrace trampoline, no page outside every region) and, with a model,
// a page and a transition the model holds.
type pathChecker struct {
	regions  *cfi.Regions
	model    *cfi.Model
	maxSteps int
	sched    map[vmi.VA]bool // schedule, __schedule: a blocking call
	pause    map[vmi.VA]bool // whether the instruction at an address is pause
	reasons  []string
	blocked  int
	// restoring: the calls that put the dummy back (close, munmap,
	// rt_sigprocmask) are stepped and checked too, but a finding is
	// reported without aborting them: the call runs on to its return,
	// since leaving the dummy half-restored is worse.
	restoring bool
	// onStep, when set, sees every kernel instruction stepped (tests
	// learn a model from it).
	// first is the call's first kernel instruction (no transition into
	// it is checked).
	onStep func(rip vmi.VA, call string, first bool)
}

func newPathChecker(ctx context.Context, k *linux.Kernel, m *cfi.Model, maxSteps int) (*pathChecker, error) {
	r, err := cfi.LoadRegions(ctx, k)
	if err != nil {
		return nil, err
	}
	if m != nil {
		if err := m.Build.Check(r.Build); err != nil {
			return nil, err
		}
	}
	pc := &pathChecker{regions: r, model: m, maxSteps: maxSteps, sched: map[vmi.VA]bool{}, pause: map[vmi.VA]bool{}}
	for _, n := range []string{"schedule", "__schedule", "preempt_schedule_common", "schedule_timeout"} {
		if a, ok := k.Symbols.Addr(n); ok {
			pc.sched[a] = true
		}
	}
	return pc, nil
}

// kernelHalf is the first address of the kernel's half on x86-64.
const kernelHalf = 0xffff800000000000

// repMin is the iterations left below which a rep string instruction is
// stepped on rather than run to its end.
const repMin = 8

// stepCall steps the call set up in the dummy from its gadget until it
// is back at gadget+2 in user mode. A call that reaches schedule() (it
// blocks, or yields at a cond_resched()) is handed to a breakpoint at
// the return address schedule() was called with, and stepping goes on
// from there once the dummy runs again: stepping with interrupts masked
// would never see it wake, and only schedule() and the tasks that run
// meanwhile go unobserved. A rep string instruction (TCG stops after
// each of its iterations) is run to its end by a breakpoint on the next
// instruction: it cannot leave its page, which is checked already.
func (pc *pathChecker) stepCall(ctx context.Context, s *Session, call *Call) (vmi.CPU, error) {
	var prev cfi.Page
	var prevRIP vmi.VA
	havePrev := false
	pauses := 0
	lastRIP := uint64(0)
	for {
		if call.Steps >= pc.maxSteps {
			return pc.abort(ctx, s, call, vmi.CPU{}, fmt.Sprintf("%s: more than %d instructions", call.Name, pc.maxSteps))
		}
		r, err := s.t.Step(ctx, s.cpu)
		if err != nil {
			return r, err
		}
		call.Steps++
		if call.Handoffs > 0 {
			call.ResumedSteps++
		}
		if r.RIP == lastRIP && r.RIP >= kernelHalf {
			if n := pc.repLen(s, vmi.VA(r.RIP)); n > 0 && r.RCX >= repMin {
				if r, err = s.runInKernel(ctx, vmi.VA(r.RIP)+vmi.VA(n), r.RSP); err != nil {
					return r, err
				}
				call.RepRuns++
			}
		}
		for pc.sched[vmi.VA(r.RIP)] {
			call.Blocked = true
			call.Handoffs++
			pc.blocked++
			ret, err := s.kr.u64(vmi.VA(r.RSP))
			if err != nil || ret < kernelHalf {
				return s.runTo(ctx, s.gadget+2) // no return address to come back to
			}
			if r, err = s.runInKernel(ctx, vmi.VA(ret), r.RSP+8); err != nil {
				return r, err
			}
		}
		if r.RIP >= kernelHalf && pc.isPause(s, vmi.VA(r.RIP)) {
			// a spin-wait on what another vCPU holds: it is stopped while
			// this one steps; every spinWait pauses it runs a moment,
			// the dummy's vCPU frozen
			pauses++
			if or, ok := s.t.(vmi.OthersRunner); ok && pauses%spinWait == 0 {
				n, err := or.RunOthers(ctx, s.cpu, othersSlice)
				if err != nil {
					return r, err
				}
				if n > 0 {
					call.SpinWaits++
				}
			}
		}
		lastRIP = r.RIP
		rip := vmi.VA(r.RIP)
		if r.RIP < kernelHalf {
			if rip == s.gadget+2 && s.isDummy(r) {
				return r, nil
			}
			return pc.abort(ctx, s, call, r, fmt.Sprintf("%s: user-mode instruction at %#x before the call returned", call.Name, r.RIP))
		}
		if pc.onStep != nil {
			pc.onStep(rip, call.Name, !havePrev)
		}
		p, ok := pc.regions.PageOf(rip)
		if !ok {
			return pc.abort(ctx, s, call, r, fmt.Sprintf("%s: kernel code at %#x is outside core and module text (a trampoline or injected code)", call.Name, r.RIP))
		}
		if p.Module != "" {
			name, off, _ := pc.regions.Symbolize(rip)
			return pc.abort(ctx, s, call, r, fmt.Sprintf("%s: module text on the call's path: %s+%#x of %s", call.Name, name, off, p.Module))
		}
		if pc.model != nil {
			if !pc.model.HasPage(p) {
				return pc.abort(ctx, s, call, r, fmt.Sprintf("%s: page %v (%#x%s) is not in the model", call.Name, p, r.RIP, pc.symbol(rip)))
			}
			if havePrev && prev != p && !pc.model.HasEdge(cfi.Edge{From: prev, To: p}) {
				return pc.abort(ctx, s, call, r, fmt.Sprintf("%s: transition %v->%v (%#x%s -> %#x%s) is not in the model",
					call.Name, prev, p, uint64(prevRIP), pc.symbol(prevRIP), r.RIP, pc.symbol(rip)))
			}
		}
		prev, prevRIP, havePrev = p, rip, true
	}
}

// spinWait is how many pause instructions (the cpu_relax() of kernel
// spin loops) the stepped dummy executes before the other vCPUs run for
// othersSlice: a holder on a stopped vCPU never lets go otherwise.
const (
	spinWait    = 8
	othersSlice = 2 * time.Millisecond
)

// isPause tells whether the instruction at rip is pause (f3 90); the
// answer is kept per address.
func (pc *pathChecker) isPause(s *Session, rip vmi.VA) bool {
	if v, ok := pc.pause[rip]; ok {
		return v
	}
	var b [2]byte
	_, err := s.kr.K.AS.ReadVirt(b[:], rip)
	v := err == nil && b[0] == 0xf3 && b[1] == 0x90
	if len(pc.pause) < 1<<16 {
		pc.pause[rip] = v
	}
	return v
}

// symbol is " name+off" for a kernel address the symbols cover, else "".
func (pc *pathChecker) symbol(va vmi.VA) string {
	if name, off, _ := pc.regions.Symbolize(va); name != "" {
		return fmt.Sprintf(" %s+%#x", name, off)
	}
	return ""
}

// runInKernel lets the guest run until the dummy's task reaches addr in
// kernel mode with stack pointer sp (its own frame: not an interrupt on
// another stack, not a nested call).
func (s *Session) runInKernel(ctx context.Context, addr vmi.VA, sp uint64) (vmi.CPU, error) {
	return s.runUntil(ctx, []vmi.VA{addr}, func(c vmi.CPU) bool {
		if c.CS.Selector&3 != 0 || c.RSP != sp {
			return false
		}
		cur, err := s.kr.currentTask(c)
		return err == nil && cur == s.dummy.task.Addr
	})
}

// repLen is the length of the instruction at rip when it is a rep (or
// repne) string instruction, else 0.
func (pc *pathChecker) repLen(s *Session, rip vmi.VA) int {
	var b [15]byte
	if _, err := s.kr.K.AS.ReadVirt(b[:], rip); err != nil {
		return 0
	}
	return repStringLen(b[:])
}

// repStringLen decodes b as one x86-64 instruction: its length when it
// is a rep or repne string instruction (movs, cmps, stos, lods, scas,
// with operand-size, address-size, segment and REX prefixes), else 0.
func repStringLen(b []byte) int {
	rep := false
	for i, c := range b {
		switch {
		case c == 0xf3 || c == 0xf2:
			rep = true
		case c == 0x66 || c == 0x67 || c == 0x2e || c == 0x3e || c == 0x26 || c == 0x36 || c == 0x64 || c == 0x65:
		case c >= 0x40 && c <= 0x4f && i+1 < len(b) && isStringOp(b[i+1]):
		case isStringOp(c) && rep:
			return i + 1
		default:
			return 0
		}
	}
	return 0
}

func isStringOp(c byte) bool { return c >= 0xa4 && c <= 0xa7 || c >= 0xaa && c <= 0xaf }

// abort records reason and ends the call: an error that aborts the
// operation, or, for a restoring call, the call run on to its return.
func (pc *pathChecker) abort(ctx context.Context, s *Session, call *Call, r vmi.CPU, reason string) (vmi.CPU, error) {
	if pc.restoring {
		pc.reasons = append(pc.reasons, "restoring "+reason+" (run on to its return)")
		return s.runTo(ctx, s.gadget+2)
	}
	pc.reasons = append(pc.reasons, reason)
	return r, fmt.Errorf("%w: during: %s", ErrAborted, reason)
}

func (pc *pathChecker) verdict(opErr error) Verdict {
	v := Verdict{Phase: "during", Status: "pass"}
	if len(pc.reasons) > 0 {
		v.Status, v.Reasons = "fail", append([]string(nil), pc.reasons...)
	}
	if pc.blocked > 0 {
		v.Reasons = append(v.Reasons, fmt.Sprintf("%d hand-offs: schedule() reached, run by a breakpoint to its return, then stepped on", pc.blocked))
	}
	return v
}

// DiskView is the independent view of a filesystem the guest mounts: the
// disk image read by vmscope itself (read-only), mounted at Mount in the
// guest.
type DiskView struct {
	FS    fsparse.Filesystem
	Mount string // the guest path it is mounted on, "/mnt/data"
}

// rel is p relative to the mount ("." for the mount itself); ok is false
// for a path outside it.
func (d *DiskView) rel(p string) (string, bool) {
	p = path.Clean(p)
	m := path.Clean(d.Mount)
	if p == m {
		return ".", true
	}
	if m == "/" {
		return strings.TrimPrefix(p, "/"), true
	}
	if strings.HasPrefix(p, m+"/") {
		return p[len(m)+1:], true
	}
	return "", false
}

// crossView compares the answer the guest's kernel gave with independent
// views: ls, stat and cat with the disk image (when given) and the dentry
// cache in memory, ps with the task list walked in memory, netstat with
// the sockets of the kernel's hash tables in memory (before, the view
// taken before the operation). A disagreement is a finding; each view
// that ran adds a line saying what it compared (see after.go for the
// memory views' rules).
func crossView(ctx context.Context, k *linux.Kernel, op Op, res *Result, disk *DiskView, before *memView) (v Verdict) {
	v = Verdict{Phase: "after", Status: "pass"}
	var fails, notes []string
	fail := func(f string, a ...any) {
		v.Status = "fail"
		fails = append(fails, fmt.Sprintf(f, a...))
	}
	defer func() { v.Reasons = sortedReasons(fails, notes) }()
	switch op.Kind {
	case "ls", "stat", "cat":
		note, compared := crossDcache(ctx, k, op, res, before, fail)
		if note != "" {
			notes = append(notes, note)
		}
		var rel string
		ok := false
		if disk != nil {
			rel, ok = disk.rel(op.Path)
		}
		if !ok {
			notes = append(notes, "disk image: no view of "+op.Path+" (give the disk image it is on)")
			if !compared && v.Status == "pass" {
				v.Status = "skipped"
			}
			return v
		}
		n := len(fails)
		crossDisk(disk, rel, op, res, fail)
		if len(fails) == n {
			notes = append(notes, "disk image: "+op.Path+" agrees")
		}
	case "ps":
		tasks, _, err := k.Tasks(ctx, false)
		if err != nil {
			fail("task list in memory: %v", err)
			return v
		}
		inMem := map[int]string{}
		for _, t := range tasks {
			inMem[t.PID] = t.Comm
		}
		seen := map[int]bool{}
		for _, p := range res.Procs {
			seen[p.PID] = true
			if _, ok := inMem[p.PID]; !ok {
				fail("pid %d (%s) is in /proc but not on the task list in memory", p.PID, p.Comm)
			}
		}
		var hidden []int
		for pid := range inMem {
			if !seen[pid] {
				hidden = append(hidden, pid)
			}
		}
		sort.Ints(hidden)
		for _, pid := range hidden {
			fail("pid %d (%s) is on the task list in memory but hidden from /proc", pid, inMem[pid])
		}
	case "netstat":
		if note := crossNetstat(ctx, k, res, before, fail); note != "" {
			notes = append(notes, note)
		}
	default:
		v.Status = "skipped"
		notes = append(notes, "no independent view of "+op.Kind+" yet")
	}
	return v
}

// crossDisk compares ls, stat or cat with the disk image's file at rel.
func crossDisk(disk *DiskView, rel string, op Op, res *Result, fail func(string, ...any)) {
	switch op.Kind {
	case "ls":
		ents, err := disk.FS.ReadDir(rel)
		if err != nil {
			fail("disk image: %v", err)
			return
		}
		crossList(ents, res.Entries, fail)
	case "stat":
		e, err := disk.FS.Lstat(rel)
		if err != nil {
			fail("disk image: %v", err)
			return
		}
		st := res.Stat
		if st.Ino != e.Ino || st.Size != e.Size || st.UID != e.Uid || st.GID != e.Gid || st.FileMode() != e.Mode || uint32(st.Nlink) != e.Links {
			fail("disk image: stat of %s: the kernel says inode %d size %d uid %d gid %d mode %v links %d; the disk image says %d %d %d %d %v %d",
				op.Path, st.Ino, st.Size, st.UID, st.GID, st.FileMode(), st.Nlink, e.Ino, e.Size, e.Uid, e.Gid, e.Mode, e.Links)
		}
	case "cat":
		f, err := disk.FS.OpenFile(rel)
		if err != nil {
			fail("disk image: %v", err)
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, io.NewSectionReader(f, 0, f.Size()))
		if err != nil {
			fail("disk image: %v", err)
			return
		}
		if sum := hex.EncodeToString(h.Sum(nil)); sum != res.SHA256 || n != res.Size {
			fail("disk image: content of %s: the kernel gave %d bytes (sha256 %s), the disk image holds %d (sha256 %s)", op.Path, res.Size, res.SHA256, n, sum)
		}
	}
}

// crossList compares a listing with the disk image's directory.
func crossList(disk []fsparse.Entry, got []Entry, fail func(string, ...any)) {
	seen := map[string]uint64{}
	for _, e := range got {
		if e.Name != "." && e.Name != ".." {
			seen[e.Name] = e.Ino
		}
	}
	onDisk := map[string]bool{}
	for _, e := range disk {
		name := path.Base(e.Path)
		onDisk[name] = true
		ino, ok := seen[name]
		switch {
		case !ok:
			fail("disk image: %s (inode %d) is on the disk but the kernel's getdents64 hid it", e.Path, e.Ino)
		case ino != e.Ino:
			fail("disk image: %s: the kernel says inode %d, the disk %d", e.Path, ino, e.Ino)
		}
	}
	var extra []string
	for n := range seen {
		if !onDisk[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(extra)
	for _, n := range extra {
		fail("disk image: %s is listed by the kernel but not on the disk", n)
	}
}
