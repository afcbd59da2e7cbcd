package watch

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// ErrCorrupt is guest kernel state that breaks its own rules (a child
// list that does not end, a name longer than NAME_MAX).
var ErrCorrupt = vmerr.New("watch: corrupt kernel state", vmerr.ErrCorrupt)

// ErrLayout is a kernel whose structures lack a member every known variant
// of them has.
var ErrLayout = vmerr.New("watch: unsupported kernel layout", vmerr.ErrUnsupported)

// Kernel is the part of a discovered kernel watch reads: types (BTF),
// symbols (kallsyms) and the kernel address space, with the member
// offsets it needs looked up once, trying the variants kernels moved them
// between.
type Kernel struct {
	K *linux.Kernel

	// mem reads kernel virtual memory (K.AS).
	mem interface {
		ReadVirt(p []byte, va vmi.VA) (int, error)
	}
	// exes caches the path of executables by their struct file (an
	// exe_file is pinned while a process maps it)
	exes map[vmi.VA]string

	// dentry children: d_subdirs/d_child (list) or d_children/d_sib (hlist)
	childHlist       bool
	dChildren, dSib  uint64
	dName, dNameLen  uint64
	dNamePtr         uint64
	dParent, dInode  uint64
	iIno, iSB, iMode uint64
	iUID, iNlink     uint64
	iSize, iState    uint64
	iRwsem, iMapping uint64
	iStateSize       int
	sDev             uint64
	mntParent        uint64
	mntMountpoint    uint64
	mntRoot          uint64
	mntMnt           uint64
}

// NewKernel looks up the members watch needs in the kernel's BTF, trying
// the known variants of each (d_subdirs/d_child up to 6.7,
// d_children/d_sib from 6.8).
func NewKernel(k *linux.Kernel) (*Kernel, error) {
	w := &Kernel{K: k, mem: k.AS, exes: map[vmi.VA]string{}}
	var errs []error
	get := func(dst *uint64, typ string, paths ...string) {
		for _, p := range paths {
			if off, err := k.Field(typ, p); err == nil {
				*dst = off
				return
			}
		}
		errs = append(errs, fmt.Errorf("%w: struct %s has none of %v", ErrLayout, typ, paths))
	}
	if _, err := k.Field("dentry", "d_subdirs"); err == nil {
		get(&w.dChildren, "dentry", "d_subdirs")
		get(&w.dSib, "dentry", "d_child")
	} else {
		w.childHlist = true
		get(&w.dChildren, "dentry", "d_children")
		get(&w.dSib, "dentry", "d_sib")
	}
	get(&w.dName, "dentry", "d_name")
	get(&w.dNameLen, "dentry", "d_name.len")
	get(&w.dNamePtr, "dentry", "d_name.name")
	get(&w.dParent, "dentry", "d_parent")
	get(&w.dInode, "dentry", "d_inode")
	get(&w.iIno, "inode", "i_ino")
	get(&w.iSB, "inode", "i_sb")
	get(&w.iMode, "inode", "i_mode")
	get(&w.iUID, "inode", "i_uid")
	get(&w.iNlink, "inode", "__i_nlink", "i_nlink")
	get(&w.iSize, "inode", "i_size")
	get(&w.iState, "inode", "i_state")
	get(&w.iRwsem, "inode", "i_rwsem")
	get(&w.iMapping, "inode", "i_mapping")
	get(&w.sDev, "super_block", "s_dev")
	get(&w.mntParent, "mount", "mnt_parent")
	get(&w.mntMountpoint, "mount", "mnt_mountpoint")
	get(&w.mntRoot, "vfsmount", "mnt_root")
	get(&w.mntMnt, "mount", "mnt")
	w.iStateSize = 8
	if n, err := k.FieldSize("inode", "i_state"); err == nil {
		w.iStateSize = int(n)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Kernel) read(va vmi.VA, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := w.mem.ReadVirt(b, va); err != nil {
		return nil, err
	}
	return b, nil
}

func (w *Kernel) u64(va vmi.VA) (uint64, error) {
	var b [8]byte
	if _, err := w.mem.ReadVirt(b[:], va); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

func (w *Kernel) u32(va vmi.VA) (uint32, error) {
	var b [4]byte
	if _, err := w.mem.ReadVirt(b[:], va); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

func (w *Kernel) ptr(base vmi.VA, off uint64) (vmi.VA, error) {
	a, ok := base.Add(off)
	if !ok {
		return 0, fmt.Errorf("%w: %#x+%d wraps", ErrCorrupt, uint64(base), off)
	}
	v, err := w.u64(a)
	return vmi.VA(v), err
}

// dentryName reads a dentry's name (at most NAME_MAX bytes).
func (w *Kernel) dentryName(d vmi.VA) (string, error) {
	n, err := w.u32(d + vmi.VA(w.dNameLen))
	if err != nil {
		return "", fmt.Errorf("watch: dentry %#x name length: %w", uint64(d), err)
	}
	if n > 255 {
		return "", fmt.Errorf("watch: dentry %#x: name of %d bytes: %w", uint64(d), n, ErrCorrupt)
	}
	p, err := w.ptr(d, w.dNamePtr)
	if err != nil {
		return "", fmt.Errorf("watch: dentry %#x name: %w", uint64(d), err)
	}
	b, err := w.read(p, int(n))
	if err != nil {
		return "", fmt.Errorf("watch: dentry %#x name at %#x: %w", uint64(d), uint64(p), err)
	}
	return string(b), nil
}
