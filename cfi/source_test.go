package cfi

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

func pluginMsg(magic, cpu uint32, from, to, ns uint64) []byte {
	b := make([]byte, pluginMsgLen)
	binary.LittleEndian.PutUint32(b, magic)
	binary.LittleEndian.PutUint32(b[4:], cpu)
	binary.LittleEndian.PutUint64(b[8:], from)
	binary.LittleEndian.PutUint64(b[16:], to)
	binary.LittleEndian.PutUint64(b[24:], ns)
	return b
}

func TestDecodePluginMsg(t *testing.T) {
	ev, err := decodePluginMsg(pluginMsg(pluginMagic, 0, 0xffffffff81000000, 0xffffffff81001000, 5e9), 32)
	if err != nil || ev.CPU != 0 || ev.From != 0xffffffff81000000 || ev.Page != 0xffffffff81001000 || ev.Time.UnixNano() != 5e9 || ev.Replay {
		t.Fatalf("%+v, %v", ev, err)
	}
	ev, err = decodePluginMsg(pluginMsg(pluginMagic, pluginReplay, 0, 0xffffffff81001000, 0), 0)
	if err != nil || !ev.Replay || ev.From != 0 {
		t.Fatalf("replay: %+v, %v", ev, err)
	}
	for name, b := range map[string][]byte{
		"magic":      pluginMsg(1, 0, 0, 0xffffffff81001000, 0),
		"user page":  pluginMsg(pluginMagic, 0, 0, 0x401000, 0),
		"unaligned":  pluginMsg(pluginMagic, 0, 0, 0xffffffff81001010, 0),
		"bad from":   pluginMsg(pluginMagic, 0, 0x1000, 0xffffffff81001000, 0),
		"vcpu range": pluginMsg(pluginMagic, 5000, 0, 0xffffffff81001000, 0),
	} {
		_, err := decodePluginMsg(b, 64)
		var fe *vmerr.FormatError
		if !errors.Is(err, ErrPluginStream) || !errors.As(err, &fe) || fe.Offset != 64 {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestSeenProbability(t *testing.T) {
	st := SampleStats{Kernel: 1000}
	if p := st.SeenProbability(1e-3); p < 0.63 || p > 0.633 { // 1-(1-1e-3)^1000 = 0.6323
		t.Errorf("p = %v", p)
	}
	if st.SeenProbability(0) != 0 || st.SeenProbability(1) != 1 {
		t.Error("bounds")
	}
}

func TestRegionsPageOf(t *testing.T) {
	r := &Regions{Text: 0xffffffff81000000, Etext: 0xffffffff81003100, Build: Build{TextPages: 4},
		Modules: []moduleText{{Name: "dummy", Base: 0xffffffffc0000000, Size: 0x2000}, {Name: "ext4", Base: 0xffffffffc0010000, Size: 0x1000}},
		syms:    []sym{{addr: 0xffffffff81000000, name: "_stext"}, {addr: 0xffffffff81002010, name: "f"}, {addr: 0xffffffffc0001000, name: "g", owner: "dummy"}}}
	for _, tc := range []struct {
		va   vmi.VA
		p    Page
		ok   bool
		name string
	}{
		{0xffffffff81000000, Core(0), true, "_stext"},
		{0xffffffff81003050, Core(3), true, "f"},
		{0xffffffff81003100, Page{}, false, ""},
		{0xffffffffc0001fff, Page{"dummy", 1}, true, "g"},
		{0xffffffffc0002000, Page{}, false, ""},
		{0xffffffffc0010010, Page{"ext4", 0}, true, ""},
		{0xffffffff80000000, Page{}, false, ""},
	} {
		p, ok := r.PageOf(tc.va)
		name, _, owner := r.Symbolize(tc.va)
		if p != tc.p || ok != tc.ok || name != tc.name || (ok && owner == ownerNone) || (!ok && owner != ownerNone) {
			t.Errorf("%#x: %v %v %q %q", uint64(tc.va), p, ok, name, owner)
		}
		if ok {
			if va, vok := r.VA(p); !vok || va != pageOf(tc.va) {
				t.Errorf("VA(%v) = %#x %v", p, uint64(va), vok)
			}
		}
	}
}

// FuzzPluginMessage: a message either decodes to an event on a kernel
// page (page-aligned, From 0 or a kernel page) or is a FormatError
// wrapping ErrPluginStream at the offset given.
func FuzzPluginMessage(f *testing.F) {
	f.Add(pluginMsg(pluginMagic, 0, 0xffffffff81000000, 0xffffffff81001000, 1))
	f.Add(pluginMsg(pluginMagic, pluginReplay, 0, 0xffffffffc0001000, 0))
	f.Add(pluginMsg(1, 2, 3, 4, 5))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < pluginMsgLen {
			return
		}
		ev, err := decodePluginMsg(b[:pluginMsgLen], 96)
		if err != nil {
			var fe *vmerr.FormatError
			if !errors.Is(err, ErrPluginStream) || !errors.As(err, &fe) || fe.Offset != 96 {
				t.Fatalf("error %v", err)
			}
			return
		}
		if ev.Page < KernelMin || pageOf(ev.Page) != ev.Page || (ev.From != 0 && (ev.From < KernelMin || pageOf(ev.From) != ev.From)) || ev.CPU >= 4096 {
			t.Fatalf("event %+v", ev)
		}
	})
}
