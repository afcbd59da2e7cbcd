package linux

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// MaxCachedChildren caps the children of one directory dentry a walk
// follows.
const MaxCachedChildren = 1 << 18

// ErrNotCached is a path whose dentry is not in the dentry cache: the
// cache holds only what the kernel looked up and has not reclaimed, so
// this says nothing about the file.
var ErrNotCached = vmerr.New("linux: not in the dentry cache", vmerr.ErrNotPresent)

// ErrSymlinkOnPath is a path crossing a symbolic link before its last
// component: the cache walk does not follow links.
var ErrSymlinkOnPath = vmerr.New("linux: a symbolic link on the path (not followed)", vmerr.ErrUnsupported)

// Inode is the part of a cached inode that stat shows.
type Inode struct {
	Addr  uint64 `json:"inode_addr"`
	Ino   uint64 `json:"ino"`
	Mode  uint32 `json:"mode"` // i_mode: type and permission bits, as st_mode
	Size  int64  `json:"size"`
	Nlink uint32 `json:"nlink"`
	UID   uint32 `json:"uid"`
	GID   uint32 `json:"gid"`
}

// Dentry is a dentry of the dentry cache; Inode is nil for a negative
// dentry (a name the kernel knows does not exist).
type Dentry struct {
	Addr  uint64 `json:"dentry"`
	Mount uint64 `json:"mount"` // the struct mount it was reached through
	Name  string `json:"name"`
	Inode *Inode `json:"inode,omitempty"`
}

// File-type bits of i_mode (include/uapi/linux/stat.h): ABI.
const (
	sIFMT  = 0o170000
	sIFDIR = 0o040000
	sIFLNK = 0o120000
)

// IsDir reports whether the dentry is a positive directory.
func (d Dentry) IsDir() bool { return d.Inode != nil && d.Inode.Mode&sIFMT == sIFDIR }

// LookupCached looks absolute path p up in the dentry cache alone, from
// the root of task's fs_struct (init_task's when task is 0): component by
// component through each directory's cached children (d_subdirs, or
// d_children on 6.8 and later), into the mounts stacked on a mountpoint
// (the child mounts of the current mount whose mountpoint it is). It reads
// nothing from disk: a component that is not cached is ErrNotCached, a
// symbolic link before the last component ErrSymlinkOnPath; the last
// component may be a negative dentry (Inode nil).
func (k *Kernel) LookupCached(ctx context.Context, task vmi.VA, p string) (Dentry, error) {
	if !strings.HasPrefix(p, "/") {
		return Dentry{}, fmt.Errorf("linux: dentry cache lookup of %q: not an absolute path", p)
	}
	d, err := k.fsRoot(task)
	if err != nil {
		return Dentry{}, err
	}
	if d, err = k.crossMounts(d); err != nil {
		return d, err
	}
	clean := path.Clean(p)
	if clean == "/" {
		return d, nil
	}
	parts := strings.Split(clean[1:], "/")
	if len(parts) > maxPathDepth {
		return Dentry{}, fmt.Errorf("linux: dentry cache lookup of %q: more than %d components", p, maxPathDepth)
	}
	for i, name := range parts {
		if err := ctx.Err(); err != nil {
			return Dentry{}, err
		}
		if d.Inode == nil || !d.IsDir() {
			if d.Inode != nil && d.Inode.Mode&sIFMT == sIFLNK {
				return d, fmt.Errorf("linux: %s: %w", "/"+strings.Join(parts[:i], "/"), ErrSymlinkOnPath)
			}
			return d, fmt.Errorf("linux: dentry cache lookup of %s: /%s is not a directory", p, strings.Join(parts[:i], "/"))
		}
		var found *Dentry
		err := k.cachedChildren(ctx, d, true, func(c Dentry) bool {
			if c.Name == name {
				found = &c
				return false
			}
			return true
		})
		if err != nil {
			return d, err
		}
		if found == nil {
			return d, fmt.Errorf("linux: /%s: %w", strings.Join(parts[:i+1], "/"), ErrNotCached)
		}
		if found.Inode == nil {
			if i < len(parts)-1 {
				return *found, fmt.Errorf("linux: /%s is a negative dentry: %w", strings.Join(parts[:i+1], "/"), ErrNotCached)
			}
			return *found, nil
		}
		if d, err = k.crossMounts(*found); err != nil {
			return d, err
		}
	}
	return d, nil
}

