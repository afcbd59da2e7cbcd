package cfi

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// maxThreadSize caps the stack size derived from the kernel.
const maxThreadSize = 1 << 20

// ThreadSize is the kernel's THREAD_SIZE: the span of init_task's stack,
// __end_init_task - __start_init_task (vmlinux.lds's INIT_TASK_DATA places
// one THREAD_SIZE between them).
func ThreadSize(k *linux.Kernel) (uint64, error) {
	s, ok1 := k.Symbols.Addr("__start_init_task")
	e, ok2 := k.Symbols.Addr("__end_init_task")
	if !ok1 || !ok2 {
		return 0, fmt.Errorf("no __start_init_task/__end_init_task: %w", vmerr.ErrNotPresent)
	}
	n := uint64(e - s)
	if e <= s || n > maxThreadSize || n&(n-1) != 0 {
		return 0, fmt.Errorf("init task stack [%#x, %#x) is not a power-of-two size: %w", uint64(s), uint64(e), vmi.ErrCorrupt)
	}
	return n, nil
}

// execSet answers whether an address is in a supervisor-executable page.
type execSet []ExecRange

func (s execSet) contains(va vmi.VA) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i].End > va })
	return i < len(s) && va >= s[i].Start
}

// stacks scans each task's kernel stack, from its saved stack pointer
// (thread.sp; the whole stack when that is outside it) to the top
// (task_struct.stack + THREAD_SIZE), for return addresses into
// executable kernel pages that are outside every known code region.
func (c *checker) stacks(ctx context.Context) (int, []Finding, error) {
	k := c.k
	size, err := ThreadSize(k)
	if err != nil {
		return 0, nil, err
	}
	tasks, probs, err := k.Tasks(ctx, true)
	if err != nil {
		return 0, nil, err
	}
	c.rep.Problems = append(c.rep.Problems, probs...)
	exec, err := c.execRanges(ctx)
	if err != nil {
		return 0, nil, err
	}
	var all []linux.Task
	for _, t := range tasks {
		if len(t.Threads) == 0 {
			all = append(all, t)
		}
		all = append(all, t.Threads...)
	}
	var out []Finding
	frames := 0
	scanned := map[vmi.VA]bool{} // a stack is scanned once, whoever claims it
	buf := make([]byte, size)
	code := make([]byte, linux.MaxCallLen)
	for _, t := range all {
		if err := ctx.Err(); err != nil {
			return frames, out, err
		}
		r := newReader(k)
		stack := vmi.VA(r.uint("task_struct", vmi.VA(t.Addr), "stack"))
		sp := vmi.VA(r.uint("task_struct", vmi.VA(t.Addr), "thread.sp"))
		if r.err != nil {
			c.problem(fmt.Sprintf("stack of task %d", t.PID), vmi.VA(t.Addr), r.err)
			continue
		}
		top, ok := stack.Add(size)
		if !kernelPtr(stack) || !ok || uint64(stack)%size != 0 {
			c.problem(fmt.Sprintf("stack of task %d", t.PID), stack, fmt.Errorf("not a kernel stack of %d bytes: %w", size, vmi.ErrCorrupt))
			continue
		}
		if scanned[stack] {
			continue
		}
		scanned[stack] = true
		from := stack
		if sp > stack && sp < top {
			from = sp &^ 7
		}
		b := buf[:top-from]
		if _, err := k.AS.ReadVirt(b, from); err != nil {
			c.problem(fmt.Sprintf("stack of task %d", t.PID), from, err)
			continue
		}
		for i := 0; i+8 <= len(b); i += 8 {
			v := vmi.VA(binary.LittleEndian.Uint64(b[i:]))
			if !kernelPtr(v) || !exec.contains(v) || !exec.contains(v-1) {
				continue
			}
			if _, err := k.AS.ReadVirt(code, v-linux.MaxCallLen); err != nil {
				continue
			}
			if _, _, ok := linux.CallBefore(code, v); !ok {
				continue
			}
			frames++
			if !c.m.Known(v) {
				at := from + vmi.VA(i)
				out = append(out, c.m.newFinding(KindStackReturn, v, fmt.Sprintf("stack of task %d (%s) at %#x", t.PID, t.Comm, uint64(at)),
					"return address after a call, in an executable page outside every known code region"))
			}
		}
	}
	return frames, out, nil
}

// execRanges is the supervisor-executable mappings, walked once.
func (c *checker) execRanges(ctx context.Context) (execSet, error) {
	if c.exec != nil {
		return c.exec, nil
	}
	ranges, probs, err := ExecRanges(ctx, c.k.Mem, c.k.AS.Root, c.k.AS.LA57)
	c.rep.Problems = append(c.rep.Problems, probs...)
	if err != nil {
		return nil, err
	}
	c.exec = execSet(ranges)
	return c.exec, nil
}
