package watch

import (
	"fmt"
	"sort"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// KVMDebugRegisters is how many watchpoints QEMU's GDB stub has for a KVM
// guest on x86: the four address debug registers DR0-DR3. Each watches 1,
// 2, 4 or 8 bytes aligned to its length, for writes or for reads and
// writes; x86 has no read-only data watch (QEMU answers Z3 with an error
// under KVM). Under TCG a watchpoint is any byte range, with no count
// limit.
const KVMDebugRegisters = 4

// ErrTooManyWatchpoints is a plan that needs more hardware watchpoints
// than the guest's backend has (the four debug registers of KVM).
var ErrTooManyWatchpoints = vmerr.New("watch: the plan needs more hardware watchpoints than the guest has", vmerr.ErrUnsupported)

// ErrReadWatch is a read-only watch, which x86 debug registers cannot
// express.
var ErrReadWatch = vmerr.New("watch: a read-only watch has no x86 debug-register form", vmerr.ErrUnsupported)

// DebugRegisters is how many x86 debug registers traps need: each
// watched range is cut into naturally aligned pieces of 8, 4, 2 or 1
// bytes (the largest that fits at each offset), one register each (a
// vmi.Trap that validates is one piece; a longer range, as other tracers
// take, is several).
// Execute traps are software breakpoints and need none. A read-only watch
// is ErrReadWatch.
func DebugRegisters(traps []vmi.Trap) (int, error) {
	n := 0
	for _, t := range traps {
		if t.Access == vmi.Execute {
			continue
		}
		if t.Len == 0 {
			return 0, fmt.Errorf("watch: an empty watch at %v", t.Addr)
		}
		if t.Access.Read && !t.Access.Write {
			return 0, fmt.Errorf("%w: %v", ErrReadWatch, t)
		}
		n += alignedPieces(uint64(t.Addr), t.Len)
	}
	return n, nil
}

// alignedPieces is how many naturally aligned 1, 2, 4 or 8-byte pieces
// cover [a, a+n).
func alignedPieces(a, n uint64) int {
	k := 0
	piece := func() {
		s := uint64(8)
		for s > 1 && (a%s != 0 || s > n) {
			s /= 2
		}
		a, n, k = a+s, n-s, k+1
	}
	for n > 0 && a%8 != 0 {
		piece()
	}
	k += int(min(n/8, 1<<40)) // whole quadwords (bounded: a hostile length does not loop)
	a, n = a+n/8*8, n%8
	for n > 0 {
		piece()
	}
	return k
}

// Plan is the watchpoints Run arms first: the watched fields of every
// resolved target and the directory lock of every pending path, sorted
// by address.
func (x *Watcher) Plan() []vmi.Trap {
	set := map[vmi.Trap]bool{}
	for _, p := range x.paths {
		if t := x.targets[p]; t != nil {
			for tr := range x.trapsOf(t) {
				set[tr] = true
			}
		} else if pd := x.pending[p]; pd != nil && pd.DirInode != 0 {
			set[x.pendingTrap(pd)] = true
		}
	}
	plan := make([]vmi.Trap, 0, len(set))
	for tr := range set {
		plan = append(plan, tr)
	}
	sort.Slice(plan, func(i, j int) bool {
		if plan[i].Addr != plan[j].Addr {
			return plan[i].Addr < plan[j].Addr
		}
		return plan[i].Len < plan[j].Len
	})
	return plan
}

// CheckDebugRegisters refuses the plan when it needs more than have
// debug registers (KVMDebugRegisters for a KVM guest), or a read-only
// watch; the error says how many it needs.
func (x *Watcher) CheckDebugRegisters(have int) error {
	plan := x.Plan()
	n, err := DebugRegisters(plan)
	if err != nil {
		return err
	}
	if n > have {
		return fmt.Errorf("%w: watching %d paths needs %d debug registers (%d watched ranges), the guest has %d",
			ErrTooManyWatchpoints, len(x.paths), n, len(plan), have)
	}
	return nil
}
