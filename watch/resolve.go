package watch

import (
	"context"
	"fmt"
	"strings"

	"github.com/vmscope/vmscope/vmi"
)

// Bounds of the walks of guest structures.
const (
	maxComponents = 256     // path components resolved
	maxChildren   = 1 << 16 // children of one directory looked at
	maxMountStack = 64      // mounts stacked on one mountpoint
	maxMounts     = 1 << 14 // mounts of the namespace
)

// Target is a file found in the guest's dentry cache: its dentry, inode,
// page-cache mapping, superblock and the mount it was reached through.
type Target struct {
	Path    string `json:"path"`
	Dentry  vmi.VA `json:"dentry"`
	Inode   vmi.VA `json:"inode"`
	Mapping vmi.VA `json:"mapping"`
	Mount   vmi.VA `json:"mount"`
	Ino     uint64 `json:"ino"`
	// Dev is the superblock's s_dev as the kernel keeps it (major<<20 |
	// minor); DevT is the same device as stat's st_dev shows it.
	Dev  uint32 `json:"-"`
	DevT uint64 `json:"dev"`
	Mode uint16 `json:"mode"`
	// Parent is the parent dentry and ParentInode its inode.
	Parent      vmi.VA `json:"parent"`
	ParentInode vmi.VA `json:"parent_inode"`
}

// Pending is a path whose last cached ancestor is Dir: the component
// Missing is not in the dentry cache (never looked up, or evicted). A
// lookup miss in Dir takes DirInode's i_rwsem; watch traps it and
// resolves the path again.
type Pending struct {
	Path     string `json:"path"`
	Dir      vmi.VA `json:"dir"`
	DirInode vmi.VA `json:"dir_inode"`
	Missing  string `json:"missing"`
}

// Resolution is a path resolved: a Target, or Pending when the path is not
// (or not wholly) in the dentry cache.
type Resolution struct {
	Target  *Target
	Pending *Pending
}

// UserDev converts a kernel dev_t (MAJOR<<20|MINOR) into the encoding of
// stat's st_dev (new_encode_dev).
func UserDev(kdev uint32) uint64 {
	major, minor := uint64(kdev>>20), uint64(kdev&0xfffff)
	return (minor & 0xff) | (major << 8) | ((minor &^ 0xff) << 12)
}

// mountKey names a mount by where it is mounted: its parent mount and the
// dentry it covers.
type mountKey struct{ parent, mountpoint vmi.VA }

// Resolver resolves paths from the init task's root, through the mount
// tree of its namespace. Build one with NewResolver after each change of
// the mount table; it reads guest memory on every Resolve.
type Resolver struct {
	w         *Kernel
	root      vmi.VA // init's fs root dentry
	rootMount vmi.VA // its struct mount
	mounts    map[mountKey][]vmi.VA
}

// NewResolver reads the init task's root (init_task.fs->root) and the
// mounts of its namespace (the walk of `mem mounts`).
func NewResolver(ctx context.Context, w *Kernel) (*Resolver, error) {
	k := w.K
	initTask, ok := k.Symbols.Addr("init_task")
	if !ok {
		return nil, fmt.Errorf("watch: no init_task symbol: %w", ErrLayout)
	}
	fsOff, err := k.Field("task_struct", "fs")
	if err != nil {
		return nil, err
	}
	rootMnt, err1 := k.Field("fs_struct", "root.mnt")
	rootDentry, err2 := k.Field("fs_struct", "root.dentry")
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("watch: fs_struct.root: %w", ErrLayout)
	}
	fs, err := w.ptr(initTask, fsOff)
	if err != nil {
		return nil, fmt.Errorf("watch: init_task.fs: %w", err)
	}
	vfsmnt, err := w.ptr(fs, rootMnt)
	if err != nil {
		return nil, fmt.Errorf("watch: init fs root mount at %#x: %w", uint64(fs), err)
	}
	root, err := w.ptr(fs, rootDentry)
	if err != nil {
		return nil, fmt.Errorf("watch: init fs root dentry at %#x: %w", uint64(fs), err)
	}
	r := &Resolver{w: w, root: root, rootMount: vfsmnt - vmi.VA(w.mntMnt), mounts: map[mountKey][]vmi.VA{}}
	ms, _, err := k.Mounts(ctx)
	if err != nil {
		return nil, err
	}
	if len(ms) > maxMounts {
		return nil, fmt.Errorf("watch: %d mounts (at most %d): %w", len(ms), maxMounts, ErrCorrupt)
	}
	for _, m := range ms {
		a := vmi.VA(m.Addr)
		parent, err1 := w.ptr(a, w.mntParent)
		mp, err2 := w.ptr(a, w.mntMountpoint)
		if err1 != nil || err2 != nil || parent == a {
			continue // the namespace's root mount, or unreadable
		}
		key := mountKey{parent, mp}
		r.mounts[key] = append(r.mounts[key], a)
	}
	return r, nil
}

