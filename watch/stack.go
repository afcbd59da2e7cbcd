package watch

import (
	"encoding/binary"
	"sort"
	"strings"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// Bounds of a kernel-stack scan.
const (
	maxStackScan = 32 << 10 // bytes of stack read above RSP
	maxFrames    = 64       // return addresses kept
)

// Symbolizer names kernel text addresses from kallsyms.
type Symbolizer struct {
	addrs       []vmi.VA
	names       []string
	starts      map[vmi.VA]string
	text, etext vmi.VA
}

// NewSymbolizer indexes the kernel's text symbols (types t, T, w, W).
func NewSymbolizer(s *linux.Symbols) *Symbolizer {
	z := &Symbolizer{starts: map[vmi.VA]string{}}
	type sym struct {
		a vmi.VA
		n string
	}
	var l []sym
	for _, y := range s.List {
		switch y.Type {
		case 't', 'T', 'w', 'W':
			l = append(l, sym{y.Addr, y.Name})
			if _, ok := z.starts[y.Addr]; !ok {
				z.starts[y.Addr] = y.Name
			}
		}
	}
	sort.SliceStable(l, func(i, j int) bool { return l[i].a < l[j].a })
	for _, y := range l {
		z.addrs = append(z.addrs, y.a)
		z.names = append(z.names, y.n)
	}
	z.text, _ = s.Addr("_stext")
	z.etext, _ = s.Addr("_etext")
	if z.text == 0 && len(l) > 0 {
		z.text = l[0].a
	}
	if z.etext == 0 && len(l) > 0 {
		z.etext = l[len(l)-1].a
	}
	return z
}

// Lookup is the function containing a: its name and a's offset in it.
func (z *Symbolizer) Lookup(a vmi.VA) (string, uint64, bool) {
	i := sort.Search(len(z.addrs), func(i int) bool { return z.addrs[i] > a }) - 1
	if i < 0 || a >= z.etext+4096 {
		return "", 0, false
	}
	return z.names[i], uint64(a - z.addrs[i]), true
}

// Name is "func+0xoff" for a, or the hex address.
func (z *Symbolizer) Name(a vmi.VA) string {
	if n, off, ok := z.Lookup(a); ok {
		if off == 0 {
			return n
		}
		return n + "+" + hex(off)
	}
	return hex(uint64(a))
}

func hex(v uint64) string {
	const d = "0123456789abcdef"
	if v == 0 {
		return "0x0"
	}
	var b [18]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = d[v&15]
		v >>= 4
	}
	i--
	b[i] = 'x'
	i--
	b[i] = '0'
	return string(b[i:])
}

// inText reports whether a is in the kernel's text.
func (z *Symbolizer) inText(a vmi.VA) bool { return a >= z.text && a < z.etext }

// Frame is a return address found on a kernel stack: the stack slot
// holding it, the address, the function it returns into (the caller)
// and the function the call before it entered (the callee).
type Frame struct {
	Slot   vmi.VA `json:"slot"`
	Return vmi.VA `json:"return"`
	Caller string `json:"caller"`
	Callee string `json:"callee"`
}

// codeReader reads kernel text (cached: text does not change while a
// watch runs, and each return-address check reads 5 bytes).
type codeReader struct {
	read  func(p []byte, va vmi.VA) error
	cache map[vmi.VA][linux.DirectCallLen]byte
}

func (c *codeReader) before(ret vmi.VA) ([]byte, bool) {
	if b, ok := c.cache[ret]; ok {
		return b[:], true
	}
	var b [linux.DirectCallLen]byte
	if err := c.read(b[:], ret-linux.DirectCallLen); err != nil {
		return nil, false
	}
	if len(c.cache) < 1<<16 {
		c.cache[ret] = b
	}
	return b[:], true
}

// ScanStack finds the return addresses in stack (the bytes of a kernel
// stack starting at address base), innermost first: a word counts only if
// it points into kernel text right after a direct call (E8 rel32,
// linux.CallBefore) whose target is the start of a known function. Debian
// kernels have no frame pointers (ORC), so this is a scan, not an unwind;
// at most maxFrames frames.
func (z *Symbolizer) ScanStack(stack []byte, base vmi.VA, code *codeReader) []Frame {
	var out []Frame
	for off := 0; off+8 <= len(stack) && len(out) < maxFrames; off += 8 {
		ret := vmi.VA(binary.LittleEndian.Uint64(stack[off:]))
		if !z.inText(ret) || ret < z.text+linux.DirectCallLen {
			continue
		}
		b, ok := code.before(ret)
		if !ok {
			continue
		}
		target, direct, _ := linux.CallBefore(b, ret)
		if !direct {
			continue
		}
		callee, ok := z.starts[target]
		if !ok {
			continue
		}
		caller, _, _ := z.Lookup(ret)
		out = append(out, Frame{Slot: base + vmi.VA(off), Return: ret, Caller: caller, Callee: callee})
	}
	return out
}

// vfsEntries are the VFS functions an access is classified by: the callee
// of a frame names the kind.
var vfsEntries = map[string]string{
	"vfs_read": "read", "vfs_readv": "read", "vfs_iter_read": "read", "kernel_read": "read",
	"vfs_write": "write", "vfs_writev": "write", "vfs_iter_write": "write", "kernel_write": "write",
	"notify_change": "attr",
	"vfs_unlink":    "unlink",
	"vfs_rename":    "rename",
	"do_filp_open":  "open", "do_file_open_root": "open",
}

// Kinds lists the kinds an event can have.
var Kinds = []string{"open", "read", "write", "attr", "unlink", "rename", "access"}

// classify is the VFS entry of a stack: the outermost frame whose callee is
// a VFS entry (closest to the system call), and its kind. A stack scan
// also finds stale return addresses (left in a frame's unused slots), so
// a VFS frame counts only when it is chained to a neighbour: the frame
// inside it returns into the entry (or the stop itself is in it, rip), or
// the frame outside it called the function it returns into (directly or
// through an indirect thunk, __x86_indirect_thunk_*).
func classify(frames []Frame, rip string) (entry, kind string) {
	for i, f := range frames {
		k, ok := vfsEntries[f.Callee]
		if !ok {
			continue
		}
		in := (i > 0 && frames[i-1].Caller == f.Callee) || (i == 0 && rip == f.Callee)
		out := false
		if i+1 < len(frames) {
			o := frames[i+1].Callee
			out = o == f.Caller || strings.HasPrefix(o, "__x86_indirect_thunk_") || strings.HasPrefix(o, "__x86_indirect_call_thunk_")
		}
		if in || out {
			entry, kind = f.Callee, k
		}
	}
	return entry, kind
}
