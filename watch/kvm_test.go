package watch

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi"
)

// TestDebugRegisters counts the naturally aligned 1/2/4/8-byte pieces an
// x86 debug register each watches, and refuses read-only watches.
func TestDebugRegisters(t *testing.T) {
	for _, c := range []struct {
		addr vmi.VA
		n    uint64
		want int
	}{
		{0x1000, 8, 1}, {0x1000, 1, 1}, {0x1004, 2, 1}, {0x1004, 4, 1},
		{0x1000, 16, 2}, // two quadwords
		{0x1006, 4, 2},  // 2 at 0x1006, 2 at 0x1008
		{0x1001, 8, 4},  // 1 at 0x1001, 2 at 0x1002, 4 at 0x1004, 1 at 0x1008
		{0x1003, 1, 1},  // one byte is always aligned
		{0x1000, 24, 3}, // a qstr-sized range
		{0x1002, 14, 3}, // 2, 4, 8
		{0x1000, 4096, 512},
		{0x1003, 4096, 515}, // 1 and 4 bytes, 511 quadwords, 2 and 1 bytes
	} {
		got, err := DebugRegisters([]vmi.Trap{vmi.Watchpoint(c.addr, c.n, vmi.Write)})
		if err != nil || got != c.want {
			t.Errorf("%#x+%d: %d registers, %v; want %d", uint64(c.addr), c.n, got, err, c.want)
		}
		got, err = DebugRegisters([]vmi.Trap{vmi.Watchpoint(c.addr, c.n, vmi.ReadWrite), vmi.Breakpoint(0x2000)})
		if err != nil || got != c.want {
			t.Errorf("%#x+%d read-write with a breakpoint: %d registers, %v; want %d (a breakpoint is int3)", uint64(c.addr), c.n, got, err, c.want)
		}
	}
	if _, err := DebugRegisters([]vmi.Trap{vmi.Watchpoint(0x1000, 8, vmi.Write), vmi.Watchpoint(0x1008, 4, vmi.Read)}); !errors.Is(err, ErrReadWatch) {
		t.Errorf("a read-only watch: %v, want ErrReadWatch", err)
	}
}

// TestCheckDebugRegistersNamesCount builds a watcher over two targets
// with the member offsets of a kernel (laid out as 6.1's struct inode
// and struct dentry are: every watched member aligned to its size) and
// checks the refusal says how many registers the plan needs.
func TestCheckDebugRegistersNamesCount(t *testing.T) {
	w := &Kernel{iRwsem: 0x88, iSize: 0x50, iMode: 0x0, iUID: 0x4, iNlink: 0x48, iState: 0x90, iStateSize: 8,
		dName: 0x20, dNamePtr: 0x28, dParent: 0x18}
	x := &Watcher{w: w, targets: map[string]*Target{}, pending: map[string]*Pending{}}
	add := func(p string, inode, dentry vmi.VA) {
		x.paths = append(x.paths, p)
		x.targets[p] = &Target{Path: p, Inode: inode, Dentry: dentry}
	}
	add("/a", 0xffff888001000000, 0xffff888002000000)
	if err := x.CheckDebugRegisters(9); err != nil {
		t.Errorf("one file, 9 registers: %v", err)
	}
	err := x.CheckDebugRegisters(KVMDebugRegisters)
	if !errors.Is(err, ErrTooManyWatchpoints) || !strings.Contains(err.Error(), "needs 9 debug registers") || !strings.Contains(err.Error(), "has 4") {
		t.Errorf("one file on KVM: %v, want ErrTooManyWatchpoints naming 9 and 4", err)
	}
	add("/b", 0xffff888001000400, 0xffff888002000400)
	x.paths = append(x.paths, "/c")
	x.pending["/c"] = &Pending{Path: "/c", DirInode: 0xffff888001000800}
	err = x.CheckDebugRegisters(KVMDebugRegisters)
	if !errors.Is(err, ErrTooManyWatchpoints) || !strings.Contains(err.Error(), "needs 19 debug registers") {
		t.Errorf("two files and a pending one on KVM: %v, want 19 registers named", err)
	}
	// an unaligned member (a hostile or unknown layout) costs more pieces
	w.iUID = 0x6
	err = x.CheckDebugRegisters(KVMDebugRegisters)
	if !errors.Is(err, ErrTooManyWatchpoints) || !strings.Contains(err.Error(), "needs 21 debug registers") {
		t.Errorf("i_uid at an odd offset: %v, want 21 registers named", err)
	}
}
