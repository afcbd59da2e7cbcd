package watch

import (
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"github.com/vmscope/vmscope/vmi"
)

// TestMemAccess recomputes the memory operand of decoded instructions
// from the registers after them, and refuses the ones whose address
// cannot be known.
func TestMemAccess(t *testing.T) {
	regs := vmi.CPU{RAX: 0x1000, RBX: 0x2000, RCX: 3, RDI: 0x4000, R12: 0x5000}
	const rip = 0xffffffff81000010
	for _, c := range []struct {
		name   string
		code   []byte
		lo, hi uint64
		ok     bool
	}{
		{"mov %rax,0x48(%rbx)", []byte{0x48, 0x89, 0x43, 0x48}, 0x2048, 0x2050, true},
		{"movl $0,(%rdi,%rcx,4)", []byte{0xc7, 0x04, 0x8f, 0, 0, 0, 0}, 0x400c, 0x4010, true},
		{"mov 0x10(%rip),%eax", []byte{0x8b, 0x05, 0x10, 0, 0, 0}, rip + 0x10, rip + 0x14, true},
		{"movw $1,0x8(%r12)", []byte{0x66, 0x41, 0xc7, 0x44, 0x24, 0x08, 0x01, 0x00}, 0x5008, 0x500a, true},
		{"mov 0x10(%rax),%rax: the load overwrote its base", []byte{0x48, 0x8b, 0x40, 0x10}, 0, 0, false},
		{"mov 0x10(%rax),%eax: a part of the base", []byte{0x8b, 0x40, 0x10}, 0, 0, false},
		{"mov %gs:0x1234,%rax: a segment base", []byte{0x65, 0x48, 0x8b, 0x04, 0x25, 0x34, 0x12, 0, 0}, 0, 0, false},
		{"lock cmpxchg %rcx,(%rdi): writes rax too", []byte{0xf0, 0x48, 0x0f, 0xb1, 0x0f}, 0, 0, false},
		{"push %rax: implicit stack", []byte{0x50}, 0, 0, false},
		{"add %rcx,%rbx: no memory", []byte{0x48, 0x01, 0xcb}, 0, 0, false},
	} {
		inst, err := x86asm.Decode(c.code, 64)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		lo, hi, ok := memAccess(inst, rip, regs)
		if ok != c.ok || ok && (uint64(lo) != c.lo || uint64(hi) != c.hi) {
			t.Errorf("%s (%v): [%#x, %#x) %v, want [%#x, %#x) %v", c.name, inst, uint64(lo), uint64(hi), ok, c.lo, c.hi, c.ok)
		}
	}
}

// TestRepBefore recognizes a completed rep stos or movs from the bytes
// before RIP.
func TestRepBefore(t *testing.T) {
	for _, c := range []struct {
		p    [3]byte
		size uint64
		movs bool
	}{
		{[3]byte{0xf3, 0x48, 0xab}, 8, false},
		{[3]byte{0xf3, 0x48, 0xa5}, 8, true},
		{[3]byte{0x90, 0xf3, 0xab}, 4, false},
		{[3]byte{0x90, 0xf3, 0xaa}, 1, false},
		{[3]byte{0x90, 0xf3, 0xa4}, 1, true},
		{[3]byte{0x48, 0x89, 0x43}, 0, false},
		{[3]byte{0x90, 0x90, 0xab}, 0, false}, // stos without rep: RCX says nothing
	} {
		size, movs := repBefore(c.p)
		if size != c.size || movs != c.movs {
			t.Errorf("% x: %d %v, want %d %v", c.p, size, movs, c.size, c.movs)
		}
	}
}
