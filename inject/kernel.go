package inject

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// ErrLayout is a kernel whose structures lack a member inject needs.
var ErrLayout = vmerr.New("inject: unsupported kernel layout", vmerr.ErrUnsupported)

// ErrCorrupt is guest state that breaks its own rules (a pt_regs that is
// no user frame, a stack pointer outside the stack).
var ErrCorrupt = vmerr.New("inject: corrupt guest state", vmerr.ErrCorrupt)

// Constants of the kernel that are #defines, so BTF does not hold them;
// they have kept their values from 2.6 to 6.x on x86-64.
const (
	pfExiting        = 0x00000004 // PF_EXITING
	pfKthread        = 0x00200000 // PF_KTHREAD
	taskStopped      = 0x0004     // TASK_STOPPED (__TASK_STOPPED)
	taskTraced       = 0x0008     // __TASK_TRACED
	taskFrozen       = 0x8000     // TASK_FROZEN (6.1+)
	pfFrozen         = 0x00010000 // PF_FROZEN (up to 6.0)
	userCS           = 0x33       // __USER_CS: a 64-bit user frame
	userCS32         = 0x23       // __USER32_CS
	threadSize       = 16 << 10   // THREAD_SIZE without KASAN (KASAN: 32 KiB, tried next)
	ptiUserBit       = 1 << 12    // PTI: the user half of a CR3 pair
	capDACOverride   = 1
	capDACReadSearch = 2
	capKill          = 5
)

// kernel reads the task state inject needs through BTF offsets.
type kernel struct {
	K       *linux.Kernel
	current vmi.VA // per-CPU offset of the current task pointer
	offsets map[uint64]bool
	ptRegs  uint64 // sizeof(struct pt_regs)
	// doExit is do_exit's address: a breakpoint there tells a dummy
	// that exits midway (or is killed by an exec of another of its
	// threads) from one that is slow to come back; 0 when kallsyms
	// lacks it.
	doExit vmi.VA
}

func newKernel(k *linux.Kernel) (*kernel, error) {
	kr := &kernel{K: k, offsets: map[uint64]bool{}}
	if a, ok := k.Symbols.Addr("current_task"); ok {
		kr.current = a
	} else if a, ok := k.Symbols.Addr("pcpu_hot"); ok {
		off, err := k.Field("pcpu_hot", "current_task")
		if err != nil {
			return nil, err
		}
		kr.current = a + vmi.VA(off)
	} else {
		return nil, fmt.Errorf("%w: kallsyms has neither current_task nor pcpu_hot", ErrLayout)
	}
	arr, ok1 := k.Symbols.Addr("__per_cpu_offset")
	nrA, ok2 := k.Symbols.Addr("nr_cpu_ids")
	if ok1 && ok2 {
		if n, err := kr.u32(nrA); err == nil && n > 0 && n <= 8192 {
			for i := range n {
				v, err := kr.u64(arr + vmi.VA(8*i))
				if err != nil {
					break
				}
				kr.offsets[v] = true
			}
		}
	}
	sz, err := k.Sizeof("pt_regs")
	if err != nil || sz < 168 || sz > 512 {
		return nil, fmt.Errorf("%w: sizeof(struct pt_regs) %d (%v)", ErrLayout, sz, err)
	}
	kr.ptRegs = sz
	kr.doExit, _ = k.Symbols.Addr("do_exit")
	// the result layouts are the ABI; the kernel's own BTF agrees
	if s, err := k.Sizeof("stat"); err == nil && s != statSize {
		return nil, fmt.Errorf("%w: BTF struct stat is %d bytes, the x86-64 ABI says %d", ErrLayout, s, statSize)
	}
	if o, err := k.Field("linux_dirent64", "d_name"); err == nil && o != direntHeader {
		return nil, fmt.Errorf("%w: BTF linux_dirent64.d_name at %d, the ABI says %d", ErrLayout, o, direntHeader)
	}
	return kr, nil
}

func (kr *kernel) read(va vmi.VA, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := kr.K.AS.ReadVirt(b, va); err != nil {
		return nil, err
	}
	return b, nil
}

