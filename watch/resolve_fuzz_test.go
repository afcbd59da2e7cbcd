package watch

import (
	"testing"

	"github.com/vmscope/vmscope/vmi"
)

// flatMem is kernel virtual memory made of one window of bytes.
type flatMem struct {
	base vmi.VA
	b    []byte
}

func (m flatMem) ReadVirt(p []byte, va vmi.VA) (int, error) {
	if va < m.base || uint64(va-m.base) >= uint64(len(m.b)) {
		return 0, vmi.ErrNotPresent
	}
	n := copy(p, m.b[va-m.base:])
	if n < len(p) {
		return n, vmi.ErrNotPresent
	}
	return n, nil
}

// FuzzResolveChild looks a name up among the children of a dentry in
// hostile memory (the layout of a 6.1 dentry: d_subdirs lists, and of a
// 6.8 one: d_children hlists): it never panics, ends (the walk is
// bounded), and a dentry it returns does carry the name and an inode.
func FuzzResolveChild(f *testing.F) {
	f.Add(make([]byte, 512), false)
	seed := make([]byte, 1024)
	f.Add(seed, true)
	f.Fuzz(func(t *testing.T, b []byte, hlist bool) {
		base := vmi.VA(0xffff888000000000)
		w := &Kernel{mem: flatMem{base, b}, childHlist: hlist,
			dChildren: 0x90, dSib: 0x80, dName: 0x20, dNameLen: 0x24, dNamePtr: 0x28, dParent: 0x18, dInode: 0x30}
		r := &Resolver{w: w}
		d, err := r.child(base, "secret.txt")
		if err != nil || d == 0 {
			return
		}
		name, err := w.dentryName(d)
		if err != nil || name != "secret.txt" {
			t.Fatalf("child %#x named %q (%v)", uint64(d), name, err)
		}
		if ino, err := w.ptr(d, w.dInode); err != nil || ino == 0 {
			t.Fatalf("child %#x without an inode", uint64(d))
		}
	})
}
