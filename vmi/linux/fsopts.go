package linux

import (
	"fmt"

	"github.com/vmscope/vmscope/vmi"
)

// fsOptionsError is a mount whose filesystem-specific options could not be
// reproduced; the mount itself was read.
type fsOptionsError struct {
	FS  string
	Err error
}

func (e *fsOptionsError) Error() string {
	return fmt.Sprintf("linux: %s options: %v", e.FS, e.Err)
}

func (e *fsOptionsError) Unwrap() error { return e.Err }

// fsOptions is the part of a /proc/mounts line that the filesystem's
// super_operations.show_options prints, each option with its leading
// comma. The filesystem is known by its super_operations (a kallsyms
// symbol), its private superblock info is read through BTF, and the
// printing follows the 6.1 show_options functions: shmem (tmpfs,
// devtmpfs, rootfs), devpts, proc, ramfs and kernfs (sysfs). A filesystem
// with a show_options not among these gives an error naming it.
func (k *Kernel) fsOptions(sb vmi.VA) (string, error) {
	so := k.obj("super_block", sb)
	sop := so.ptr("s_op")
	info := so.ptr("s_fs_info")
	if so.err != nil {
		return "", so.err
	}
	is := func(sym string) bool {
		a, ok := k.Symbols.Addr(sym)
		return ok && a == sop
	}
	switch {
	case is("shmem_ops"):
		return k.shmemOptions(info)
	case is("devpts_sops"):
		return k.devptsOptions(info)
	case is("proc_sops"):
		return k.procOptions(info)
	case is("ramfs_ops"):
		o := k.obj("ramfs_fs_info", info)
		mode := o.uint("mount_opts.mode")
		if o.err != nil {
			return "", o.err
		}
		if mode != 0o755 { // RAMFS_DEFAULT_MODE
			return fmt.Sprintf(",mode=%o", mode), nil
		}
		return "", nil
	case is("kernfs_sops"):
		// kernfs_sop_show_options: the root's syscall_ops->show_options
		ki := k.obj("kernfs_super_info", info)
		root := ki.ptr("root")
		ro := k.obj("kernfs_root", root)
		ops := ro.ptr("syscall_ops")
		if err := firstErr(ki.err, ro.err); err != nil {
			return "", err
		}
		if ops == 0 {
			return "", nil
		}
		oo := k.obj("kernfs_syscall_ops", ops)
		if show := oo.ptr("show_options"); oo.err != nil || show != 0 {
			return "", firstErr(oo.err, fmt.Errorf("kernfs show_options %s not reproduced: %w", k.symName(show), ErrLayout))
		}
		return "", nil
	}
	if sop == 0 {
		return "", nil
	}
	oo := k.obj("super_operations", sop)
	show := oo.ptr("show_options")
	if oo.err != nil {
		return "", oo.err
	}
	if show != 0 {
		return "", fmt.Errorf("show_options %s not reproduced: %w", k.symName(show), ErrLayout)
	}
	return "", nil
}