func (kr *kernel) u64(va vmi.VA) (uint64, error) {
	b, err := kr.read(va, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (kr *kernel) u32(va vmi.VA) (uint32, error) {
	b, err := kr.read(va, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

// field reads an unsigned member of a structure (its size from BTF).
func (kr *kernel) field(typ string, a vmi.VA, path string) (uint64, error) {
	return kr.K.ReadUint(typ, a, path)
}

// currentTask is the task current on vCPU c: the per-CPU base is the GS
// base of a vCPU in the kernel, the kernel GS base of one in user mode
// (swapgs), each checked against __per_cpu_offset.
func (kr *kernel) currentTask(c vmi.CPU) (vmi.VA, error) {
	base := vmi.VA(0)
	switch {
	case len(kr.offsets) == 0:
		base = vmi.VA(c.GSBase)
		if c.CS.Selector&3 == 3 && c.HasKernelGSBase {
			base = vmi.VA(c.KernelGSBase)
		}
	case kr.offsets[c.GSBase]:
		base = vmi.VA(c.GSBase)
	case c.HasKernelGSBase && kr.offsets[c.KernelGSBase]:
		base = vmi.VA(c.KernelGSBase)
	default:
		return 0, fmt.Errorf("%w: vCPU %d: neither GS base %#x nor kernel GS base %#x is a per-CPU area", ErrCorrupt, c.ID, c.GSBase, c.KernelGSBase)
	}
	v, err := kr.u64(base + kr.current)
	return vmi.VA(v), err
}

// taskState is what vetting reads of a task.
type taskState struct {
	Addr       vmi.VA
	PID, TGID  int
	Comm       string
	Flags      uint64
	State      uint64
	ExitState  uint64
	Ptrace     uint64
	Seccomp    uint64
	Pending    uint64 // task->pending.signal (first word)
	Shared     uint64 // signal->shared_pending.signal
	Blocked    uint64 // task->blocked
	Switches   uint64 // nvcsw + nivcsw
	Threads    int    // signal->nr_threads
	MM         vmi.VA
	PGD        vmi.PA // mm->pgd as guest-physical
	StartTime  uint64
	UID, EUID  uint32
	CapEff     uint64
	Stack      vmi.VA // task->stack
	Regs       ptRegs // the user frame at the top of its kernel stack
	RegsErr    error
	Vdso       vmi.VA // mm->context.vdso
	StartStack vmi.VA // mm->start_stack
}

// ptRegs are the members of the user frame inject reads (x86-64 struct
// pt_regs, offsets from BTF).
type ptRegs struct {
	IP, CS, SP, SS, Flags uint64
}

func (kr *kernel) readTask(a vmi.VA) (taskState, error) {
	t := taskState{Addr: a}
	var errs []error
	get := func(typ string, base vmi.VA, path string) uint64 {
		v, err := kr.field(typ, base, path)
		if err != nil {
			errs = append(errs, err)
		}
		return v
	}
	t.PID = int(int32(get("task_struct", a, "pid")))
	t.TGID = int(int32(get("task_struct", a, "tgid")))
	if off, err := kr.K.Field("task_struct", "comm"); err == nil {
		if b, err := kr.read(a+vmi.VA(off), 16); err == nil {
			for i, c := range b {
				if c == 0 {
					b = b[:i]
					break
				}
			}
			t.Comm = string(b)
		}
	}
	t.Flags = get("task_struct", a, "flags")
	t.State = get("task_struct", a, "__state")
	t.ExitState = get("task_struct", a, "exit_state")
	t.Ptrace = get("task_struct", a, "ptrace")
	t.Seccomp = get("task_struct", a, "seccomp.mode")
	t.Pending = get("task_struct", a, "pending.signal.sig")
	t.Blocked = get("task_struct", a, "blocked.sig")
	t.Switches = get("task_struct", a, "nvcsw") + get("task_struct", a, "nivcsw")
	t.StartTime = get("task_struct", a, "start_time")
	t.Stack = vmi.VA(get("task_struct", a, "stack"))
	t.MM = vmi.VA(get("task_struct", a, "mm"))
	if sig := vmi.VA(get("task_struct", a, "signal")); sig != 0 {
		t.Shared = get("signal_struct", sig, "shared_pending.signal.sig")
		t.Threads = int(get("signal_struct", sig, "nr_threads"))
	}
	if cred := vmi.VA(get("task_struct", a, "cred")); cred != 0 {
		t.UID = uint32(get("cred", cred, "uid.val"))
		t.EUID = uint32(get("cred", cred, "euid.val"))
		// kernel_cap_t: u32 cap[2] up to 6.2, u64 val from 6.3
		if v, err := kr.field("cred", cred, "cap_effective.val"); err == nil {
			t.CapEff = v
		} else if off, err := kr.K.Field("cred", "cap_effective"); err == nil {
			t.CapEff, _ = kr.u64(cred + vmi.VA(off))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return t, fmt.Errorf("inject: task %#x: %w", uint64(a), err)
	}
	if t.MM != 0 {
		pgd := vmi.VA(get("mm_struct", t.MM, "pgd"))
		if pgd >= kr.K.PageOffset {
			t.PGD = vmi.PA(pgd - kr.K.PageOffset)
		}
		t.Vdso = vmi.VA(get("mm_struct", t.MM, "context.vdso"))
		t.StartStack = vmi.VA(get("mm_struct", t.MM, "start_stack"))
		t.Regs, t.RegsErr = kr.userRegs(t.Stack)
	}
	return t, errors.Join(errs...)
}

// userRegs reads the user frame (struct pt_regs) at the top of a task's
// kernel stack, THREAD_SIZE above task->stack. THREAD_SIZE is 16 KiB (32
// KiB with KASAN): the one whose frame holds a user CS and SS is taken.
func (kr *kernel) userRegs(stack vmi.VA) (ptRegs, error) {
	if stack == 0 {
		return ptRegs{}, fmt.Errorf("%w: no kernel stack", ErrCorrupt)
	}
	for _, size := range []uint64{threadSize, 2 * threadSize} {
		top, ok := stack.Add(size)
		if !ok {
			break
		}
		base := top - vmi.VA(kr.ptRegs)
		var r ptRegs
		var errs []error
		for _, m := range []struct {
			dst  *uint64
			name string
		}{{&r.IP, "ip"}, {&r.CS, "cs"}, {&r.SP, "sp"}, {&r.SS, "ss"}, {&r.Flags, "flags"}} {
			v, err := kr.field("pt_regs", base, m.name)
			errs = append(errs, err)
			*m.dst = v
		}
		if err := errors.Join(errs...); err != nil {
			return ptRegs{}, err
		}
		if (r.CS == userCS || r.CS == userCS32) && r.SS&3 == 3 {
			return r, nil
		}
	}
	return ptRegs{}, fmt.Errorf("%w: no user frame (pt_regs with a user CS) at the top of kernel stack %#x", ErrCorrupt, uint64(stack))
}

// pte is the leaf of a user translation with the access rights of its
// walk: user, writable and executable only when every level allows it.
type pte struct {
	PA                   vmi.PA
	User, Write, Execute bool
}

// translate walks the page tables at root for va with the rights of each
// level (Intel SDM vol. 3, 4.6): at most five reads.
func translate(mem vmi.Memory, root vmi.PA, la57 bool, va vmi.VA) (pte, error) {
	if !vmi.Canonical(va, la57) {
		return pte{}, &vmi.PageFault{VA: va}
	}
	level := 4
	if la57 {
		level = 5
	}
	table := vmi.PA(uint64(root) & 0x000ffffffffff000)
	p := pte{User: true, Write: true, Execute: true}
	var b [8]byte
	for ; level >= 1; level-- {
		shift := 12 + 9*uint(level-1)
		at := table + vmi.PA(((uint64(va)>>shift)&0x1ff)*8)
		if _, err := mem.ReadAt(b[:], int64(at)); err != nil {
			return pte{}, err
		}
		e := binary.LittleEndian.Uint64(b[:])
		if e&1 == 0 {
			return pte{}, &vmi.PageFault{VA: va, Level: level, Entry: e, EntryPA: at}
		}
		p.Write = p.Write && e&2 != 0
		p.User = p.User && e&4 != 0
		p.Execute = p.Execute && e&(1<<63) == 0
		if e&0x80 != 0 && level > 1 {
			if level > 3 {
				return pte{}, &vmi.PageFault{VA: va, Level: level, Entry: e, EntryPA: at, Reserved: true}
			}
			size := uint64(1) << shift
			p.PA = vmi.PA(e&0x000ffffffffff000&^(size-1) | uint64(va)&(size-1))
			return p, nil
		}
		table = vmi.PA(e & 0x000ffffffffff000)
	}
	p.PA = table | vmi.PA(uint64(va)&0xfff)
	return p, nil
}

// maxFDWords bounds the descriptor bitmap read: 16 words, fds 0..1023.
const maxFDWords = 16

// openFDs reads the first words of a task's open-descriptor bitmap
// (task->files->fdt->open_fds, at most max_fds bits, at most
// maxFDWords words).
func (kr *kernel) openFDs(task vmi.VA) ([]uint64, error) {
	files, err := kr.field("task_struct", task, "files")
	if err != nil || files == 0 {
		return nil, fmt.Errorf("inject: task %#x: no files: %w", uint64(task), errors.Join(err, ErrCorrupt))
	}
	fdt, err := kr.field("files_struct", vmi.VA(files), "fdt")
	if err != nil {
		return nil, err
	}
	max, err := kr.field("fdtable", vmi.VA(fdt), "max_fds")
	if err != nil {
		return nil, err
	}
	bits, err := kr.field("fdtable", vmi.VA(fdt), "open_fds")
	if err != nil {
		return nil, err
	}
	n := min((max+63)/64, maxFDWords)
	out := make([]uint64, n)
	for i := range out {
		if out[i], err = kr.u64(vmi.VA(bits) + vmi.VA(8*i)); err != nil {
			return nil, err
		}
	}
	return out, nil
}
