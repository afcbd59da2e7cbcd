package vmi_test

import (
	"errors"
	"math"
	"testing"

	"github.com/vmscope/vmscope/vmi"
)

func TestPageNumbers(t *testing.T) {
	for _, c := range []struct {
		a          uint64
		frame      uint64
		base, off  uint64
		up         uint64
		upOK       bool
		frameAddr  uint64
		frameAddOK bool
	}{
		{0, 0, 0, 0, 0, true, 0, true},
		{0x1000, 1, 0x1000, 0, 0x1000, true, 0x1000, true},
		{0x1fff, 1, 0x1000, 0xfff, 0x2000, true, 0x1000, true},
		{0x123456789, 0x123456, 0x123456000, 0x789, 0x123457000, true, 0x123456000, true},
		{math.MaxUint64, 1<<52 - 1, math.MaxUint64 &^ 0xfff, 0xfff, 0, false, math.MaxUint64 &^ 0xfff, true},
		{math.MaxUint64 - 0xfff, 1<<52 - 1, math.MaxUint64 &^ 0xfff, 0, math.MaxUint64 &^ 0xfff, true, math.MaxUint64 &^ 0xfff, true},
	} {
		pa, va := vmi.PA(c.a), vmi.VA(c.a)
		if uint64(pa.Frame()) != c.frame || uint64(va.Page()) != c.frame {
			t.Errorf("%#x: frame %#x page %#x, want %#x", c.a, pa.Frame(), va.Page(), c.frame)
		}
		if uint64(pa.PageBase()) != c.base || uint64(va.PageBase()) != c.base || pa.PageOffset() != c.off || va.PageOffset() != c.off {
			t.Errorf("%#x: base %v/%v offset %#x/%#x", c.a, pa.PageBase(), va.PageBase(), pa.PageOffset(), va.PageOffset())
		}
		if pa.PageAligned() != (c.off == 0) || va.PageAligned() != (c.off == 0) {
			t.Errorf("%#x: aligned %v", c.a, pa.PageAligned())
		}
		if u, ok := pa.RoundUp(); ok != c.upOK || ok && uint64(u) != c.up {
			t.Errorf("%#x: PA round up %v %v", c.a, u, ok)
		}
		if u, ok := va.RoundUp(); ok != c.upOK || ok && uint64(u) != c.up {
			t.Errorf("%#x: VA round up %v %v", c.a, u, ok)
		}
		if a, ok := pa.Frame().Addr(); ok != c.frameAddOK || uint64(a) != c.frameAddr {
			t.Errorf("%#x: frame address %v %v", c.a, a, ok)
		}
		if a, ok := va.Page().Addr(); ok != c.frameAddOK || uint64(a) != c.frameAddr {
			t.Errorf("%#x: page address %v %v", c.a, a, ok)
		}
	}
	// frame and page numbers past 2^52 have no address
	if _, ok := vmi.GFN(1 << 52).Addr(); ok {
		t.Error("GFN 2^52 has an address")
	}
	if _, ok := vmi.VPN(math.MaxUint64).Addr(); ok {
		t.Error("VPN 2^64-1 has an address")
	}
	// spans
	if f, l, ok := vmi.PA(0xfff).Frames(2); !ok || f != 0 || l != 1 {
		t.Errorf("Frames(0xfff, 2) = %d %d %v", f, l, ok)
	}
	if _, _, ok := vmi.PA(0x1000).Frames(0); ok {
		t.Error("Frames of 0 bytes")
	}
	if _, _, ok := vmi.PA(math.MaxUint64).Frames(2); ok {
		t.Error("Frames past 2^64")
	}
	if f, l, ok := vmi.VA(math.MaxUint64).Pages(1); !ok || f != l || uint64(f) != 1<<52-1 {
		t.Errorf("Pages(2^64-1, 1) = %d %d %v", f, l, ok)
	}
	if _, _, ok := vmi.VA(math.MaxUint64 - 1).Pages(3); ok {
		t.Error("Pages past 2^64")
	}
}

func TestAccess(t *testing.T) {
	for s, want := range map[string]vmi.Access{
		"r": vmi.Read, "w": vmi.Write, "x": vmi.Execute, "rw": vmi.ReadWrite, "wr": vmi.ReadWrite,
		"rwx": vmi.AnyAccess, "r-x": {Read: true, Execute: true},
	} {
		a, err := vmi.ParseAccess(s)
		if err != nil || a != want {
			t.Errorf("ParseAccess(%q) = %v %v, want %v", s, a, err, want)
		}
		if b, err := vmi.ParseAccess(a.String()); err != nil || b != a {
			t.Errorf("%v does not parse back: %v %v", a, b, err)
		}
	}
	for _, s := range []string{"", "-", "---", "q", "rwq"} {
		if _, err := vmi.ParseAccess(s); err == nil {
			t.Errorf("ParseAccess(%q) accepted", s)
		}
	}
	if vmi.Read.Union(vmi.Write) != vmi.ReadWrite || vmi.NoAccess.Any() || !vmi.Execute.Any() {
		t.Error("Union/Any")
	}
	if vmi.NoAccess.String() != "---" || vmi.AnyAccess.String() != "rwx" || vmi.Write.String() != "-w-" {
		t.Errorf("String: %s %s %s", vmi.NoAccess, vmi.AnyAccess, vmi.Write)
	}
}

func TestTrapValidate(t *testing.T) {
	good := []vmi.Trap{
		vmi.Breakpoint(0xffffffff81000000),
		vmi.Breakpoint(0xffffffff81000001), // instructions need no alignment
		vmi.Watchpoint(0x1000, 8, vmi.Write),
		vmi.Watchpoint(0x1004, 4, vmi.Read),
		vmi.Watchpoint(0x1002, 2, vmi.ReadWrite),
		vmi.Watchpoint(0x1001, 1, vmi.Write),
	}
	for _, tr := range good {
		if err := tr.Validate(); err != nil {
			t.Errorf("%v: %v", tr, err)
		}
	}
	bad := []vmi.Trap{
		{Addr: 0x1000, Len: 2, Access: vmi.Execute},
		{Addr: 0x1000, Len: 1, Access: vmi.NoAccess},
		{Addr: 0x1000, Len: 8, Access: vmi.AnyAccess},
		vmi.Watchpoint(0x1000, 3, vmi.Write),
		vmi.Watchpoint(0x1000, 16, vmi.Write),
		vmi.Watchpoint(0x1000, 0, vmi.Write),
		vmi.Watchpoint(0x1004, 8, vmi.Write),
		vmi.Watchpoint(0x1001, 2, vmi.Read),
	}
	for _, tr := range bad {
		if err := tr.Validate(); !errors.Is(err, vmi.ErrBadTrap) {
			t.Errorf("%+v: %v, want ErrBadTrap", tr, err)
		}
	}
	w := vmi.Watchpoint(0x1000, 8, vmi.Write)
	if !w.Covers(0x1000) || !w.Covers(0x1007) || w.Covers(0x1008) || w.Covers(0xfff) {
		t.Error("Covers")
	}
}
