// Package watch is target-based critical-file monitoring of a live Linux
// guest: only the kernel objects of the files a user names (their inode's
// lock, size, mode and owner, link count and state, their dentry's name
// and parent) are trapped, through a vmi.Tracer's watchpoints, so the
// guest pays only when those files are touched.
//
// Paths are resolved in guest memory (the dentry cache from the init
// task's root, across mounts); a path not cached is pending and resolved
// again when its parent directory's lock is taken. Each stop is
// classified from the field hit, the access and a bounded scan of the
// kernel stack for the VFS entry it came through (vfs_read, vfs_write,
// notify_change, vfs_unlink, vfs_rename, do_filp_open), and attributed
// to the task current on the vCPU; the stops of one system call are one
// event, ended when a one-shot write watch on that call's validated
// return-address slot (on its task's own kernel stack) sees the task's
// next entry into the kernel. An access with no known entry is reported
// as kind "access", never dropped.
//
// Invariants: watch only reads guest memory and sets traps (it links no
// vmi.Controller); every walk of guest structures (child lists, mounts,
// stacks) is bounded; when an inode gains I_FREEING its traps are removed
// before the slot can be reused and its path becomes pending; events go
// to a bounded queue whose overflow is counted; Run removes every trap it
// set on every return.
package watch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"github.com/vmscope/vmscope/vmi"
)

// iFreeing is I_FREEING of include/linux/fs.h (bit 5 of i_state, the
// same from 2.6 to 6.x); it is a #define, so BTF does not hold it.
const iFreeing = 1 << 5

// Event is one access to a watched file: the stops of one system call (or
// one stop outside any) on the file's objects.
type Event struct {
	Time     time.Time `json:"time"`
	CPU      int       `json:"vcpu"`
	Kind     string    `json:"kind"`
	Path     string    `json:"path"`
	Dev      uint64    `json:"dev"`
	Inode    uint64    `json:"inode"`
	TaskInfo           // who made it: pid, tgid, comm, uid, euid, exe
	Function string    `json:"function"`  // where the first stop was (RIP, symbolized)
	VFSEntry string    `json:"vfs_entry"` // the VFS function the access came through; "" if none found
	Fields   []string  `json:"fields"`    // the watched fields touched
	Access   string    `json:"access"`    // the accesses seen, "rw-"
	Stops    int       `json:"stops"`
	Action   string    `json:"action"` // log; alert when a policy forbids it (cmd/vmscope)
	// Note says what else happened: "resolved" (a pending path found by
	// this call's lookup), "freed" (the inode is being evicted: its
	// watches are dropped, the path is pending again).
	Note string `json:"note,omitempty"`
}

// Stats counts what a Run saw.
type Stats struct {
	Stops   int `json:"stops"`   // trap stops handled
	Outside int `json:"outside"` // watchpoint stops on no watched range (false triggers)
	Events  int `json:"events"`
	Access  int `json:"access_events"`  // events with no VFS entry found
	Dropped int `json:"dropped"`        // events the queue had no room for
	Groups  int `json:"groups_flushed"` // calls that never returned (flushed after a timeout)
	// StringOps are watchpoint stops QEMU reported at a rep stos/movs
	// whose destination (RDI, after the iteration that stopped) was not
	// in the watched range: not an access to the watched field, so not
	// reported as one.
	StringOps int `json:"string_op_stops"`
	// Misreported are watchpoint stops whose instruction (the one before
	// RIP, decoded from its function's start) accessed memory that its
	// reported watched range does not overlap: QEMU's report, not an
	// access to the watched field (see verifyInst).
	Misreported int `json:"misreported_stops"`
	// Denied is how many permission checks deny mode made fail.
	Denied int `json:"denied"`
	// Held is how long the guest was held stopped by Run's stops, on the
	// host's clock: from the stop's arrival to the resume that ended it.
	Held time.Duration `json:"held_ns"`
}

