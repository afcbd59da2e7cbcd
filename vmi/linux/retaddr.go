package linux

import (
	"golang.org/x/arch/x86/x86asm"

	"github.com/vmscope/vmscope/vmi"
)

// Lengths of the call forms CallBefore decodes: a direct call (E8 rel32)
// is DirectCallLen bytes; an indirect one (FF /2 through a register or
// memory, with prefixes) 2 to MaxCallLen.
const (
	DirectCallLen = 5
	MaxCallLen    = 7
)

// CallBefore reports whether code, the bytes that end at address ret,
// ends with a complete call instruction (decoded with
// golang.org/x/arch/x86/x86asm, 64-bit) of 2 to MaxCallLen bytes: then
// ret is a return address. Only the last MaxCallLen bytes of code are
// looked at; a shorter code tries only the forms that fit. direct is set
// for a direct call (E8 rel32), with target the address it calls.
func CallBefore(code []byte, ret vmi.VA) (target vmi.VA, direct, ok bool) {
	for _, n := range [...]int{DirectCallLen, 2, 3, 4, 6, 7} {
		if n > len(code) {
			continue
		}
		b := code[len(code)-n:]
		inst, err := x86asm.Decode(b, 64)
		if err != nil || inst.Len != n || inst.Op != x86asm.CALL {
			continue
		}
		if rel, isRel := inst.Args[0].(x86asm.Rel); isRel && n == DirectCallLen && b[0] == 0xe8 {
			return vmi.VA(int64(ret) + int64(rel)), true, true
		}
		return 0, false, true
	}
	return 0, false, false
}
