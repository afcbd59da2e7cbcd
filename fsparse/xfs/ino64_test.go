package xfs_test

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse/xfs"
	"github.com/vmscope/vmscope/internal/fixture"
	_ "github.com/vmscope/vmscope/qcow" // the fixture is a qcow2 of the sparse volume
)

// ino64Fixture returns file name of testdata/xfs/ino64.sh's output.
func ino64Fixture(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(fixture.Root(), "testdata", "out-xfs-ino64")
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		if b, err := os.ReadFile(filepath.Join(dir, "loop-skipped.txt")); err == nil {
			fixture.Missing(t, "%s: %s", p, strings.TrimSpace(string(b)))
		}
		fixture.Missing(t, "%s (run bash testdata/xfs/ino64.sh)", p)
	}
	return p
}

// TestInode64: on a 3 TiB volume whose inode64 allocator placed
// directories in AGs 2 and 3 (inode numbers above 2^32, so the root's
// shortform directory stores 8-byte inode numbers for all its entries),
// every entry the kernel listed is listed with the kernel's inode number
// and type, and every file reads its content: none is dropped (the
// shortform entry count is the header's count, not its i8count).
func TestInode64(t *testing.T) {
	im, err := disk.Open(ino64Fixture(t, "xfs-ino64.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	f, err := xfs.Open(im, im.Size())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(ino64Fixture(t, "inodes.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if !strings.HasSuffix(sc.Text(), " d .") {
			want = append(want, sc.Text())
		}
	}
	var got []string
	high := 0
	err = fs.WalkDir(f, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		in := fi.Sys().(*xfs.Inode)
		y := "f"
		if d.IsDir() {
			y = "d"
		} else {
			fl, err := f.Open(p)
			if err != nil {
				return err
			}
			data, err := io.ReadAll(fl.(io.Reader))
			fl.Close()
			if want := fmt.Sprintf("file %s in an AG of its own\n", strings.TrimPrefix(filepath.Dir(p), "d")); err != nil || string(data) != want {
				t.Errorf("%s: %q, %v; want %q", p, data, err, want)
			}
		}
		if in.Ino > 1<<32-1 {
			high++
		}
		got = append(got, fmt.Sprintf("%d %s ./%s", in.Ino, y, p))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(want, func(i, j int) bool { return strings.Fields(want[i])[2] < strings.Fields(want[j])[2] })
	if strings.Join(got, "\n") != strings.Join(want, "\n") || high < 4 {
		t.Errorf("listed (%d above 2^32):\n%s\nthe kernel listed:\n%s", high, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
