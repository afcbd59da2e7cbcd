package linux

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// field is a member found in BTF: its byte offset from the start of the
// outer structure and its type.
type field struct {
	off uint64
	typ btf.Type
}

// cachedField is a looked-up member, with the spec it was found in: a
// kernel's Types may be replaced, and the cache must not answer for another.
type cachedField struct {
	spec *btf.Spec
	f    field
}

// Field returns the byte offset of path ("tasks", "f_path.dentry",
// "core_layout.size") in struct typ, looking through anonymous struct and
// union members as C does; every offset comes from the kernel's BTF.
func (k *Kernel) Field(typ, path string) (uint64, error) {
	f, err := k.field(typ, path)
	return f.off, err
}

func (k *Kernel) field(typ, path string) (field, error) {
	key := typ + "/" + path
	if v, ok := k.fields.Load(key); ok && v.(cachedField).spec == k.Types {
		return v.(cachedField).f, nil
	}
	if k.Types == nil {
		return field{}, fmt.Errorf("linux: no BTF for %s.%s: %w", typ, path, ErrLayout)
	}
	var st btf.Type
	var s *btf.Struct
	if err := k.Types.TypeByName(typ, &s); err != nil {
		var u *btf.Union
		if err2 := k.Types.TypeByName(typ, &u); err2 != nil {
			return field{}, fmt.Errorf("linux: BTF has no struct %s: %w", typ, ErrLayout)
		}
		st = u
	} else {
		st = s
	}
	f := field{typ: st}
	for _, name := range strings.Split(path, ".") {
		off, t, ok := member(f.typ, name, 0)
		if !ok {
			return field{}, fmt.Errorf("linux: BTF struct %s has no member %s: %w", typ, path, ErrLayout)
		}
		f.off += off
		f.typ = t
	}
	k.fields.Store(key, cachedField{k.Types, f})
	return f, nil
}

func members(t btf.Type) []btf.Member {
	switch v := btf.UnderlyingType(t).(type) {
	case *btf.Struct:
		return v.Members
	case *btf.Union:
		return v.Members
	}
	return nil
}

func member(t btf.Type, name string, depth int) (uint64, btf.Type, bool) {
	if depth > 8 {
		return 0, nil, false
	}
	for _, m := range members(t) {
		if m.Name == name {
			return uint64(m.Offset.Bytes()), m.Type, true
		}
	}
	for _, m := range members(t) {
		if m.Name == "" {
			if off, ft, ok := member(m.Type, name, depth+1); ok {
				return uint64(m.Offset.Bytes()) + off, ft, true
			}
		}
	}
	return 0, nil, false
}

// Sizeof is the size of struct name from BTF.
func (k *Kernel) Sizeof(name string) (uint64, error) {
	var s *btf.Struct
	if k.Types == nil || k.Types.TypeByName(name, &s) != nil {
		return 0, fmt.Errorf("linux: BTF has no struct %s: %w", name, ErrLayout)
	}
	return uint64(s.Size), nil
}

// EnumValue returns the value of enumerator name from BTF.
func (k *Kernel) EnumValue(enum, name string) (uint64, error) {
	var e *btf.Enum
	if k.Types == nil || k.Types.TypeByName(enum, &e) != nil {
		return 0, fmt.Errorf("linux: BTF has no enum %s: %w", enum, ErrLayout)
	}
	for _, v := range e.Values {
		if v.Name == name {
			return v.Value, nil
		}
	}
	return 0, fmt.Errorf("linux: BTF enum %s has no %s: %w", enum, name, ErrLayout)
}

// obj reads fields of one kernel object at a virtual address; the first
// error sticks and later reads return zero.
type obj struct {
	k    *Kernel
	as   vmi.AddressSpace
	typ  string
	addr vmi.VA
	err  error
}

func (k *Kernel) obj(typ string, addr vmi.VA) *obj {
	return &obj{k: k, as: k.AS, typ: typ, addr: addr}
}

// member looks up a field of o's type; ok is false once o has an error.
func (o *obj) member(path string) (f field, ok bool) {
	if o.err != nil {
		return f, false
	}
	f, err := o.k.field(o.typ, path)
	if err != nil {
		o.err = err
		return f, false
	}
	return f, true
}

func (o *obj) fieldAddr(path string) vmi.VA {
	f, ok := o.member(path)
	if !ok {
		return 0
	}
	return o.at(f, path)
}

// at is the address of member f (at path): the object's address plus the
// member's offset, checked. An object placed so that the member would wrap
// past the top of the address space (a pointer read from hostile memory)
// sets a *vmerr.FormatError wrapping vmi.ErrCorrupt.
func (o *obj) at(f field, path string) vmi.VA {
	a, ok := o.addr.Add(f.off)
	if !ok {
		o.err = vmerr.Corrupt(vmi.ErrCorrupt, fmt.Sprintf("linux: %s at %#x", o.typ, uint64(o.addr)), -1,
			"member %s at offset %d wraps past the top of the address space", path, f.off)
	}
	return a
}

func (o *obj) read(path string, n int) []byte {
	a := o.fieldAddr(path)
	if o.err != nil {
		return make([]byte, n)
	}
	return o.readAt(a, n, path)
}

// readAt reads n bytes of field path, at a.
func (o *obj) readAt(a vmi.VA, n int, path string) []byte {
	b := make([]byte, n)
	if _, err := o.as.ReadVirt(b, a); err != nil {
		o.err = fmt.Errorf("linux: %s.%s at %#x: %w", o.typ, path, uint64(a), err)
	}
	return b
}

func (o *obj) u64(path string) uint64 { return binary.LittleEndian.Uint64(o.read(path, 8)) }
func (o *obj) u32(path string) uint32 { return binary.LittleEndian.Uint32(o.read(path, 4)) }
func (o *obj) ptr(path string) vmi.VA { return vmi.VA(o.u64(path)) }

// uint reads an integer member of whatever size BTF gives it.
func (o *obj) uint(path string) uint64 {
	f, ok := o.member(path)
	if !ok {
		return 0
	}
	sz, err := btf.Sizeof(f.typ)
	if err != nil || sz < 1 || sz > 8 {
		o.err = fmt.Errorf("linux: %s.%s: size %d: %w", o.typ, path, sz, ErrLayout)
		return 0
	}
	a := o.at(f, path)
	if o.err != nil {
		return 0
	}
	var b [8]byte
	copy(b[:], o.readAt(a, sz, path))
	return binary.LittleEndian.Uint64(b[:])
}

func (o *obj) str(path string, max int) string {
	b := o.read(path, max)
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func sizeof(f field) (int, error) {
	n, err := btf.Sizeof(f.typ)
	if err != nil {
		return 0, fmt.Errorf("linux: BTF size: %w: %w", err, ErrLayout)
	}
	return n, nil
}

// ReadUint reads integer or pointer member path of struct typ at a, of
// the size BTF gives it (1 to 8 bytes).
func (k *Kernel) ReadUint(typ string, a vmi.VA, path string) (uint64, error) {
	o := k.obj(typ, a)
	v := o.uint(path)
	return v, o.err
}

// FieldSize is the size in bytes of member path of struct typ, from BTF.
func (k *Kernel) FieldSize(typ, path string) (uint64, error) { return k.fieldSize(typ, path) }