// cross follows the mounts stacked on (mount, dentry): the topmost one's
// root, as a path walk does.
func (r *Resolver) cross(mount, dentry vmi.VA) (vmi.VA, vmi.VA, error) {
	for i := 0; ; i++ {
		kids := r.mounts[mountKey{mount, dentry}]
		if len(kids) == 0 {
			return mount, dentry, nil
		}
		if i >= maxMountStack {
			return 0, 0, fmt.Errorf("watch: more than %d mounts stacked at dentry %#x: %w", maxMountStack, uint64(dentry), ErrCorrupt)
		}
		// the last mounted is on top (the mount list is in mount order)
		mount = kids[len(kids)-1]
		root, err := r.w.ptr(mount+vmi.VA(r.w.mntMnt), r.w.mntRoot)
		if err != nil {
			return 0, 0, fmt.Errorf("watch: root of mount %#x: %w", uint64(mount), err)
		}
		dentry = root
	}
}

// Resolve finds path (absolute, no symlinks followed, "." and empty
// components skipped; ".." is refused) in the dentry cache. A component
// that is not cached, or is a negative dentry, makes the path Pending.
func (r *Resolver) Resolve(ctx context.Context, path string) (Resolution, error) {
	if !strings.HasPrefix(path, "/") {
		return Resolution{}, fmt.Errorf("watch: path %q is not absolute", path)
	}
	var comps []string
	for _, c := range strings.Split(path, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return Resolution{}, fmt.Errorf("watch: path %q: '..' is not resolved", path)
		}
		if len(c) > 255 {
			return Resolution{}, fmt.Errorf("watch: path %q: component longer than NAME_MAX", path)
		}
		comps = append(comps, c)
	}
	if len(comps) > maxComponents {
		return Resolution{}, fmt.Errorf("watch: path %q: more than %d components", path, maxComponents)
	}
	w := r.w
	mount, dentry, err := r.cross(r.rootMount, r.root)
	if err != nil {
		return Resolution{}, err
	}
	for _, c := range comps {
		if err := ctx.Err(); err != nil {
			return Resolution{}, err
		}
		child, err := r.child(dentry, c)
		if err != nil {
			return Resolution{}, err
		}
		if child == 0 {
			dirInode, err := w.ptr(dentry, w.dInode)
			if err != nil {
				return Resolution{}, err
			}
			return Resolution{Pending: &Pending{Path: path, Dir: dentry, DirInode: dirInode, Missing: c}}, nil
		}
		if mount, dentry, err = r.cross(mount, child); err != nil {
			return Resolution{}, err
		}
	}
	t, err := r.target(path, mount, dentry)
	if err != nil {
		return Resolution{}, err
	}
	return Resolution{Target: t}, nil
}

func (r *Resolver) target(path string, mount, dentry vmi.VA) (*Target, error) {
	w := r.w
	t := &Target{Path: path, Dentry: dentry, Mount: mount}
	var err error
	where := func(what string, e error) error {
		return fmt.Errorf("watch: %s: %s of dentry %#x: %w", path, what, uint64(dentry), e)
	}
	if t.Inode, err = w.ptr(dentry, w.dInode); err != nil {
		return nil, where("d_inode", err)
	}
	if t.Parent, err = w.ptr(dentry, w.dParent); err != nil {
		return nil, where("d_parent", err)
	}
	if t.ParentInode, err = w.ptr(t.Parent, w.dInode); err != nil {
		return nil, where("parent inode", err)
	}
	if t.Ino, err = w.u64(t.Inode + vmi.VA(w.iIno)); err != nil {
		return nil, where("i_ino", err)
	}
	if t.Mapping, err = w.ptr(t.Inode, w.iMapping); err != nil {
		return nil, where("i_mapping", err)
	}
	mode, err := w.read(t.Inode+vmi.VA(w.iMode), 2)
	if err != nil {
		return nil, where("i_mode", err)
	}
	t.Mode = uint16(mode[0]) | uint16(mode[1])<<8
	sb, err := w.ptr(t.Inode, w.iSB)
	if err != nil {
		return nil, where("i_sb", err)
	}
	if t.Dev, err = w.u32(sb + vmi.VA(w.sDev)); err != nil {
		return nil, where("s_dev", err)
	}
	t.DevT = UserDev(t.Dev)
	return t, nil
}

// child finds the positive dentry called name among the children of
// dir; 0 when there is none (or only a negative one).
func (r *Resolver) child(dir vmi.VA, name string) (vmi.VA, error) {
	w := r.w
	head := dir + vmi.VA(w.dChildren)
	first, err := w.u64(head)
	if err != nil {
		return 0, fmt.Errorf("watch: children of dentry %#x: %w", uint64(dir), err)
	}
	cur := vmi.VA(first)
	for i := 0; ; i++ {
		if cur == 0 || (!w.childHlist && cur == head) {
			return 0, nil
		}
		if i >= maxChildren {
			return 0, fmt.Errorf("watch: dentry %#x has more than %d children (a cycle?): %w", uint64(dir), maxChildren, ErrCorrupt)
		}
		d := cur - vmi.VA(w.dSib)
		n, err := w.u32(d + vmi.VA(w.dNameLen))
		if err == nil && int(n) == len(name) {
			got, err := w.dentryName(d)
			if err == nil && got == name {
				inode, err := w.ptr(d, w.dInode)
				if err != nil {
					return 0, err
				}
				if inode != 0 {
					return d, nil
				}
			}
		}
		next, err := w.u64(cur)
		if err != nil {
			return 0, fmt.Errorf("watch: child list of dentry %#x at %#x: %w", uint64(dir), uint64(cur), err)
		}
		cur = vmi.VA(next)
	}
}
