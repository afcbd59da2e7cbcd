package linux

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/vmscope/vmscope/vmi"
)

// Caps on file walks.
const (
	MaxFDs       = 1 << 16 // descriptors looked at per process
	maxPathDepth = 256     // dentries and mounts a path walk follows
	maxNameLen   = 255     // NAME_MAX
)

// Filesystem magic numbers (include/uapi/linux/magic.h) of the pseudo
// filesystems whose files /proc names by d_dname rather than by path.
const (
	pipefsMagic    = 0x50495045
	sockfsMagic    = 0x534F434B
	anonInodeMagic = 0x09041934
)

// File is an open file descriptor of a process.
type File struct {
	PID   int    `json:"pid"`
	FD    int    `json:"fd"`
	Path  string `json:"path"` // as /proc/PID/fd shows it: a path, pipe:[ino], socket:[ino], anon_inode:name
	Inode uint64 `json:"inode"`
	Addr  uint64 `json:"file"` // struct file
}

// Files lists the open descriptors of the processes in tasks (pid 0: all),
// sorted by pid and fd.
func (k *Kernel) Files(ctx context.Context, tasks []Task, pid int) ([]File, []Problem, error) {
	var out []File
	var probs []Problem
	for _, t := range tasks {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		if (pid != 0 && t.PID != pid) || t.Kernel {
			continue
		}
		fs, ps := k.taskFiles(t)
		out = append(out, fs...)
		probs = append(probs, ps...)
	}
	return out, probs, nil
}

func (k *Kernel) taskFiles(t Task) ([]File, []Problem) {
	what := fmt.Sprintf("files of pid %d", t.PID)
	o := k.obj("task_struct", vmi.VA(t.Addr))
	files := o.ptr("files")
	if o.err != nil {
		return nil, []Problem{problem(what, vmi.VA(t.Addr), o.err)}
	}
	if files == 0 {
		return nil, nil
	}
	fo := k.obj("files_struct", files)
	fdt := fo.ptr("fdt")
	if fo.err != nil {
		return nil, []Problem{problem(what, files, fo.err)}
	}
	to := k.obj("fdtable", fdt)
	max := int(to.u32("max_fds"))
	arr := to.ptr("fd")
	if to.err != nil {
		return nil, []Problem{problem(what, fdt, to.err)}
	}
	var probs []Problem
	if max > MaxFDs {
		probs = append(probs, problem(what, fdt, fmt.Errorf("max_fds %d, only the first %d read: %w", max, MaxFDs, vmi.ErrCorrupt)))
		max = MaxFDs
	}
	ptrs := make([]byte, 8*max)
	if _, err := k.AS.ReadVirt(ptrs, arr); err != nil {
		return nil, append(probs, problem(what+": fd array", arr, err))
	}
	var out []File
	for i := range max {
		f := vmi.VA(binary.LittleEndian.Uint64(ptrs[8*i:]))
		if f == 0 {
			continue
		}
		path, ino, err := k.filePath(f)
		if err != nil {
			probs = append(probs, problem(fmt.Sprintf("fd %d of pid %d", i, t.PID), f, err))
		}
		out = append(out, File{PID: t.PID, FD: i, Path: path, Inode: ino, Addr: uint64(f)})
	}
	return out, probs
}

// filePath names a struct file as /proc/PID/fd does.
func (k *Kernel) filePath(f vmi.VA) (string, uint64, error) {
	o := k.obj("file", f)
	mnt := o.ptr("f_path.mnt")
	dentry := o.ptr("f_path.dentry")
	inode := o.ptr("f_inode")
	if o.err != nil {
		return "", 0, o.err
	}
	io := k.obj("inode", inode)
	ino := io.u64("i_ino")
	sb := io.ptr("i_sb")
	so := k.obj("super_block", sb)
	magic := so.u64("s_magic")
	if err := firstErr(io.err, so.err); err != nil {
		return "", 0, err
	}
	switch magic {
	case pipefsMagic:
		return fmt.Sprintf("pipe:[%d]", ino), ino, nil
	case sockfsMagic:
		return fmt.Sprintf("socket:[%d]", ino), ino, nil
	case anonInodeMagic:
		name, err := k.dentryName(dentry)
		return "anon_inode:" + name, ino, err
	}
	p, err := k.Path(dentry, mnt)
	return p, ino, err
}

func (k *Kernel) dentryName(d vmi.VA) (string, error) {
	o := k.obj("dentry", d)
	name := o.ptr("d_name.name")
	n := o.u32("d_name.len")
	if o.err != nil {
		return "", o.err
	}
	if n > maxNameLen {
		return "", fmt.Errorf("linux: dentry %#x: name of %d bytes: %w", uint64(d), n, vmi.ErrCorrupt)
	}
	b := make([]byte, n)
	if _, err := k.AS.ReadVirt(b, name); err != nil {
		return "", fmt.Errorf("linux: dentry %#x name: %w", uint64(d), err)
	}
	return string(b), nil
}

// Path is d_path: the path of dentry under the vfsmount mnt, up to the
// root of the mount tree, with " (deleted)" for an unlinked dentry.
func (k *Kernel) Path(dentry, vfsmnt vmi.VA) (string, error) {
	mntOff, err := k.Field("mount", "mnt")
	if err != nil {
		return "", err
	}
	mount := vfsmnt - vmi.VA(mntOff)
	var parts []string
	deleted := false
	for i := 0; ; i++ {
		if i >= maxPathDepth {
			return "", fmt.Errorf("linux: path deeper than %d at dentry %#x: %w", maxPathDepth, uint64(dentry), vmi.ErrCorrupt)
		}
		mo := k.obj("mount", mount)
		root := mo.ptr("mnt.mnt_root")
		parent := mo.ptr("mnt_parent")
		mp := mo.ptr("mnt_mountpoint")
		do := k.obj("dentry", dentry)
		dparent := do.ptr("d_parent")
		pprev := do.u64("d_hash.pprev")
		if err := firstErr(mo.err, do.err); err != nil {
			return "", err
		}
		if i == 0 && pprev == 0 && dentry != dparent {
			deleted = true
		}
		if dentry == root || dentry == dparent {
			if parent == mount || parent == 0 {
				break
			}
			dentry, mount = mp, parent
			continue
		}
		name, err := k.dentryName(dentry)
		if err != nil {
			return "", err
		}
		parts = append(parts, name)
		dentry = dparent
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteString("/" + parts[i])
	}
	if b.Len() == 0 {
		b.WriteString("/")
	}
	if deleted {
		b.WriteString(" (deleted)")
	}
	return b.String(), nil
}
