package ext4

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// answer is one answer of a filesystem, by the call that gave it.
type answer struct {
	call string
	n    uint32
	val  any
	err  string
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// inodeAnswers is everything a view answers from memory, for every inode
// of f: Inode (value or error), InodeAllocated, the ScanInodes callbacks,
// InodeBitmap, and ScanDir of every directory in use (the per-inode calls
// for the inodes which selects, all when nil).
func inodeAnswers(t *testing.T, f *FS, which func(ino uint32) bool) []answer {
	t.Helper()
	var out []answer
	for ino := uint32(1); ino <= f.sb.InodesCount; ino++ {
		if which != nil && !which(ino) {
			continue
		}
		in, err := f.Inode(ino)
		out = append(out, answer{"inode", ino, in, errString(err)})
		a, aerr := f.InodeAllocated(ino)
		out = append(out, answer{"allocated", ino, a, errString(aerr)})
		if err == nil && in.IsDir() && a {
			slots, err := f.ScanDir(ino, false)
			out = append(out, answer{"scandir", ino, slots, errString(err)})
			ents, err := f.ReadDirInode(ino)
			out = append(out, answer{"readdir", ino, ents, errString(err)})
		}
	}
	err := f.ScanInodes(func(ino uint32, alloc bool, ctime uint32, raw []byte) {
		out = append(out, answer{"scaninodes", ino, [3]any{alloc, ctime, string(raw)}, ""})
	})
	out = append(out, answer{"scaninodes", 0, nil, errString(err)})
	for g := uint32(0); g < f.ngroup; g++ {
		bm, err := f.InodeBitmap(g)
		out = append(out, answer{"bitmap", g, bm, errString(err)})
	}
	return out
}

// TestInodeTablesView: the view that holds the inode tables and bitmaps
// in memory answers exactly what the filesystem read from the device
// answers (directory listings and scans included), on images with and
// without bg_itable_unused (checksums), 128- and 256-byte inodes, 1 KiB
// and 4 KiB blocks, inline data, and deleted files; over budget it is the
// filesystem itself.
func TestInodeTablesView(t *testing.T) {
	paths := []string{fixture.Path(t, "ext4-128.img"), fixture.Path(t, "ext4-nocsum-1k.img"), fixture.Path(t, "ext4-inline.img"),
		irImage(t, "del-debugfs.img"), irImage(t, "del-kernel.img")}
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			f := openFS(t, p)
			v, err := f.WithInodeTables(context.Background(), f.TablesBytes())
			if err != nil {
				t.Fatal(err)
			}
			if v == f || v.tables == nil {
				t.Fatal("no tables held within the budget")
			}
			if o, _ := f.WithInodeTables(context.Background(), f.TablesBytes()-1); o != f {
				t.Error("over the budget: not the filesystem itself")
			}
			want, got := inodeAnswers(t, f, nil), inodeAnswers(t, v, nil)
			if !reflect.DeepEqual(want, got) {
				for i := range min(len(want), len(got)) {
					if !reflect.DeepEqual(want[i], got[i]) {
						t.Fatalf("first difference:\n device: %+v\n memory: %+v", want[i], got[i])
					}
				}
				t.Fatalf("%d answers from the device, %d from memory", len(want), len(got))
			}
		})
	}
}

// TestInodeTablesViewTruncated: on an image cut short, the groups whose
// tables cannot be read are read from the device again, so the view gives
// the same errors (ErrCorrupt, naming the inode and offset) as the
// filesystem.
func TestInodeTablesViewTruncated(t *testing.T) {
	src := fixture.Path(t, "ext4-nocsum-1k.img")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "cut.img")
	f0 := openFS(t, src)
	last := f0.itable[f0.ngroup-1] * f0.bs
	if err := os.WriteFile(p, b[:last+f0.bs], 0o644); err != nil { // the last table cut after one block
		t.Fatal(err)
	}
	f := openFS(t, p)
	v, err := f.WithInodeTables(context.Background(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if v.tables.table[f.ngroup-1] != nil || v.tables.table[0] == nil {
		t.Fatal("the cut table is held, or the first is not")
	}
	// The inodes of the first group (held) and of the last two (read
	// from the device: one cut, one past the end).
	ipg := f.sb.InodesPerGroup
	which := func(ino uint32) bool { g := (ino - 1) / ipg; return g == 0 || g+2 >= f.ngroup }
	want, got := inodeAnswers(t, f, which), inodeAnswers(t, v, which)
	if !reflect.DeepEqual(want, got) {
		t.Fatal("the view answers differently on a truncated image")
	}
	ino := (f.ngroup-1)*f.sb.InodesPerGroup + f.sb.InodesPerGroup
	if _, err := v.Inode(ino); err == nil {
		t.Fatalf("inode %d past the end: no error", ino)
	}
}