// shmemOptions is shmem_show_options; the defaults it compares with are
// computed as the kernel does when /proc/mounts is read (half of
// totalram_pages), so they follow the memory the guest has now.
func (k *Kernel) shmemOptions(info vmi.VA) (string, error) {
	o := k.obj("shmem_sb_info", info)
	maxBlocks := o.u64("max_blocks")
	maxInodes := o.u64("max_inodes")
	mode := o.uint("mode")
	huge := o.uint("huge")
	uid := o.uint("uid.val")
	gid := o.uint("gid.val")
	full := o.uint("full_inums")
	mpol := o.ptr("mpol")
	if o.err != nil {
		return "", o.err
	}
	total, err := k.symU64("_totalram_pages")
	if err != nil {
		return "", err
	}
	high, _ := k.symU64("_totalhigh_pages") // only with CONFIG_HIGHMEM
	var s string
	if maxBlocks != total/2 {
		s += fmt.Sprintf(",size=%dk", maxBlocks<<(12-10))
	}
	if maxInodes != min(total-high, total/2) {
		s += fmt.Sprintf(",nr_inodes=%d", maxInodes)
	}
	if mode != 0o1777 {
		s += fmt.Sprintf(",mode=%03o", mode)
	}
	if uid != 0 {
		s += fmt.Sprintf(",uid=%d", uid)
	}
	if gid != 0 {
		s += fmt.Sprintf(",gid=%d", gid)
	}
	// CONFIG_TMPFS_INODE64 is not in memory: inode32 on a kernel built
	// with it would be shown, and is not here.
	if full != 0 {
		s += ",inode64"
	}
	if huge != 0 {
		names := map[uint64]string{1: "always", 2: "within_size", 3: "advise"}
		n, ok := names[huge]
		if !ok {
			return s, fmt.Errorf("tmpfs huge=%d: %w", huge, vmi.ErrCorrupt)
		}
		s += ",huge=" + n
	}
	if mpol != 0 {
		mo := k.obj("mempolicy", mpol)
		if m := mo.uint("mode"); mo.err != nil || m != 0 { // MPOL_DEFAULT
			return s, firstErr(mo.err, fmt.Errorf("tmpfs mpol mode %d not reproduced: %w", m, ErrLayout))
		}
	}
	return s, nil
}

// devptsOptions is devpts_show_options.
func (k *Kernel) devptsOptions(info vmi.VA) (string, error) {
	o := k.obj("pts_fs_info", info)
	setuid := o.uint("mount_opts.setuid")
	setgid := o.uint("mount_opts.setgid")
	uid := o.uint("mount_opts.uid.val")
	gid := o.uint("mount_opts.gid.val")
	mode := o.uint("mount_opts.mode")
	ptmx := o.uint("mount_opts.ptmxmode")
	max := int32(o.u32("mount_opts.max"))
	if o.err != nil {
		return "", o.err
	}
	var s string
	if setuid != 0 {
		s += fmt.Sprintf(",uid=%d", uid)
	}
	if setgid != 0 {
		s += fmt.Sprintf(",gid=%d", gid)
	}
	s += fmt.Sprintf(",mode=%03o,ptmxmode=%03o", mode, ptmx)
	if max < 1<<20 { // NR_UNIX98_PTY_MAX
		s += fmt.Sprintf(",max=%d", max)
	}
	return s, nil
}

// procOptions is proc_show_options.
func (k *Kernel) procOptions(info vmi.VA) (string, error) {
	o := k.obj("proc_fs_info", info)
	gid := o.uint("pid_gid.val")
	hide := o.uint("hide_pid")
	pidonly := o.uint("pidonly")
	if o.err != nil {
		return "", o.err
	}
	var s string
	if gid != 0 {
		s += fmt.Sprintf(",gid=%d", gid)
	}
	if hide != 0 {
		names := map[string]string{"HIDEPID_NO_ACCESS": "noaccess", "HIDEPID_INVISIBLE": "invisible", "HIDEPID_NOT_PTRACEABLE": "ptraceable"}
		name := ""
		for e, n := range names {
			if v, err := k.EnumValue("proc_hidepid", e); err == nil && v == hide {
				name = n
			}
		}
		if name == "" {
			return s, fmt.Errorf("proc hidepid %d: %w", hide, vmi.ErrCorrupt)
		}
		s += ",hidepid=" + name
	}
	if pidonly != 0 {
		s += ",subset=pid"
	}
	return s, nil
}

// symU64 reads the 64-bit value at a symbol.
func (k *Kernel) symU64(name string) (uint64, error) {
	a, ok := k.Symbols.Addr(name)
	if !ok {
		return 0, fmt.Errorf("linux: no %s symbol: %w", name, ErrLayout)
	}
	return k.ReadU64(a)
}

// symName names the symbol at exactly a, or gives the address (error
// messages only: a linear search).
func (k *Kernel) symName(a vmi.VA) string {
	if k.Symbols != nil {
		for _, s := range k.Symbols.List {
			if s.Addr == a {
				return s.Name
			}
		}
	}
	return fmt.Sprintf("%#x", uint64(a))
}