// Options are the optional settings of New.
type Options struct {
	// Kinds keeps only events of these kinds (nil: all).
	Kinds map[string]bool
	// Queue is the event queue's length (1024 when 0).
	Queue int
	// Deny, when not nil, makes the guest's own permission check fail for
	// the accesses it forbids (deny mode).
	Deny *Deny
	// Armed, when not nil, is called once Run has armed every watch,
	// with their number, before the guest runs again.
	Armed func(traps int)
	// OnStop, when not nil, is called for every trap stop Run handles,
	// while the guest is stopped (measurement: where a watch's cost comes
	// from). It must not block.
	OnStop func(StopInfo)
}

// StopInfo is one trap stop, as Options.OnStop sees it.
type StopInfo struct {
	// Outcome is "watch" (an access to a watched range), "outside" (a
	// watchpoint stop on no watched range), "string_op" (a rep string
	// instruction writing elsewhere), "misreported" (an instruction
	// whose access does not overlap the range reported), "return" or
	// "deny" (a breakpoint of ours), "breakpoint" (another).
	Outcome  string
	Addr     vmi.VA // the address the watchpoint saw; the RIP for a breakpoint
	Access   string // "r--", "-w-", "rw-", "--x"
	RIP      vmi.VA
	Function string     // RIP, symbolized
	Owners   []string   // "PATH FIELD" of the watches hit
	Traps    []vmi.Trap // the watched ranges covering Addr
	Task     TaskInfo   // the task current on the vCPU
	Regs     vmi.CPU    // the vCPU's registers at the stop
}

// Deny is deny mode: when a task Forbid names reads a watched i_mode
// inside inode_permission, a one-shot breakpoint goes at that call's
// validated return address (filtered by task and stack pointer), and when
// it hits, RAX is set to -EACCES through Controller: the open (or
// truncate) fails through the kernel's own error path. Accesses that do
// not go through inode_permission (a descriptor opened earlier, a shared
// mapping) cannot be denied this way: their events say deny_unavailable.
type Deny struct {
	Controller vmi.Controller
	Forbid     func(path string, t TaskInfo) bool
}

// eacces is -EACCES as a register holds it.
const eacces = ^uint64(13 - 1)

type owner struct {
	path  string
	field string
}

type groupKey struct {
	task vmi.VA
	slot vmi.VA // stack slot of the return address into the system-call entry
}

type group struct {
	slot    vmi.VA // the return-address slot watched until the call is over
	started time.Time
	task    TaskInfo
	cpu     int
	first   string
	entry   string
	kind    string
	paths   map[string]*pathAcc
	denied  bool
}

type pathAcc struct {
	dev, ino uint64
	fields   map[string]bool
	access   vmi.Access
	stops    int
	note     string
}

// Watcher watches files of one guest. New resolves them; Run traps them
// and reports events until its context ends.
type Watcher struct {
	t    vmi.Tracer
	w    *Kernel
	r    *Resolver
	z    *Symbolizer
	pc   *percpu
	code *codeReader
	opts Options

	paths   []string
	targets map[string]*Target
	pending map[string]*Pending
	traps   map[vmi.Trap][]owner
	groups  map[groupKey]*group
	slots   map[vmi.VA]groupKey // the watched return-address slot of each open call -> its group
	denyBP  map[vmi.VA]int
	denies  map[groupKey]vmi.VA // (task, slot of inode_permission's return) -> breakpoint
	// Denied counts the accesses deny mode made fail.
	denied int

	cache *stopCache // the guest-physical pages read during the current stop

	out   chan Event
	stats Stats
	rsem  uint64 // offset of count in struct rw_semaphore
}

