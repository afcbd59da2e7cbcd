package linux

import (
	"encoding/binary"
	"testing"

	"github.com/vmscope/vmscope/vmi"
)

// The call encodings a kernel return address follows (as GNU as encodes
// them), and non-calls ending at the same place. Targets of the direct
// calls are worked out by hand: ret + the little-endian rel32.
func TestCallBefore(t *testing.T) {
	const ret = vmi.VA(0xffffffff81000100)
	for _, tc := range []struct {
		name       string
		b          []byte
		ok, direct bool
		target     vmi.VA
	}{
		{"call rel32", []byte{0x90, 0x90, 0xe8, 0x11, 0x22, 0x33, 0x44}, true, true, 0xffffffffc5332311},
		{"call rel32 backwards", []byte{0x90, 0x90, 0xe8, 0x00, 0xff, 0xff, 0xff}, true, true, 0xffffffff81000000},
		{"call rel32, 5 bytes only", []byte{0xe8, 0x00, 0xff, 0xff, 0xff}, true, true, 0xffffffff81000000},
		{"call *%rax", []byte{0x90, 0x90, 0x90, 0x90, 0x90, 0xff, 0xd0}, true, false, 0},
		{"call *%r11", []byte{0x90, 0x90, 0x90, 0x90, 0x41, 0xff, 0xd3}, true, false, 0},
		{"call *0x10(%rbx)", []byte{0x90, 0x90, 0x90, 0x90, 0xff, 0x53, 0x10}, true, false, 0},
		{"call *0x8(%r12), 5 bytes", []byte{0x90, 0x90, 0x41, 0xff, 0x54, 0x24, 0x08}, true, false, 0},
		{"call *0x12345678(%rip)", []byte{0x90, 0xff, 0x15, 0x78, 0x56, 0x34, 0x12}, true, false, 0},
		{"call *0x8(,%rax,8)", []byte{0xff, 0x14, 0xc5, 0x08, 0x00, 0x00, 0x00}, true, false, 0},
		{"jmp rel32", []byte{0x90, 0x90, 0xe9, 0x11, 0x22, 0x33, 0x44}, false, false, 0},
		{"mov", []byte{0x90, 0x90, 0x90, 0x90, 0x48, 0x89, 0xc7}, false, false, 0},
		{"nops", []byte{0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90}, false, false, 0},
		{"call *%rax cut to 1 byte", []byte{0xd0}, false, false, 0},
		{"empty", nil, false, false, 0},
	} {
		target, direct, ok := CallBefore(tc.b, ret)
		if ok != tc.ok || direct != tc.direct || target != tc.target {
			t.Errorf("%s: target %#x direct %v ok %v, want %#x %v %v", tc.name, uint64(target), direct, ok, uint64(tc.target), tc.direct, tc.ok)
		}
	}
}

// FuzzCallBefore decodes hostile code bytes without panicking; any bytes
// followed by a call rel32 (E8) end with a direct call to ret + rel32.
func FuzzCallBefore(f *testing.F) {
	f.Add([]byte{0, 0, 0xe8, 1, 2, 3, 4}, uint64(0xffffffff81000000), int32(-4))
	f.Add([]byte{0, 0, 0, 0, 0, 0xff, 0xd0}, uint64(0), int32(0))
	f.Add([]byte{0xff, 0x15, 0, 0, 0, 0, 0}, uint64(1), int32(1))
	f.Fuzz(func(t *testing.T, code []byte, ret uint64, rel int32) {
		if target, direct, ok := CallBefore(code, vmi.VA(ret)); !ok && (direct || target != 0) || !direct && target != 0 {
			t.Fatalf("% x: target %#x direct %v ok %v", code, uint64(target), direct, ok)
		}
		call := binary.LittleEndian.AppendUint32(append(append([]byte{}, code...), 0xe8), uint32(rel))
		target, direct, ok := CallBefore(call, vmi.VA(ret))
		if !ok || !direct || target != vmi.VA(ret+uint64(int64(rel))) {
			t.Fatalf("% x followed by a call rel32 %#x: target %#x direct %v ok %v", code, rel, uint64(target), direct, ok)
		}
	})
}
