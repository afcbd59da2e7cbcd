package watch

import (
	"bytes"
	"fmt"

	"github.com/vmscope/vmscope/vmi"
)

// TaskInfo is who made an access: the task current on the vCPU that
// stopped.
type TaskInfo struct {
	Addr vmi.VA `json:"-"`
	PID  int    `json:"pid"`
	TGID int    `json:"tgid"`
	Comm string `json:"comm"`
	UID  uint32 `json:"uid"`
	EUID uint32 `json:"euid"`
	Exe  string `json:"exe"`
}

// percpu finds the current task of a vCPU: the per-CPU base is the GS
// base of a vCPU stopped in the kernel, cross-checked against
// __per_cpu_offset; the task pointer is the per-CPU current_task (kernels
// up to 6.1 and from 6.15) or pcpu_hot.current_task (6.2 to 6.14),
// whichever kallsyms has.
type percpu struct {
	w          *Kernel
	current    vmi.VA // per-CPU offset of the current task pointer
	topOfStack vmi.VA // per-CPU offset of the current top of stack; 0 if unknown
	offsets    map[uint64]bool
}

func newPercpu(w *Kernel) (*percpu, error) {
	k := w.K
	p := &percpu{w: w, offsets: map[uint64]bool{}}
	if a, ok := k.Symbols.Addr("current_task"); ok {
		p.current = a
	} else if a, ok := k.Symbols.Addr("pcpu_hot"); ok {
		off, err := k.Field("pcpu_hot", "current_task")
		if err != nil {
			return nil, err
		}
		p.current = a + vmi.VA(off)
	} else {
		return nil, fmt.Errorf("watch: kallsyms has neither current_task nor pcpu_hot: %w", ErrLayout)
	}
	if a, ok := k.Symbols.Addr("cpu_current_top_of_stack"); ok {
		p.topOfStack = a
	} else if a, ok := k.Symbols.Addr("pcpu_hot"); ok {
		if off, err := k.Field("pcpu_hot", "top_of_stack"); err == nil {
			p.topOfStack = a + vmi.VA(off)
		}
	}
	arr, ok1 := k.Symbols.Addr("__per_cpu_offset")
	nrA, ok2 := k.Symbols.Addr("nr_cpu_ids")
	if ok1 && ok2 {
		n, err := w.u32(nrA)
		if err == nil && n > 0 && n <= 8192 {
			for i := range n {
				v, err := w.u64(arr + vmi.VA(8*i))
				if err != nil {
					break
				}
				p.offsets[v] = true
			}
		}
	}
	return p, nil
}

// base is the per-CPU base of a vCPU: its GS base if __per_cpu_offset
// holds it, else its kernel GS base (a vCPU stopped between swapgs pairs)
// if that one matches; without __per_cpu_offset the GS base as is.
func (p *percpu) base(c vmi.CPU) (vmi.VA, error) {
	if len(p.offsets) == 0 || p.offsets[c.GSBase] {
		return vmi.VA(c.GSBase), nil
	}
	if c.HasKernelGSBase && p.offsets[c.KernelGSBase] {
		return vmi.VA(c.KernelGSBase), nil
	}
	return 0, fmt.Errorf("watch: vCPU %d: GS base %#x is no per-CPU area of __per_cpu_offset: %w", c.ID, c.GSBase, ErrCorrupt)
}

// task is the current task of vCPU c.
func (p *percpu) task(c vmi.CPU) (vmi.VA, error) {
	b, err := p.base(c)
	if err != nil {
		return 0, err
	}
	v, err := p.w.u64(b + p.current)
	if err != nil {
		return 0, fmt.Errorf("watch: current task of vCPU %d: %w", c.ID, err)
	}
	return vmi.VA(v), nil
}

// stackTop is the top of the current kernel stack of vCPU c (0 when the
// kernel does not say).
func (p *percpu) stackTop(c vmi.CPU) vmi.VA {
	if p.topOfStack == 0 {
		return 0
	}
	b, err := p.base(c)
	if err != nil {
		return 0
	}
	v, err := p.w.u64(b + p.topOfStack)
	if err != nil {
		return 0
	}
	return vmi.VA(v)
}

// taskInfo reads pid, tgid, comm, the real and effective uid (cred) and
// the executable (mm->exe_file, named by d_path) of a task_struct.
func (w *Kernel) taskInfo(task vmi.VA) (TaskInfo, error) {
	k := w.K
	ti := TaskInfo{Addr: task}
	// A member the kernel's BTF lacks is left unset: never read at
	// offset 0 of the object instead.
	var missing error
	off := func(typ, path string) (vmi.VA, bool) {
		o, err := k.Field(typ, path)
		if err != nil {
			missing = err
			return 0, false
		}
		return vmi.VA(o), true
	}
	pidOff, ok := off("task_struct", "pid")
	if !ok {
		return ti, fmt.Errorf("watch: task %#x: %w", uint64(task), missing)
	}
	pid, err := w.u32(task + pidOff)
	if err != nil {
		return ti, fmt.Errorf("watch: task %#x: %w", uint64(task), err)
	}
	ti.PID = int(int32(pid))
	if o, ok := off("task_struct", "tgid"); ok {
		tgid, _ := w.u32(task + o)
		ti.TGID = int(int32(tgid))
	}
	if o, ok := off("task_struct", "comm"); ok {
		comm, _ := w.read(task+o, 16)
		if i := bytes.IndexByte(comm, 0); i >= 0 {
			comm = comm[:i]
		}
		ti.Comm = string(comm)
	}
	if o, ok := off("task_struct", "cred"); ok {
		if cred, err := w.ptr(task, uint64(o)); err == nil && cred != 0 {
			if o, ok := off("cred", "uid"); ok {
				ti.UID, _ = w.u32(cred + o)
			}
			if o, ok := off("cred", "euid"); ok {
				ti.EUID, _ = w.u32(cred + o)
			}
		}
	}
	mmOff, ok1 := off("task_struct", "mm")
	exeOff, ok2 := off("mm_struct", "exe_file")
	mntOff, ok3 := off("file", "f_path.mnt")
	dentOff, ok4 := off("file", "f_path.dentry")
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return ti, nil
	}
	mm, err := w.ptr(task, uint64(mmOff))
	if err != nil || mm == 0 {
		return ti, nil // a kernel thread
	}
	exe, err := w.ptr(mm, uint64(exeOff))
	if err != nil || exe == 0 {
		return ti, nil
	}
	if p, ok := w.exes[exe]; ok {
		ti.Exe = p
		return ti, nil
	}
	mnt, err1 := w.ptr(exe, uint64(mntOff))
	dentry, err2 := w.ptr(exe, uint64(dentOff))
	if err1 == nil && err2 == nil {
		ti.Exe, _ = k.Path(dentry, mnt)
		if w.exes != nil && len(w.exes) < 4096 {
			w.exes[exe] = ti.Exe
		}
	}
	return ti, nil
}
