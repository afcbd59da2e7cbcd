package linux

import (
	"bytes"
	"context"
	"fmt"
	"sort"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// Caps on walks of guest lists.
const (
	MaxTasks   = 1 << 16 // tasks on the task list, threads of a group
	MaxArgs    = 128 << 10
	maxListLen = 1 << 16
)

// Problem is something a walk could not follow; the walk went on without it.
type Problem = vmerr.Problem

func problem(what string, a vmi.VA, err error) Problem {
	return Problem{Where: what, Offset: -1, Addr: uint64(a), Err: err}
}

// Task is a task (process or thread) of the guest.
type Task struct {
	Addr uint64 `json:"addr"` // task_struct
	PID  int    `json:"pid"`
	TGID int    `json:"tgid"`
	PPID int    `json:"ppid"`
	Comm string `json:"comm"`
	// Name is the name /proc/PID/comm and /proc/PID/stat show
	// (proc_task_name): a workqueue worker's comm followed by "+desc" or
	// "-desc" of its workqueue (wq_worker_comm), a kernel thread's full
	// name when it is longer than comm (get_kthread_comm), else comm.
	Name      string   `json:"name"`
	UID       uint32   `json:"uid"`
	GID       uint32   `json:"gid"`
	State     string   `json:"state"`      // one of RSDTtXZPI, as /proc shows it
	StartTime uint64   `json:"start_time"` // ns since boot (task_struct.start_time)
	Kernel    bool     `json:"kernel_thread"`
	Args      []string `json:"args"` // argv from the process's own memory; nil for kernel threads
	ArgsError string   `json:"args_error,omitempty"`
	Threads   []Task   `json:"threads,omitempty"` // with threads requested; the leader included
}

// collectList walks the list at head whose entries sit entOff bytes into
// their structures (at most maxListLen) and calls item with each
// structure's address: item returns a value to keep (when ok) and a
// problem to report (when not nil). A cancelled ctx stops the walk.
func collectList[T any](ctx context.Context, k *Kernel, what string, head vmi.VA, entOff uint64, item func(a vmi.VA) (v T, ok bool, p *Problem)) ([]T, []Problem, error) {
	var out []T
	var probs []Problem
	if p := k.ListWalk(what, head, maxListLen, func(e vmi.VA) bool {
		if ctx.Err() != nil {
			return false
		}
		v, ok, p := item(e - vmi.VA(entOff))
		if p != nil {
			probs = append(probs, *p)
		}
		if ok {
			out = append(out, v)
		}
		return true
	}); p != nil {
		probs = append(probs, *p)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return out, probs, nil
}

// ListWalk follows a circular list_head from head (a kernel address of a
// struct list_head), calling fn with each entry's list_head address; it
// stops at head, when fn returns false, at a cycle, after max entries or
// at a read error (the last three are returned as a problem named what).
func (k *Kernel) ListWalk(what string, head vmi.VA, max int, fn func(vmi.VA) bool) *Problem {
	return k.chainWalk(what, head, max, func(n vmi.VA) bool { return n == head }, fn)
}

// chainWalk follows the next pointers (the first word of each node) from
// head until end says a pointer ends the chain; otherwise as ListWalk.
func (k *Kernel) chainWalk(what string, head vmi.VA, max int, end func(vmi.VA) bool, fn func(vmi.VA) bool) *Problem {
	seen := map[vmi.VA]bool{head: true}
	cur := head
	for i := 0; ; i++ {
		next, err := k.ReadU64(cur)
		if err != nil {
			p := problem(what, cur, err)
			return &p
		}
		n := vmi.VA(next)
		if end(n) {
			return nil
		}
		if seen[n] {
			p := problem(what, n, fmt.Errorf("cycle after %d entries: %w", i, vmi.ErrCorrupt))
			return &p
		}
		if i >= max {
			p := problem(what, n, fmt.Errorf("longer than %d entries: %w", max, vmi.ErrCorrupt))
			return &p
		}
		seen[n] = true
		if !fn(n) {
			return nil
		}
		cur = n
	}
}

// Tasks lists the processes on the task list (init_task.tasks), sorted by
// pid; with threads, each with its thread group (signal->thread_head).
func (k *Kernel) Tasks(ctx context.Context, threads bool) ([]Task, []Problem, error) {
	initTask, ok := k.Symbols.Addr("init_task")
	if !ok {
		return nil, nil, fmt.Errorf("linux: no init_task symbol: %w", ErrLayout)
	}
	tasksOff, err := k.Field("task_struct", "tasks")
	if err != nil {
		return nil, nil, err
	}
	var out []Task
	var probs []Problem
	walkErr := k.ListWalk("task list", initTask+vmi.VA(tasksOff), MaxTasks, func(e vmi.VA) bool {
		if ctx.Err() != nil {
			return false
		}
		t, ps, ok := k.task(e - vmi.VA(tasksOff))
		probs = append(probs, ps...)
		if !ok { // its task_struct could not be read: only the problem
			return true
		}
		if threads {
			t.Threads, ps = k.threads(t)
			probs = append(probs, ps...)
		}
		out = append(out, t)
		return true
	})
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if walkErr != nil {
		probs = append(probs, *walkErr)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, probs, nil
}

func (k *Kernel) threads(leader Task) ([]Task, []Problem) {
	t := k.obj("task_struct", vmi.VA(leader.Addr))
	sig := t.ptr("signal")
	nodeOff, err := k.Field("task_struct", "thread_node")
	headOff, err2 := k.Field("signal_struct", "thread_head")
	if t.err != nil || err != nil || err2 != nil {
		return nil, []Problem{problem(fmt.Sprintf("threads of pid %d", leader.PID), vmi.VA(leader.Addr), firstErr(t.err, err, err2))}
	}
	var out []Task
	var probs []Problem
	if p := k.ListWalk(fmt.Sprintf("threads of pid %d", leader.PID), sig+vmi.VA(headOff), MaxTasks, func(e vmi.VA) bool {
		th, ps, ok := k.task(e - vmi.VA(nodeOff))
		probs = append(probs, ps...)
		if !ok {
			return true
		}
		th.Args = nil
		th.ArgsError = ""
		out = append(out, th)
		return true
	}); p != nil {
		probs = append(probs, *p)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, probs
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

const taskStates = "RSDTtXZPI"

// task reads the task_struct at addr; ok is false when the task_struct
// itself could not be read (the problem says why).
func (k *Kernel) task(addr vmi.VA) (Task, []Problem, bool) {
	o := k.obj("task_struct", addr)
	t := Task{Addr: uint64(addr)}
	t.PID = int(int32(o.u32("pid")))
	t.TGID = int(int32(o.u32("tgid")))
	t.Comm = o.str("comm", 16)
	flags := o.uint("flags")
	t.StartTime = o.u64("start_time")
	state := o.uint("__state")
	exit := o.uint("exit_state")
	parent := o.ptr("real_parent")
	cred := o.ptr("cred")
	mm := o.ptr("mm")
	if o.err != nil {
		return t, []Problem{problem("task_struct", addr, o.err)}, false
	}
	var probs []Problem
	t.Name = t.Comm
	if flags&(pfWQWorker|pfKthread) != 0 {
		name, err := k.kthreadName(addr, t.Comm, flags)
		if err != nil {
			probs = append(probs, problem(fmt.Sprintf("name of kernel thread %d", t.PID), addr, err))
		} else {
			t.Name = name
		}
	}
	// task_state_index: TASK_REPORT bits, TASK_IDLE reported as I
	const taskReport, taskIdle = 0x7f, 0x402
	st := (state | exit) & taskReport
	idx := 0
	if state == taskIdle {
		idx = 8
	} else {
		for st != 0 {
			idx++
			st >>= 1
		}
	}
	if idx < len(taskStates) {
		t.State = string(taskStates[idx])
	}
	if parent != 0 {
		p := k.obj("task_struct", parent)
		t.PPID = int(int32(p.u32("tgid")))
		if p.err != nil {
			probs = append(probs, problem(fmt.Sprintf("parent of pid %d", t.PID), parent, p.err))
		}
	}
	if cred != 0 {
		c := k.obj("cred", cred)
		t.UID = uint32(c.uint("uid.val"))
		t.GID = uint32(c.uint("gid.val"))
		if c.err != nil {
			probs = append(probs, problem(fmt.Sprintf("cred of pid %d", t.PID), cred, c.err))
		}
	}
	if mm == 0 {
		t.Kernel = true
		return t, probs, true
	}
	args, err := k.args(mm)
	t.Args = args
	if err != nil {
		t.ArgsError = err.Error()
		probs = append(probs, problem(fmt.Sprintf("argv of pid %d", t.PID), mm, err))
	}
	return t, probs, true
}

// UserSpace is the address space of a process: its mm's page tables.
func (k *Kernel) UserSpace(mm vmi.VA) (vmi.AddressSpace, error) {
	o := k.obj("mm_struct", mm)
	pgd := o.ptr("pgd")
	if o.err != nil {
		return vmi.AddressSpace{}, o.err
	}
	if pgd < k.PageOffset {
		return vmi.AddressSpace{}, fmt.Errorf("linux: mm %#x: pgd %#x not in the direct map: %w", uint64(mm), uint64(pgd), vmi.ErrCorrupt)
	}
	return vmi.AddressSpace{Mem: k.Mem, Root: vmi.PA(pgd - k.PageOffset), LA57: k.AS.LA57}, nil
}

// args reads argv between mm->arg_start and mm->arg_end through the
// process's own page tables.
func (k *Kernel) args(mm vmi.VA) ([]string, error) {
	o := k.obj("mm_struct", mm)
	start, end := o.u64("arg_start"), o.u64("arg_end")
	if o.err != nil {
		return nil, o.err
	}
	if end < start {
		return nil, fmt.Errorf("linux: argv [%#x, %#x) ends before it starts: %w", start, end, vmi.ErrCorrupt)
	}
	n := min(end-start, MaxArgs)
	as, err := k.UserSpace(mm)
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	m, err := as.ReadVirt(b, vmi.VA(start))
	b = bytes.TrimRight(b[:m], "\x00")
	var out []string
	if len(b) > 0 {
		for _, a := range bytes.Split(b, []byte{0}) {
			out = append(out, string(a))
		}
	}
	if err != nil {
		return out, fmt.Errorf("linux: argv at %#x: %w", start, err)
	}
	return out, nil
}

// Task flags (PF_*, include/linux/sched.h): ABI of every kernel since 2.6.
const (
	pfWQWorker = 0x00000020
	pfKthread  = 0x00200000
)

// maxTaskName is the buffer proc_task_name prints a name into.
const maxTaskName = 64

// kthreadName is proc_task_name for kernel threads: wq_worker_comm for a
// workqueue worker (comm, then '+' and the worker's desc while it runs a
// work item, '-' and desc after), get_kthread_comm (struct kthread's
// full_name when set) for the others. The struct kthread is
// task->worker_private (5.17 and later) or task->set_child_tid (before).
func (k *Kernel) kthreadName(task vmi.VA, comm string, flags uint64) (string, error) {
	o := k.obj("task_struct", task)
	f := "worker_private"
	if _, err := k.Field("task_struct", f); err != nil {
		f = "set_child_tid"
	}
	kt := o.ptr(f)
	if o.err != nil {
		return "", o.err
	}
	if kt == 0 {
		return comm, nil
	}
	ko := k.obj("kthread", kt)
	if flags&pfWQWorker != 0 {
		w := ko.ptr("data")
		if ko.err != nil {
			return "", ko.err
		}
		if w == 0 {
			return comm, nil
		}
		wo := k.obj("worker", w)
		pool := wo.ptr("pool")
		cur := wo.ptr("current_work")
		n, err := k.fieldSize("worker", "desc")
		if err != nil {
			return "", err
		}
		desc := wo.str("desc", int(min(n, maxTaskName)))
		if wo.err != nil {
			return "", wo.err
		}
		if pool == 0 || desc == "" {
			return comm, nil
		}
		sep := "-"
		if cur != 0 {
			sep = "+"
		}
		return truncName(comm + sep + desc), nil
	}
	full := ko.ptr("full_name")
	if ko.err != nil {
		return "", ko.err
	}
	if full == 0 {
		return comm, nil
	}
	name, err := k.ReadString(full, maxTaskName)
	if err != nil {
		return "", fmt.Errorf("linux: kthread %#x full_name: %w", uint64(kt), err)
	}
	return truncName(name), nil
}

// truncName cuts a name as the 64-byte buffer of proc_task_name does.
func truncName(s string) string {
	if len(s) > maxTaskName-1 {
		return s[:maxTaskName-1]
	}
	return s
}
