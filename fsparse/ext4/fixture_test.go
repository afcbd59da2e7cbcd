package ext4

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// The source tree is built once per test binary in a temp dir, then copied
// into images by mkfs.ext4 -d in several variants. Layout:
//
//	main/   nested dirs, ~300 small files, big, links, odd modes and
//	        owners, fifo, chardev  (fstest.TestFS runs here)
//	extra/  big3m (3 MiB), sparse (1600 data regions between holes), sparse_far (data at
//	        70 and 100 MiB: triple indirect with 1 KiB blocks)
//	big/    ~3000 empty files (htree after e2fsck -fD)
//	weird/  a file with a non-UTF-8 name
type variant struct {
	name string
	args []string
}

var variants = []variant{
	{"ext4", []string{"-t", "ext4", "-b", "4096"}},
	{"ext4-1k", []string{"-t", "ext4", "-b", "1024", "-O", "^metadata_csum,^64bit"}},
	{"ext4-64k", []string{"-t", "ext4", "-b", "65536"}},
	{"ext4-inline", []string{"-t", "ext4", "-b", "4096", "-O", "inline_data"}},
	{"ext4-noextent", []string{"-t", "ext4", "-b", "4096", "-O", "^extent,^64bit"}},
	{"ext4-metabg", []string{"-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"}},
	{"ext3", []string{"-t", "ext3"}},
	{"ext2", []string{"-t", "ext2", "-I", "128", "-b", "2048"}},
}

const (
	bigDirEntries = 3000
	sparseRegions = 1600
	nonUTF8Name   = "bad\xff\xfe"
	nsecExtra     = 123456789<<2 | 1
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	images    = map[string]string{}
)

func tool(t testing.TB, name string) string { return fixture.Tool(t, name) }

