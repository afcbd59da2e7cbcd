package vmi

import (
	"errors"
	"testing"
)

// TestPageExec: a page execute trap covers exactly its 4 KiB page, and
// Validate (the shape a debug stub takes) refuses it.
func TestPageExec(t *testing.T) {
	tr := PageExec(0xffffffff81001234)
	if tr.Addr != 0xffffffff81001000 || !tr.IsPageExec() {
		t.Fatalf("PageExec: %+v", tr)
	}
	if !tr.Covers(0xffffffff81001000) || !tr.Covers(0xffffffff81001fff) || tr.Covers(0xffffffff81002000) || tr.Covers(0xffffffff81000fff) {
		t.Error("a page trap covers other than its page")
	}
	if err := tr.Validate(); !errors.Is(err, ErrBadTrap) {
		t.Errorf("Validate: %v, want ErrBadTrap", err)
	}
	for _, x := range []Trap{Breakpoint(0xffffffff81001000), {Addr: 0xffffffff81001008, Len: PageExecSize, Access: Execute}, {Addr: 0xffffffff81001000, Len: PageExecSize, Access: Read}} {
		if x.IsPageExec() {
			t.Errorf("%+v: IsPageExec", x)
		}
	}
}