// CachedChildren lists the cached children of directory dentry d that are
// hashed (alive), negative ones included (Inode nil), sorted by name.
func (k *Kernel) CachedChildren(ctx context.Context, d Dentry) ([]Dentry, error) {
	var out []Dentry
	err := k.cachedChildren(ctx, d, false, func(c Dentry) bool {
		out = append(out, c)
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// cachedChildren calls fn with each hashed child of d (its name, inode
// and mount), until fn returns false. Unhashed children (killed, or being
// looked up) are passed over.
func (k *Kernel) cachedChildren(ctx context.Context, d Dentry, stopEarly bool, fn func(Dentry) bool) error {
	var head vmi.VA
	var entOff uint64
	hlist := false
	if off, err := k.Field("dentry", "d_subdirs"); err == nil {
		head = vmi.VA(d.Addr) + vmi.VA(off)
		if entOff, err = k.Field("dentry", "d_child"); err != nil {
			return err
		}
	} else if off, err := k.Field("dentry", "d_children"); err == nil {
		head = vmi.VA(d.Addr) + vmi.VA(off)
		hlist = true
		if entOff, err = k.Field("dentry", "d_sib"); err != nil {
			return err
		}
	} else {
		return err
	}
	what := fmt.Sprintf("children of dentry %#x (%s)", d.Addr, d.Name)
	var ferr error
	visit := func(e vmi.VA) bool {
		if ctx.Err() != nil {
			return false
		}
		c, hashed, err := k.readDentry(e-vmi.VA(entOff), d.Mount)
		if err != nil {
			ferr = fmt.Errorf("linux: %s: %w", what, err)
			return false
		}
		if !hashed {
			return true
		}
		return fn(c)
	}
	var p *Problem
	if hlist { // a NULL-terminated hlist
		p = k.chainWalk(what, head, MaxCachedChildren, func(n vmi.VA) bool { return n == 0 }, visit)
	} else {
		p = k.ListWalk(what, head, MaxCachedChildren, visit)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if ferr != nil {
		return ferr
	}
	if p != nil {
		return fmt.Errorf("linux: %s at %#x: %w", p.Where, p.Addr, p.Err)
	}
	return nil
}

// readDentry reads a dentry's name, whether it is hashed, and its inode.
func (k *Kernel) readDentry(a vmi.VA, mount uint64) (Dentry, bool, error) {
	o := k.obj("dentry", a)
	pprev := o.u64("d_hash.pprev")
	inode := o.ptr("d_inode")
	if o.err != nil {
		return Dentry{}, false, o.err
	}
	name, err := k.dentryName(a)
	if err != nil {
		return Dentry{}, false, err
	}
	d := Dentry{Addr: uint64(a), Mount: mount, Name: name}
	if inode != 0 {
		in, err := k.cachedInode(inode)
		if err != nil {
			return d, false, fmt.Errorf("dentry %#x (%s): %w", uint64(a), name, err)
		}
		d.Inode = &in
	}
	return d, pprev != 0, nil
}

func (k *Kernel) cachedInode(a vmi.VA) (Inode, error) {
	o := k.obj("inode", a)
	in := Inode{Addr: uint64(a)}
	in.Ino = o.uint("i_ino")
	in.Mode = uint32(o.uint("i_mode"))
	in.Size = int64(o.uint("i_size"))
	in.Nlink = uint32(o.uint("i_nlink"))
	in.UID = uint32(o.uint("i_uid.val"))
	in.GID = uint32(o.uint("i_gid.val"))
	return in, o.err
}

// fsRoot is the root dentry and mount of task's fs_struct.
func (k *Kernel) fsRoot(task vmi.VA) (Dentry, error) {
	if task == 0 {
		a, ok := k.Symbols.Addr("init_task")
		if !ok {
			return Dentry{}, fmt.Errorf("linux: no init_task symbol: %w", ErrLayout)
		}
		task = a
	}
	o := k.obj("task_struct", task)
	fs := o.ptr("fs")
	if o.err != nil {
		return Dentry{}, o.err
	}
	if fs == 0 {
		return Dentry{}, fmt.Errorf("linux: task %#x has no fs_struct: %w", uint64(task), vmi.ErrCorrupt)
	}
	fo := k.obj("fs_struct", fs)
	mnt := fo.ptr("root.mnt")
	dentry := fo.ptr("root.dentry")
	mntOff, err := k.Field("mount", "mnt")
	if err := firstErr(fo.err, err); err != nil {
		return Dentry{}, err
	}
	d, _, err := k.readDentry(dentry, uint64(mnt-vmi.VA(mntOff)))
	if err != nil {
		return d, fmt.Errorf("linux: root of fs_struct %#x: %w", uint64(fs), err)
	}
	d.Name = "/"
	return d, nil
}

// crossMounts follows d into the mounts stacked on it: a child mount of
// d's mount whose mountpoint is d puts its root in d's place, as many
// times as mounts are stacked (bounded).
func (k *Kernel) crossMounts(d Dentry) (Dentry, error) {
	headOff, err := k.Field("mount", "mnt_mounts")
	if err != nil {
		return d, err
	}
	childOff, err := k.Field("mount", "mnt_child")
	if err != nil {
		return d, err
	}
	for i := 0; ; i++ {
		if i >= maxPathDepth {
			return d, fmt.Errorf("linux: more than %d mounts stacked on dentry %#x: %w", maxPathDepth, d.Addr, vmi.ErrCorrupt)
		}
		var child vmi.VA
		var rerr error
		p := k.ListWalk(fmt.Sprintf("child mounts of mount %#x", d.Mount), vmi.VA(d.Mount)+vmi.VA(headOff), maxListLen, func(e vmi.VA) bool {
			m := e - vmi.VA(childOff)
			o := k.obj("mount", m)
			mp := o.ptr("mnt_mountpoint")
			if o.err != nil {
				rerr = o.err
				return false
			}
			if uint64(mp) == d.Addr {
				child = m // the last one found is the top of the stack
			}
			return true
		})
		if p != nil {
			return d, fmt.Errorf("linux: %s at %#x: %w", p.Where, p.Addr, p.Err)
		}
		if rerr != nil {
			return d, rerr
		}
		if child == 0 {
			return d, nil
		}
		o := k.obj("mount", child)
		root := o.ptr("mnt.mnt_root")
		if o.err != nil {
			return d, o.err
		}
		name := d.Name
		nd, _, err := k.readDentry(root, uint64(child))
		if err != nil {
			return d, fmt.Errorf("linux: root of mount %#x: %w", uint64(child), err)
		}
		nd.Name = name
		d = nd
	}
}