// New resolves paths in the guest (the guest should be paused for a
// consistent view) and prepares their watches.
func New(ctx context.Context, t vmi.Tracer, w *Kernel, paths []string, opts Options) (*Watcher, error) {
	if opts.Queue <= 0 {
		opts.Queue = 1024
	}
	r, err := NewResolver(ctx, w)
	if err != nil {
		return nil, err
	}
	pc, err := newPercpu(w)
	if err != nil {
		return nil, err
	}
	rsem, err := w.K.Field("rw_semaphore", "count")
	if err != nil {
		return nil, err
	}
	cw := *w
	as, cache := cachedSpace(w.K.AS)
	cw.mem = as
	w = &cw
	r.w = w
	x := &Watcher{
		cache: cache,
		t:     t, w: w, r: r, z: NewSymbolizer(w.K.Symbols), pc: pc, opts: opts, rsem: rsem,
		code: &codeReader{cache: map[vmi.VA][5]byte{}, read: func(p []byte, va vmi.VA) error {
			_, err := w.mem.ReadVirt(p, va)
			return err
		}},
		targets: map[string]*Target{}, pending: map[string]*Pending{}, traps: map[vmi.Trap][]owner{},
		groups: map[groupKey]*group{}, slots: map[vmi.VA]groupKey{}, denyBP: map[vmi.VA]int{}, denies: map[groupKey]vmi.VA{}, out: make(chan Event, opts.Queue),
	}
	seen := map[string]bool{}
	for _, p := range paths {
		if seen[p] {
			continue
		}
		seen[p] = true
		x.paths = append(x.paths, p)
		res, err := r.Resolve(ctx, p)
		if err != nil {
			return nil, err
		}
		if res.Target != nil {
			x.targets[p] = res.Target
		} else {
			x.pending[p] = res.Pending
		}
		x.cache.reset()
	}
	return x, nil
}

// Targets lists the paths resolved, Pending those that are not cached.
func (x *Watcher) Targets() map[string]*Target  { return x.targets }
func (x *Watcher) Pending() map[string]*Pending { return x.pending }

// Events is the queue of events; Run closes it when it returns.
func (x *Watcher) Events() <-chan Event { return x.out }

// Stats is what Run saw so far (read it after Run returns).
func (x *Watcher) Stats() Stats {
	st := x.stats
	st.Denied = x.denied
	return st
}

// trapsOf are the watchpoints of a target: i_rwsem's count (write,
// truncate, setattr, unlink and rename take it), i_size (reads and
// writes), i_mode and i_uid (permission checks: open), i_nlink, i_state,
// and the dentry's name and parent (rename).
func (x *Watcher) trapsOf(t *Target) map[vmi.Trap]string {
	w := x.w
	at := func(base vmi.VA, off uint64) vmi.VA { return base + vmi.VA(off) }
	m := map[vmi.Trap]string{
		vmi.Watchpoint(at(t.Inode, w.iRwsem+x.rsem), 8, vmi.Write): "i_rwsem",
		vmi.Watchpoint(at(t.Inode, w.iSize), 8, vmi.ReadWrite):     "i_size",
		vmi.Watchpoint(at(t.Inode, w.iMode), 2, vmi.ReadWrite):     "i_mode",
		vmi.Watchpoint(at(t.Inode, w.iUID), 4, vmi.ReadWrite):      "i_uid",
		vmi.Watchpoint(at(t.Inode, w.iNlink), 4, vmi.Write):        "i_nlink",
		vmi.Watchpoint(at(t.Dentry, w.dName), 8, vmi.Write):        "d_name",
		vmi.Watchpoint(at(t.Dentry, w.dNamePtr), 8, vmi.Write):     "d_name",
		vmi.Watchpoint(at(t.Dentry, w.dParent), 8, vmi.Write):      "d_parent",
	}
	if n := uint64(w.iStateSize); n == 1 || n == 2 || n == 4 || n == 8 {
		m[vmi.Watchpoint(at(t.Inode, w.iState), n, vmi.Write)] = "i_state"
	}
	return m
}

func (x *Watcher) addTrap(ctx context.Context, tr vmi.Trap, o owner) error {
	if err := tr.Validate(); err != nil {
		return err
	}
	if len(x.traps[tr]) == 0 {
		if err := x.t.Insert(ctx, tr); err != nil {
			return err
		}
	}
	x.traps[tr] = append(x.traps[tr], o)
	return nil
}

// dropOwner removes path's owners from the traps and disarms the traps
// left with none.
func (x *Watcher) dropOwner(ctx context.Context, path string, field func(string) bool) error {
	var errs []error
	for tr, os := range x.traps {
		var keep []owner
		for _, o := range os {
			if o.path != path || !field(o.field) {
				keep = append(keep, o)
			}
		}
		if len(keep) == len(os) {
			continue
		}
		if len(keep) == 0 {
			delete(x.traps, tr)
			if err := x.t.Remove(ctx, tr); err != nil {
				errs = append(errs, err)
			}
		} else {
			x.traps[tr] = keep
		}
	}
	return errors.Join(errs...)
}

