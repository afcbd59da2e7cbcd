package inject

import "testing"

// TestRepStringLen decodes the rep string instructions the kernel's
// clear_page_rep, memset and copy routines use, and refuses what is not
// one (a plain string op, rep ret, a REX not before the opcode).
func TestRepStringLen(t *testing.T) {
	for _, c := range []struct {
		b    []byte
		want int
	}{
		{[]byte{0xf3, 0x48, 0xab, 0xc3}, 3},       // rep stosq
		{[]byte{0xf3, 0xa4, 0xc3}, 2},             // rep movsb
		{[]byte{0xf3, 0x48, 0xa5}, 3},             // rep movsq
		{[]byte{0x66, 0xf3, 0xab}, 3},             // rep stosw
		{[]byte{0xf2, 0xae}, 2},                   // repne scasb
		{[]byte{0x64, 0xf3, 0x67, 0x48, 0xa4}, 5}, // fs rep addr32 REX.W movsb
		{[]byte{0x48, 0xab}, 0},                   // stosq, no rep
		{[]byte{0xf3, 0xc3}, 0},                   // rep ret
		{[]byte{0xf3, 0x48, 0x48}, 0},             // REX then REX
		{[]byte{0xf3, 0x0f, 0xb8, 0xc0}, 0},       // popcnt
		{[]byte{0xf3, 0xf3, 0xf3}, 0},             // prefixes only
		{nil, 0},
	} {
		if got := repStringLen(c.b); got != c.want {
			t.Errorf("% x: %d, want %d", c.b, got, c.want)
		}
	}
}

// TestBufferFor pins the buffer policy: 256 KiB below full; under full 1
// KiB of stack for stat and a cat capped at 512 bytes, 20 KiB for ls and
// cat, one page for the rest.
func TestBufferFor(t *testing.T) {
	for _, c := range []struct {
		op   Op
		p    Protect
		want uint64
	}{
		{Op{Kind: "cat"}, ProtectOff, bufSize},
		{Op{Kind: "stat"}, ProtectBefore, bufSize},
		{Op{Kind: "stat"}, ProtectFull, stackBuf},
		{Op{Kind: "cat", MaxBytes: 512}, ProtectFull, stackBuf},
		{Op{Kind: "cat", MaxBytes: 513}, ProtectFull, bufSizeStepped},
		{Op{Kind: "cat"}, ProtectFull, bufSizeStepped},
		{Op{Kind: "ls"}, ProtectFull, bufSizeStepped},
		{Op{Kind: "ls", Long: true}, ProtectFull, bufSizeStepSmall},
		{Op{Kind: "ps"}, ProtectFull, bufSizeStepSmall},
	} {
		if got := bufferFor(c.op, c.p); got != c.want {
			t.Errorf("%+v at %v: %d, want %d", c.op, c.p, got, c.want)
		}
	}
}
