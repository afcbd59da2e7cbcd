package watch

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

func testSymbols(t testing.TB) *Symbolizer {
	t.Helper()
	s, err := linux.ParseKallsyms(strings.NewReader(`ffffffff81000000 T _stext
ffffffff81000100 T vfs_read
ffffffff81000200 T ksys_read
ffffffff81000300 T do_syscall_64
ffffffff81000400 T entry_SYSCALL_64
ffffffff81000500 T __x86_indirect_thunk_rax
ffffffff81000600 T ext4_file_read_iter
ffffffff81001000 T _etext
`))
	if err != nil {
		t.Fatal(err)
	}
	return NewSymbolizer(s)
}

// call writes `call target` ending at ret into code.
func call(code map[vmi.VA][5]byte, ret, target vmi.VA) {
	var b [5]byte
	b[0] = 0xe8
	binary.LittleEndian.PutUint32(b[1:], uint32(int32(int64(target)-int64(ret))))
	code[ret] = b
}

func testCode() *codeReader {
	code := map[vmi.VA][5]byte{}
	call(code, 0xffffffff81000620, 0xffffffff81000200) // never chained: ext4 "calls" ksys_read
	call(code, 0xffffffff81000210, 0xffffffff81000100) // ksys_read calls vfs_read
	call(code, 0xffffffff81000310, 0xffffffff81000500) // do_syscall_64 calls the thunk (sys_call_table)
	call(code, 0xffffffff81000320, 0xffffffff81000200) // do_syscall_64 calls ksys_read
	call(code, 0xffffffff81000410, 0xffffffff81000300) // entry calls do_syscall_64
	return &codeReader{cache: map[vmi.VA][5]byte{}, read: func(p []byte, va vmi.VA) error {
		b, ok := code[va+5]
		if !ok {
			return vmi.ErrNotPresent
		}
		copy(p, b[:])
		return nil
	}}
}

func stackOf(words ...uint64) []byte {
	b := make([]byte, 8*len(words))
	for i, w := range words {
		binary.LittleEndian.PutUint64(b[8*i:], w)
	}
	return b
}

// TestClassifyChained: a VFS entry counts only when the frame outside it
// called the function it returns into (or an indirect thunk); a stale
// return address into the same entry does not.
func TestClassifyChained(t *testing.T) {
	z := testSymbols(t)
	for _, tc := range []struct {
		name  string
		stack []uint64
		entry string
		nsys  int
	}{
		{"read through the thunk", []uint64{0x1234, 0xffffffff81000210, 0, 0xffffffff81000310, 0xffffffff81000410}, "vfs_read", 1},
		{"read, direct", []uint64{0xffffffff81000210, 0xffffffff81000320, 0xffffffff81000410}, "vfs_read", 1},
		{"stale vfs_read return", []uint64{0xffffffff81000210, 0xffffffff81000410}, "", 1},
		{"not after a call", []uint64{0xffffffff81000211, 0xffffffff81000100, 0xffffffff81000410}, "", 1},
		{"outside text", []uint64{0xffffffff81002000, 0x10}, "", 0},
	} {
		frames := z.ScanStack(stackOf(tc.stack...), 0xffffc90000000000, testCode())
		entry, _ := classify(frames, "ext4_file_read_iter")
		if entry != tc.entry {
			t.Errorf("%s: entry %q, want %q (frames %+v)", tc.name, entry, tc.entry, frames)
		}
		n := 0
		for _, f := range frames {
			if f.Callee == "do_syscall_64" {
				n++
			}
		}
		if n != tc.nsys {
			t.Errorf("%s: %d system-call frames, want %d", tc.name, n, tc.nsys)
		}
	}
}

// FuzzScanStack scans hostile stacks: it never panics, keeps at most
// maxFrames frames, and each frame is a return address in text, in the
// stack, right after a call to a known function.
func FuzzScanStack(f *testing.F) {
	f.Add(stackOf(0xffffffff81000210, 0xffffffff81000310, 0xffffffff81000410))
	f.Add(make([]byte, 4096))
	f.Fuzz(func(t *testing.T, b []byte) {
		z := testSymbols(t)
		base := vmi.VA(0xffffc90000000000)
		frames := z.ScanStack(b, base, testCode())
		if len(frames) > maxFrames {
			t.Fatalf("%d frames", len(frames))
		}
		for _, fr := range frames {
			if !z.inText(fr.Return) || fr.Slot < base || uint64(fr.Slot-base)+8 > uint64(len(b)) || fr.Callee == "" {
				t.Fatalf("frame %+v", fr)
			}
		}
		classify(frames, "")
	})
}
