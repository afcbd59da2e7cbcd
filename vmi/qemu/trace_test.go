package qemu

import (
	"errors"
	"testing"

	"github.com/vmscope/vmscope/vmi"
)

// TestStopOf maps stop replies as QEMU 7.2's stub sends them to typed
// stop events.
func TestStopOf(t *testing.T) {
	for _, c := range []struct {
		reply string
		want  vmi.Stop
	}{
		{"T05thread:01;", vmi.Stop{Reason: vmi.StopTrap, CPU: 0, Access: vmi.Execute}},
		{"T05thread:02;watch:ffffffff82a05000;", vmi.Stop{Reason: vmi.StopTrap, CPU: 1, Access: vmi.Write, Addr: 0xffffffff82a05000}},
		{"T05thread:01;rwatch:1000;", vmi.Stop{Reason: vmi.StopTrap, CPU: 0, Access: vmi.Read, Addr: 0x1000}},
		{"T05thread:01;awatch:1008;", vmi.Stop{Reason: vmi.StopTrap, CPU: 0, Access: vmi.ReadWrite, Addr: 0x1008}},
		{"T02thread:01;", vmi.Stop{Reason: vmi.StopPaused, CPU: 0}},
		{"S05", vmi.Stop{Reason: vmi.StopTrap, CPU: -1, Access: vmi.Execute}},
		{"W00", vmi.Stop{Reason: vmi.StopExited, CPU: -1}},
		{"X09", vmi.Stop{Reason: vmi.StopExited, CPU: -1}},
	} {
		if got := stopOf(parseStop([]byte(c.reply))); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.reply, got, c.want)
		}
	}
}

// TestBreakpointOf maps traps to the stub's Z types.
func TestBreakpointOf(t *testing.T) {
	g := &Guest{execKind: SoftwareBreak}
	h := &Guest{execKind: HardwareBreak}
	for _, c := range []struct {
		g    *Guest
		trap vmi.Trap
		want Breakpoint
	}{
		{g, vmi.Breakpoint(0xffffffff81000000), Breakpoint{SoftwareBreak, 0xffffffff81000000, 1}},
		{h, vmi.Breakpoint(0xffffffff81000000), Breakpoint{HardwareBreak, 0xffffffff81000000, 1}},
		{g, vmi.Watchpoint(0x1000, 8, vmi.Write), Breakpoint{WriteWatch, 0x1000, 8}},
		{g, vmi.Watchpoint(0x1000, 4, vmi.Read), Breakpoint{ReadWatch, 0x1000, 4}},
		{g, vmi.Watchpoint(0x1000, 2, vmi.ReadWrite), Breakpoint{AccessWatch, 0x1000, 2}},
	} {
		got, err := c.g.breakpointOf(c.trap)
		if err != nil || got != c.want {
			t.Errorf("%v: %+v %v, want %+v", c.trap, got, err, c.want)
		}
	}
	if _, err := g.breakpointOf(vmi.Watchpoint(0x1001, 8, vmi.Write)); !errors.Is(err, vmi.ErrBadTrap) {
		t.Errorf("misaligned watchpoint: %v", err)
	}
}