func (x *Watcher) arm(ctx context.Context, path string) error {
	if t := x.targets[path]; t != nil {
		for tr, f := range x.trapsOf(t) {
			if err := x.addTrap(ctx, tr, owner{path, f}); err != nil {
				return err
			}
		}
		return nil
	}
	p := x.pending[path]
	if p == nil || p.DirInode == 0 {
		return nil
	}
	return x.addTrap(ctx, x.pendingTrap(p), owner{path, "parent_rwsem"})
}

// pendingTrap watches the lock of a pending path's directory, which a
// lookup miss in it takes.
func (x *Watcher) pendingTrap(p *Pending) vmi.Trap {
	return vmi.Watchpoint(p.DirInode+vmi.VA(x.w.iRwsem+x.rsem), 8, vmi.Write)
}

// removeAll disarms every trap Run set.
func (x *Watcher) removeAll(ctx context.Context) error {
	var errs []error
	for tr := range x.traps {
		if err := x.t.Remove(ctx, tr); err != nil {
			errs = append(errs, err)
		}
	}
	for a := range x.slots {
		if err := x.t.Remove(ctx, slotTrap(a)); err != nil {
			errs = append(errs, err)
		}
	}
	for a := range x.denyBP {
		if err := x.t.Remove(ctx, vmi.Breakpoint(a)); err != nil {
			errs = append(errs, err)
		}
	}
	x.traps, x.slots, x.denyBP, x.denies = map[vmi.Trap][]owner{}, map[vmi.VA]groupKey{}, map[vmi.VA]int{}, map[groupKey]vmi.VA{}
	return errors.Join(errs...)
}

// groupTimeout ends a call's event that never returned (exit_group, a
// task blocked for long): it is reported, and its breakpoint removed.
const groupTimeout = 5 * time.Second

// Run arms the watches, lets the guest run, and reports events on Events
// until ctx ends (it returns nil then) or the guest exits or the tracer
// fails. On every return it removes the traps it set (with a context that
// is not cancelled) and leaves the guest running; it closes Events.
func (x *Watcher) Run(ctx context.Context) (err error) {
	defer close(x.out)
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		x.cache.reset()
		x.flush(true)
		rerr := x.removeAll(cctx)
		if rerr == nil {
			rerr = x.t.Resume(cctx)
		}
		err = errors.Join(err, rerr)
	}()
	if err := x.t.Pause(ctx); err != nil {
		return err
	}
	x.cache.reset()
	for _, p := range x.paths {
		if err := x.arm(ctx, p); err != nil {
			return err
		}
	}
	if x.opts.Armed != nil {
		x.opts.Armed(len(x.traps))
	}
	if err := x.t.Resume(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var st vmi.Stop
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			x.cache.reset()
			x.flush(false)
			x.cache.reset()
			continue
		case st = <-x.t.Events():
		}
		switch st.Reason {
		case vmi.StopExited:
			return vmi.ErrExited
		case vmi.StopTrap:
		default:
			continue
		}
		arrived := time.Now()
		if err := x.handle(ctx, st); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := x.t.Resume(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		x.stats.Held += time.Since(arrived)
	}
}

