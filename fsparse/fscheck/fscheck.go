// Package fscheck is the conformance kit every filesystem reader of
// fsparse must pass, exported for tests: a volume read through vmscope must
// equal the source tree the fixture was made from (mkfs.ext4 -d, mcopy:
// type, permissions, owner, links, mtime, symlink target, every byte), and
// its Filesystem must satisfy testing/fstest.TestFS. A new format costs a
// fixture and a call to Tree and FS.
package fscheck

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/vmscope/vmscope/fsparse"
)

// Options say what the format can represent.
type Options struct {
	// NoUnixMeta: the format has no Unix permissions, owners or link counts
	// (FAT); only type, size, content and targets are compared.
	NoUnixMeta bool
	// Size, when set, is the judge of a file's size where the source tree
	// differs (a tool that builds the image may change it: mkfs.ext4 -d
	// drops the tail hole of a sparse file on inline_data); it returns the
	// independent reference's size and whether it has one.
	Size func(path string) (int64, bool)
}

// Tree walks the volume and compares every entry with the file of the
// source tree src it was made from; lost+found is the only extra allowed.
// It returns the number of entries compared.
func Tree(t testing.TB, v *fsparse.Volume, src string, opt Options) int {
	t.Helper()
	got := map[string]fsparse.Entry{}
	err := v.Walk(context.Background(), ".", func(e fsparse.Entry, err error) error {
		if err != nil {
			t.Errorf("%s: %v", e.Path, err)
		}
		got[e.Path] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		gp := "/" + filepath.ToSlash(rel)
		if rel == "." {
			gp = "/"
		}
		e, ok := got[gp]
		if !ok {
			t.Errorf("%s:%s: in the source tree, not listed", v.ID, gp)
			return nil
		}
		delete(got, gp)
		n++
		Entry(t, v, e, p, fi, opt)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range got {
		if p == "/lost+found" || strings.HasPrefix(p, "/lost+found/") {
			continue
		}
		t.Errorf("%s:%s: listed, not in the source tree", v.ID, p)
	}
	return n
}

// Entry compares one listed entry e with the source file p.
func Entry(t testing.TB, v *fsparse.Volume, e fsparse.Entry, p string, fi os.FileInfo, opt Options) {
	t.Helper()
	where := v.ID + ":" + e.Path
	if got, want := e.Type, fsparse.TypeName(fi.Mode()); got != want {
		t.Errorf("%s: type %s, want %s", where, got, want)
		return
	}
	if !opt.NoUnixMeta {
		st := fi.Sys().(*syscall.Stat_t)
		if got, want := fsparse.UnixPerm(e.Mode), uint32(st.Mode)&0o7777; got != want && e.Path != "/" {
			t.Errorf("%s: mode %04o, want %04o", where, got, want)
		}
		if e.Uid != st.Uid || e.Gid != st.Gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", where, e.Uid, e.Gid, st.Uid, st.Gid)
		}
		if e.Type != "dir" && e.Links != uint32(st.Nlink) {
			t.Errorf("%s: %d links, want %d", where, e.Links, st.Nlink)
		}
		// mkfs.ext4 -d copies times to the second only.
		want := fi.ModTime().Truncate(time.Second)
		if e.Type != "symlink" && e.Path != "/" && !e.Mtime.Equal(want) {
			t.Errorf("%s: mtime %v, want %v", where, e.Mtime, want)
		}
	}
	switch e.Type {
	case "symlink":
		want, _ := os.Readlink(p)
		if e.Target != want {
			t.Errorf("%s: target %q, want %q", where, e.Target, want)
		}
	case "file":
		if e.Size != fi.Size() {
			ref, ok := int64(-1), false
			if opt.Size != nil {
				ref, ok = opt.Size(e.Path)
			}
			if !ok || ref != e.Size {
				t.Errorf("%s: size %d, want %d (reference: %d)", where, e.Size, fi.Size(), ref)
				return
			}
		}
		f, err := v.Open(strings.TrimPrefix(e.Path, "/"))
		if err != nil {
			t.Errorf("%s: %v", where, err)
			return
		}
		SameContent(t, where, io.NewSectionReader(f, 0, f.Size()), p, e.Size)
	}
}

var bufPool = sync.Pool{New: func() any { return &[2][]byte{make([]byte, 1<<20), make([]byte, 1<<20)} }}

// SameContent compares got with the first n bytes of the file at srcPath.
func SameContent(t testing.TB, where string, got io.Reader, srcPath string, n int64) {
	t.Helper()
	f, err := os.Open(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	src := io.LimitReader(f, n)
	bufs := bufPool.Get().(*[2][]byte)
	defer bufPool.Put(bufs)
	a, b := bufs[0], bufs[1]
	var off int64
	for {
		n, errA := io.ReadFull(got, a)
		m, errB := io.ReadFull(src, b)
		if n != m || !bytes.Equal(a[:n], b[:m]) {
			t.Errorf("%s: content differs from the source in the MiB at offset %d (read %d, want %d)", where, off, n, m)
			return
		}
		off += int64(n)
		if errA != nil || errB != nil {
			if (errA == nil) != (errB == nil) {
				t.Errorf("%s: length differs at %d: %v / %v", where, off, errA, errB)
			}
			return
		}
	}
}

// FS runs testing/fstest.TestFS on the directory dir of the volume's
// filesystem (fstest reads every file several ways: a small directory keeps
// it short), which must hold the expected files (paths relative to dir).
func FS(t testing.TB, v *fsparse.Volume, dir string, expected ...string) {
	t.Helper()
	sub, err := fs.Sub(v.FS, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := fstest.TestFS(sub, expected...); err != nil {
		t.Errorf("%s:%s: fstest: %v", v.ID, dir, err)
	}
}