// testImages builds (once) the source tree and every image variant and
// returns the tree root and variant → image path.
func testImages(t testing.TB) (string, map[string]string) {
	t.Helper()
	mkfs := tool(t, "mkfs.ext4")
	e2fsck := tool(t, "e2fsck")
	debugfs := tool(t, "debugfs")
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ext4test")
		if buildErr != nil {
			return
		}
		src := filepath.Join(buildDir, "tree")
		if buildErr = makeTree(src); buildErr != nil {
			return
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, v := range variants {
			wg.Add(1)
			go func() {
				defer wg.Done()
				img := filepath.Join(buildDir, v.name+".img")
				args := append([]string{"-q", "-F", "-N", "8192", "-E", "root_owner=0:0", "-L", "lbl-" + v.name, "-d", src}, v.args...)
				args = append(args, img, "160M")
				var err error
				if out, e := exec.Command(mkfs, args...).CombinedOutput(); e != nil {
					err = fmt.Errorf("mkfs %s: %v\n%s", v.name, e, out)
				} else if out, e := exec.Command(e2fsck, "-fyD", img).CombinedOutput(); e != nil {
					if ee, ok := e.(*exec.ExitError); !ok || ee.ExitCode() > 1 {
						err = fmt.Errorf("e2fsck %s: %v\n%s", v.name, e, out)
					}
				}
				if err == nil && v.name != "ext2" {
					// mke2fs -d stores whole seconds: give one file
					// nanoseconds and an epoch bit (year 2242).
					if out, e := exec.Command(debugfs, "-w", "-R", fmt.Sprintf("sif /main/odd/owned mtime_extra %#x", nsecExtra), img).CombinedOutput(); e != nil {
						err = fmt.Errorf("debugfs sif %s: %v\n%s", v.name, e, out)
					}
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil && buildErr == nil {
					buildErr = err
				}
				images[v.name] = img
			}()
		}
		wg.Wait()
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "tree"), images
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func makeTree(root string) error {
	rng := rand.New(rand.NewSource(42))
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("making tree: %v", r)
			}
		}()
		main := filepath.Join(root, "main")
		mtime := time.Date(2023, 4, 5, 6, 7, 8, 123456789, time.UTC)
		var dirs []string
		for i := 0; i < 6; i++ {
			d := filepath.Join(main, fmt.Sprintf("d%d", i))
			for j := 0; j <= i%3; j++ {
				d = filepath.Join(d, fmt.Sprintf("sub%d", j))
			}
			must(os.MkdirAll(d, 0o755))
			dirs = append(dirs, d)
		}
		dirs = append(dirs, main)
		sizes := []int{0, 1, 59, 60, 61, 100, 4095, 4096, 4097, 12345, 70000}
		for i := 0; i < 300; i++ {
			d := dirs[i%len(dirs)]
			n := sizes[i%len(sizes)]
			if i >= len(sizes) {
				n = rng.Intn(6000)
			}
			b := make([]byte, n)
			rng.Read(b)
			p := filepath.Join(d, fmt.Sprintf("f%03d.dat", i))
			must(os.WriteFile(p, b, 0o644))
			must(os.Chtimes(p, mtime, mtime.Add(time.Duration(i)*time.Second+time.Duration(i)*time.Microsecond)))
		}
		big := make([]byte, 200<<10+123)
		rng.Read(big)
		must(os.WriteFile(filepath.Join(main, "big"), big, 0o640))
		// Sparse file: >1500 single-region data blocks separated by holes.
		sparseDir := filepath.Join(root, "extra")
		must(os.MkdirAll(sparseDir, 0o755))
		sp, e := os.Create(filepath.Join(sparseDir, "sparse"))
		must(e)
		blk := make([]byte, 4096)
		for i := 0; i < sparseRegions; i++ {
			rng.Read(blk)
			_, e := sp.WriteAt(blk, int64(i)*8192)
			must(e)
		}
		must(sp.Close())
		// Data far out: triple indirect on 1 KiB block maps.
		sf, e := os.Create(filepath.Join(sparseDir, "sparse_far"))
		must(e)
		for _, off := range []int64{0, 70 << 20, 100<<20 + 5} {
			rng.Read(blk)
			_, e := sf.WriteAt(blk[:1500], off)
			must(e)
		}
		must(sf.Truncate(110 << 20))
		must(sf.Close())
		big3 := make([]byte, 3<<20+321)
		rng.Read(big3)
		must(os.WriteFile(filepath.Join(sparseDir, "big3m"), big3, 0o644))
		// Symlinks, short and long, and hard links.
		must(os.Symlink("d0/sub0/f000.dat", filepath.Join(main, "short_link")))
		must(os.Symlink(strings.Repeat("long/", 20)+"target", filepath.Join(main, "long_link")))
		must(os.Symlink(strings.Repeat("x", 300), filepath.Join(main, "longer_link")))
		must(os.Symlink("../nowhere", filepath.Join(main, "dangling")))
		must(os.Link(filepath.Join(main, "big"), filepath.Join(main, "big_hardlink")))
		must(os.Link(filepath.Join(dirs[0], "f000.dat"), filepath.Join(main, "d1", "hard0")))
		// Odd modes and owners.
		odd := filepath.Join(main, "odd")
		must(os.MkdirAll(odd, 0o755))
		for name, mode := range map[string]uint32{"setuid": 0o4755, "setgid": 0o2711, "none": 0, "all": 0o7777} {
			p := filepath.Join(odd, name)
			must(os.WriteFile(p, []byte(name), 0o600))
			must(syscall.Chmod(p, mode))
		}
		sticky := filepath.Join(odd, "sticky")
		must(os.Mkdir(sticky, 0o755))
		must(syscall.Chmod(sticky, 0o1777))
		owned := filepath.Join(odd, "owned")
		must(os.WriteFile(owned, []byte("owned"), 0o644))
		must(os.Lchown(owned, 1234, 5678))
		must(os.Lchown(filepath.Join(main, "short_link"), 1234, 5678))
		must(os.Lchown(sticky, 4321, 8765))
		must(syscall.Mkfifo(filepath.Join(odd, "fifo"), 0o644))
		must(syscall.Mknod(filepath.Join(odd, "chardev"), syscall.S_IFCHR|0o600, int(3<<8|7)))
		must(os.MkdirAll(filepath.Join(main, "empty_dir"), 0o700))
		// Big directory.
		bd := filepath.Join(root, "big")
		must(os.MkdirAll(bd, 0o755))
		for i := 0; i < bigDirEntries; i++ {
			f, e := os.Create(filepath.Join(bd, fmt.Sprintf("entry-with-a-longish-name-%05d", i)))
			must(e)
			f.Close()
		}
		w := filepath.Join(root, "weird")
		must(os.MkdirAll(w, 0o755))
		must(os.WriteFile(filepath.Join(w, nonUTF8Name), []byte("non-utf8"), 0o644))
		must(os.WriteFile(filepath.Join(w, "ok"), bytes.Repeat([]byte("ok"), 10), 0o644))
	}()
	return err
}