// handle classifies one stop, then steps the vCPU past the traps it hit.
func (x *Watcher) handle(ctx context.Context, st vmi.Stop) error {
	cpu := max(st.CPU, 0)
	x.cache.reset() // the guest ran since the last stop
	defer x.cache.reset()
	regs, err := x.t.Regs(ctx, cpu)
	if err != nil {
		return err
	}
	x.stats.Stops++
	var hits []vmi.Trap
	if x.opts.OnStop != nil {
		si := x.describe(st, regs)
		defer func() { x.opts.OnStop(si) }()
	}
	if st.Access == vmi.Execute {
		rip := vmi.VA(regs.RIP)
		if x.denyBP[rip] > 0 {
			hits = append(hits, vmi.Breakpoint(rip))
			if err := x.onDeny(ctx, regs); err != nil {
				return err
			}
		}
	} else if key, ok := x.slots[st.Addr]; ok {
		// the return-address slot of an open call is written: its task
		// entered the kernel again (the call returned). The write is the
		// push of a call's return address exactly there: RSP is the
		// slot; any other report of the watch (QEMU's page neighbours)
		// is not it.
		if vmi.VA(regs.RSP) == st.Addr {
			if g := x.groups[key]; g != nil {
				x.endGroup(ctx, key, g)
			}
		}
		return nil
	} else {
		for tr := range x.traps {
			if tr.Covers(st.Addr) {
				hits = append(hits, tr)
			}
		}
		if len(hits) == 0 {
			x.stats.Outside++
		} else if hits = x.verifyStringOp(regs, hits); len(hits) == 0 {
			x.stats.StringOps++
		} else if hits = x.verifyInst(regs, hits); len(hits) == 0 {
			x.stats.Misreported++
		} else if err := x.onWatch(ctx, st, regs, hits); err != nil {
			return err
		}
	}
	// A data watchpoint stops after its access (x86 reports it as a
	// trap, after the instruction, under TCG and KVM alike): the guest
	// resumes past it with the watch armed, nothing to step. A breakpoint
	// stops before its instruction: step past the ones still armed.
	// (Each step is a second stop and start of the guest in QEMU,
	// measured by bench/watch.sh as most of what a watchpoint stop costs.)
	if st.Access != vmi.Execute {
		return nil
	}
	var armed []vmi.Trap
	for _, tr := range hits {
		if x.denyBP[tr.Addr] > 0 {
			armed = append(armed, tr)
		}
	}
	for _, tr := range armed {
		if err := x.t.Remove(ctx, tr); err != nil {
			return err
		}
	}
	_, serr := x.t.Step(ctx, cpu)
	var errs []error
	if serr != nil {
		errs = append(errs, fmt.Errorf("watch: stepping past a trap: %w", serr))
	}
	for _, tr := range armed {
		if err := x.t.Insert(ctx, tr); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// describe says what a stop is, for Options.OnStop, before handle acts
// on it (the traps it hit, the task).
func (x *Watcher) describe(st vmi.Stop, regs vmi.CPU) StopInfo {
	rip := vmi.VA(regs.RIP)
	si := StopInfo{Addr: st.Addr, Access: st.Access.String(), RIP: rip, Function: x.z.Name(rip), Regs: regs}
	if a, err := x.pc.task(regs); err == nil {
		si.Task, _ = x.w.taskInfo(a)
	}
	if _, ok := x.slots[st.Addr]; ok && st.Access != vmi.Execute {
		si.Outcome = "return"
		return si
	}
	if st.Access == vmi.Execute {
		switch {
		case x.denyBP[rip] > 0:
			si.Outcome = "deny"
		default:
			si.Outcome = "breakpoint"
		}
		return si
	}
	var hits []vmi.Trap
	for tr, os := range x.traps {
		if tr.Covers(st.Addr) {
			hits = append(hits, tr)
			for _, o := range os {
				si.Owners = append(si.Owners, o.path+" "+o.field)
			}
		}
	}
	sort.Strings(si.Owners)
	si.Traps = hits
	switch {
	case len(hits) == 0:
		si.Outcome = "outside"
	case len(x.verifyStringOp(regs, hits)) == 0:
		si.Outcome = "string_op"
	case len(x.verifyInst(regs, x.verifyStringOp(regs, hits))) == 0:
		si.Outcome = "misreported"
	default:
		si.Outcome = "watch"
	}
	return si
}

// verifyStringOp keeps the hits a stop at a rep stos/movs really made.
// QEMU's TCG can report a rep string instruction's write against another
// watchpoint of the same page (measured: the first iteration of the
// memset of a new inode's i_data in __ext4_new_inode, reported against
// whichever watched field of a neighbour inode on that page its list
// holds first), so the access is checked against the registers: the
// iteration that stopped wrote the bytes just below RDI (and a movs read
// those below RSI; the direction flag clear, as the kernel keeps it).
// The stop is at the rep instruction while it has iterations left, or
// just after it once RCX is 0 (its last iteration, or its only one).
// Other instructions stop after their access and are kept as they are.
func (x *Watcher) verifyStringOp(regs vmi.CPU, hits []vmi.Trap) []vmi.Trap {
	var b [16]byte
	if _, err := x.w.mem.ReadVirt(b[:], vmi.VA(regs.RIP)); err != nil {
		return hits
	}
	size, movs := stringOp(b[:])
	if size == 0 && regs.RCX == 0 {
		var p [3]byte
		if _, err := x.w.mem.ReadVirt(p[:], vmi.VA(regs.RIP-3)); err == nil {
			size, movs = repBefore(p)
		}
	}
	if size == 0 {
		return hits
	}
	lo, hi := vmi.VA(regs.RDI-size), vmi.VA(regs.RDI)
	slo, shi := vmi.VA(regs.RSI-size), vmi.VA(regs.RSI)
	var keep []vmi.Trap
	for _, tr := range hits {
		end := tr.Addr + vmi.VA(tr.Len)
		if tr.Access == vmi.Execute || (tr.Addr < hi && lo < end) || movs && tr.Access.Read && tr.Addr < shi && slo < end {
			keep = append(keep, tr)
		}
	}
	return keep
}

// stringOp is the element size of the stos or movs instruction code
// starts with (0 for any other), and whether it is a movs.
func stringOp(code []byte) (uint64, bool) {
	inst, err := x86asm.Decode(code, 64)
	if err != nil {
		return 0, false
	}
	switch inst.Op {
	case x86asm.STOSB:
		return 1, false
	case x86asm.STOSW:
		return 2, false
	case x86asm.STOSD:
		return 4, false
	case x86asm.STOSQ:
		return 8, false
	case x86asm.MOVSB:
		return 1, true
	case x86asm.MOVSW:
		return 2, true
	case x86asm.MOVSD:
		return 4, true
	case x86asm.MOVSQ:
		return 8, true
	}
	return 0, false
}

// repBefore is the element size of a rep stos or rep movs whose encoding
// ends at the end of p (the 3 bytes before RIP: f3 48 ab, f3 ab, f3 aa and
// their movs forms a5, a4), 0 if there is none.
func repBefore(p [3]byte) (uint64, bool) {
	if p[0] == 0xf3 && p[1] == 0x48 && (p[2] == 0xab || p[2] == 0xa5) {
		return 8, p[2] == 0xa5
	}
	if p[1] != 0xf3 {
		return 0, false
	}
	switch p[2] {
	case 0xaa:
		return 1, false
	case 0xab:
		return 4, false
	case 0xa4:
		return 1, true
	case 0xa5:
		return 4, true
	}
	return 0, false
}

// stack reads the kernel stack of a stopped vCPU, from RSP up to the
// per-CPU top of stack (at most maxStackScan bytes).
func (x *Watcher) stack(regs vmi.CPU) ([]byte, vmi.VA) {
	sp := vmi.VA(regs.RSP)
	n := uint64(maxStackScan)
	if top := x.pc.stackTop(regs); top > sp && uint64(top-sp) < n {
		n = uint64(top - sp)
	}
	b := make([]byte, n)
	m, _ := x.w.mem.ReadVirt(b, sp)
	return b[:m], sp
}

func (x *Watcher) onWatch(ctx context.Context, st vmi.Stop, regs vmi.CPU, hits []vmi.Trap) error {
	taskAddr, err := x.pc.task(regs)
	var ti TaskInfo
	if err == nil {
		ti, _ = x.w.taskInfo(taskAddr)
	}
	stack, base := x.stack(regs)
	frames := x.z.ScanStack(stack, base, x.code)
	ripFunc, _, _ := x.z.Lookup(vmi.VA(regs.RIP))
	entry, kind := classify(frames, ripFunc)
	var sys *Frame
	for i := range frames {
		if frames[i].Callee == "do_syscall_64" {
			sys = &frames[i]
		}
	}
	fn := x.z.Name(vmi.VA(regs.RIP))
	var freed []string
	acc := map[string]*pathAcc{}
	for _, tr := range hits {
		for _, o := range x.traps[tr] {
			a := acc[o.path]
			if a == nil {
				a = &pathAcc{fields: map[string]bool{}}
				if t := x.targets[o.path]; t != nil {
					a.dev, a.ino = t.DevT, t.Ino
				}
				acc[o.path] = a
			}
			a.fields[o.field] = true
			a.access = a.access.Union(st.Access)
			a.stops++
			if o.field == "i_state" {
				var b [8]byte
				if _, err := x.w.mem.ReadVirt(b[:x.w.iStateSize], tr.Addr); err == nil && binary.LittleEndian.Uint64(b[:])&iFreeing != 0 {
					freed = append(freed, o.path)
					a.note = "freed"
				}
			}
		}
	}
	if x.opts.Deny != nil && taskAddr != 0 && st.Access.Read {
		if err := x.armDeny(ctx, taskAddr, ti, frames, acc); err != nil {
			return err
		}
	}
	// an inode being freed: drop its watches now, before its slot can be
	// reused, and resolve its path again (pending)
	for _, p := range freed {
		if err := x.dropOwner(ctx, p, func(string) bool { return true }); err != nil {
			return err
		}
		delete(x.targets, p)
		if res, err := x.r.Resolve(ctx, p); err == nil {
			if res.Target != nil && res.Target.Inode != 0 {
				// still cached under a dentry being killed: wait for the lookup
				x.pending[p] = &Pending{Path: p, Dir: res.Target.Parent, DirInode: res.Target.ParentInode, Missing: "(freed)"}
			} else if res.Pending != nil {
				x.pending[p] = res.Pending
			}
			if err := x.arm(ctx, p); err != nil {
				return err
			}
		}
	}
	if sys == nil || taskAddr == 0 {
		g := &group{started: time.Now(), task: ti, cpu: regs.ID, first: fn, entry: entry, kind: kind, paths: acc}
		x.emit(g)
		return nil
	}
	key := groupKey{task: taskAddr, slot: sys.Slot}
	g := x.groups[key]
	if g == nil {
		if old, ok := x.slots[sys.Slot]; ok {
			// a call of another task on a reused stack: that one is over
			if og := x.groups[old]; og != nil {
				x.endGroup(ctx, old, og)
			}
		}
		if err := x.t.Insert(ctx, slotTrap(sys.Slot)); err != nil {
			return err
		}
		x.slots[sys.Slot] = key
		g = &group{slot: sys.Slot, started: time.Now(), task: ti, cpu: regs.ID, first: fn, paths: map[string]*pathAcc{}}
		x.groups[key] = g
	}
	if g.kind == "" && kind != "" {
		g.kind, g.entry = kind, entry
	}
	for p, a := range acc {
		if b := g.paths[p]; b != nil {
			for f := range a.fields {
				b.fields[f] = true
			}
			b.access = b.access.Union(a.access)
			b.stops += a.stops
			if a.note != "" {
				b.note = a.note
			}
		} else {
			g.paths[p] = a
		}
	}
	return nil
}

// slotTrap watches the return-address slot of an open call on its
// task's kernel stack: the task's next entry into the kernel pushes a
// return address there (the system-call entry's call, an interrupt's
// handler), so the watch fires after the call returned, for that task
// only (each task has its own stack; a breakpoint at the shared return
// site stopped every task's system calls while it was armed).
func slotTrap(slot vmi.VA) vmi.Trap { return vmi.Watchpoint(slot, 8, vmi.Write) }

// endGroup reports a call's event and removes the watch on its slot.
func (x *Watcher) endGroup(ctx context.Context, key groupKey, g *group) {
	delete(x.groups, key)
	if k, ok := x.slots[g.slot]; ok && k == key {
		delete(x.slots, g.slot)
		x.t.Remove(ctx, slotTrap(g.slot))
	}
	// a deny breakpoint of this task that never hit goes with its call
	for k, a := range x.denies {
		if k.task == key.task {
			x.dropDeny(ctx, k, a)
		}
	}
	// a lookup in a pending path's directory: resolve it again
	for p, a := range g.paths {
		if !a.fields["parent_rwsem"] {
			continue
		}
		delete(g.paths, p)
		if x.pending[p] == nil {
			continue
		}
		res, err := x.r.Resolve(ctx, p)
		if err != nil || res.Target == nil {
			if err == nil && res.Pending.DirInode != x.pending[p].DirInode {
				x.dropOwner(ctx, p, func(string) bool { return true })
				x.pending[p] = res.Pending
				x.arm(ctx, p)
			}
			continue
		}
		x.dropOwner(ctx, p, func(string) bool { return true })
		delete(x.pending, p)
		x.targets[p] = res.Target
		if err := x.arm(ctx, p); err == nil {
			g.paths[p] = &pathAcc{fields: map[string]bool{"lookup": true}, access: a.access, stops: a.stops, note: "resolved"}
		}
	}
	x.emit(g)
}

// armDeny sets the one-shot breakpoint of deny mode: the task reads a
// watched i_mode it is forbidden, inside inode_permission (a validated
// frame whose callee is inode_permission): the breakpoint goes at that
// frame's return address, for this task and this stack slot.
func (x *Watcher) armDeny(ctx context.Context, task vmi.VA, ti TaskInfo, frames []Frame, acc map[string]*pathAcc) error {
	forbidden := false
	for p, a := range acc {
		if a.fields["i_mode"] && x.opts.Deny.Forbid(p, ti) {
			forbidden = true
		}
	}
	if !forbidden {
		return nil
	}
	for _, f := range frames {
		if f.Callee != "inode_permission" {
			continue
		}
		key := groupKey{task: task, slot: f.Slot}
		if _, ok := x.denies[key]; ok {
			return nil
		}
		if x.denyBP[f.Return] == 0 {
			if err := x.t.Insert(ctx, vmi.Breakpoint(f.Return)); err != nil {
				return err
			}
		}
		x.denyBP[f.Return]++
		x.denies[key] = f.Return
		return nil
	}
	return nil
}

func (x *Watcher) dropDeny(ctx context.Context, key groupKey, a vmi.VA) {
	delete(x.denies, key)
	x.denyBP[a]--
	if x.denyBP[a] <= 0 {
		delete(x.denyBP, a)
		x.t.Remove(ctx, vmi.Breakpoint(a))
	}
}

// onDeny is a deny breakpoint hit: inode_permission returns into its
// caller; for the task and stack slot it was set for, RAX becomes
// -EACCES.
func (x *Watcher) onDeny(ctx context.Context, regs vmi.CPU) error {
	task, err := x.pc.task(regs)
	if err != nil {
		return nil
	}
	key := groupKey{task: task, slot: vmi.VA(regs.RSP) - 8}
	a, ok := x.denies[key]
	if !ok || a != vmi.VA(regs.RIP) {
		return nil
	}
	x.dropDeny(ctx, key, a)
	want := regs
	want.RAX = eacces
	if err := x.opts.Deny.Controller.SetRegs(ctx, regs.ID, want); err != nil {
		return fmt.Errorf("watch: deny: %w", err)
	}
	x.denied++
	for k, g := range x.groups {
		if k.task == task {
			g.denied = true
		}
	}
	return nil
}

// flush reports the groups older than groupTimeout (all with all).
func (x *Watcher) flush(all bool) {
	for key, g := range x.groups {
		if all || time.Since(g.started) > groupTimeout {
			x.stats.Groups++
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			x.endGroup(ctx, key, g)
			cancel()
		}
	}
}

func (x *Watcher) emit(g *group) {
	paths := make([]string, 0, len(g.paths))
	for p := range g.paths {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		a := g.paths[p]
		kind := g.kind
		if kind == "" {
			kind = "access"
		}
		ev := Event{
			Time: g.started.UTC(), CPU: g.cpu, Kind: kind, Path: p,
			TaskInfo: g.task,
			Function: g.first, VFSEntry: g.entry, Access: a.access.String(), Stops: a.stops, Action: "log", Note: a.note,
		}
		if g.denied {
			ev.Action = "deny"
		}
		ev.Dev, ev.Inode = a.dev, a.ino
		if t := x.targets[p]; t != nil && ev.Inode == 0 {
			ev.Dev, ev.Inode = t.DevT, t.Ino
		}
		for f := range a.fields {
			ev.Fields = append(ev.Fields, f)
		}
		sort.Strings(ev.Fields)
		if x.opts.Kinds != nil && !x.opts.Kinds[kind] {
			continue
		}
		x.stats.Events++
		if kind == "access" {
			x.stats.Access++
		}
		select {
		case x.out <- ev:
		default:
			x.stats.Dropped++
		}
	}
}
