package linux

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/vmscope/vmscope/vmi"
)

// Mount is a mount of the initial mount namespace, as /proc/mounts shows it.
type Mount struct {
	Addr   uint64 `json:"mount"` // struct mount
	Source string `json:"source"`
	Target string `json:"target"`
	FSType string `json:"fstype"`
	// Options are the options /proc/mounts shows: the generic ones (rw/ro,
	// sync, ..., relatime) and the filesystem's own (its show_options)
	// for the filesystems fsOptions knows; for the others a Problem says
	// that they are missing.
	Options string `json:"options"`
}

// Mount flags (MNT_*, include/linux/mount.h) and superblock flags (SB_*),
// as show_mnt_opts and show_sb_opts print them.
var (
	sbOpts = []struct {
		bit  uint64
		name string
	}{{16, "sync"}, {128, "dirsync"}, {64, "mand"}, {1 << 25, "lazytime"}}
	mntOpts = []struct {
		bit  uint64
		name string
	}{{1, "nosuid"}, {2, "nodev"}, {4, "noexec"}, {8, "noatime"}, {16, "nodiratime"}, {32, "relatime"}, {0x200, "nosymfollow"}}
)

// Mounts lists the mounts of init_task's mount namespace in its list order
// (the order of /proc/mounts).
func (k *Kernel) Mounts(ctx context.Context) ([]Mount, []Problem, error) {
	initTask, ok := k.Symbols.Addr("init_task")
	if !ok {
		return nil, nil, fmt.Errorf("linux: no init_task symbol: %w", ErrLayout)
	}
	t := k.obj("task_struct", initTask)
	ns := t.ptr("nsproxy")
	n := k.obj("nsproxy", ns)
	mntns := n.ptr("mnt_ns")
	listOff, err := k.Field("mnt_namespace", "list")
	if err != nil {
		return nil, nil, fmt.Errorf("linux: mount namespace without a list (kernel 6.8 or later?): %w", err)
	}
	entOff, err := k.Field("mount", "mnt_list")
	if err != nil {
		return nil, nil, err
	}
	if err := firstErr(t.err, n.err); err != nil {
		return nil, nil, err
	}
	return collectList(ctx, k, "mount list", mntns+vmi.VA(listOff), entOff, func(a vmi.VA) (Mount, bool, *Problem) {
		m, err := k.mount(a)
		var fe *fsOptionsError
		if errors.As(err, &fe) {
			p := problem("options of mount "+m.Target, a, err)
			return m, true, &p
		} else if err != nil {
			p := problem("mount", a, err)
			return m, false, &p
		}
		return m, true, nil
	})
}

func (k *Kernel) mount(a vmi.VA) (Mount, error) {
	mntOff, err := k.Field("mount", "mnt")
	if err != nil {
		return Mount{}, err
	}
	o := k.obj("mount", a)
	dev := o.ptr("mnt_devname")
	root := o.ptr("mnt.mnt_root")
	sb := o.ptr("mnt.mnt_sb")
	flags := o.uint("mnt.mnt_flags")
	so := k.obj("super_block", sb)
	typ := so.ptr("s_type")
	sflags := so.uint("s_flags")
	to := k.obj("file_system_type", typ)
	name := to.ptr("name")
	if err := firstErr(o.err, so.err, to.err); err != nil {
		return Mount{}, err
	}
	m := Mount{Addr: uint64(a)}
	m.Source, _ = k.ReadString(dev, 4096)
	m.FSType, _ = k.ReadString(name, 256)
	if m.Source == "" {
		m.Source = "none"
	}
	m.Target, err = k.Path(root, a+vmi.VA(mntOff))
	if err != nil {
		return m, err
	}
	opts := []string{"rw"}
	if flags&0x40 != 0 || sflags&1 != 0 { // MNT_READONLY, SB_RDONLY
		opts[0] = "ro"
	}
	for _, f := range sbOpts {
		if sflags&f.bit != 0 {
			opts = append(opts, f.name)
		}
	}
	for _, f := range mntOpts {
		if flags&f.bit != 0 {
			opts = append(opts, f.name)
		}
	}
	own, err := k.fsOptions(sb)
	m.Options = strings.Join(opts, ",") + own
	if err != nil {
		return m, &fsOptionsError{FS: m.FSType, Err: err}
	}
	return m, nil
}
