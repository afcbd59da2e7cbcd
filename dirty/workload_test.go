package dirty

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/qcow"
)

func sh(t *testing.T, dir, tool string, args ...string) string {
	t.Helper()
	return fixture.Run(t, dir, tool, args...)
}

// workload builds base.img with mkfs.ext4 -d and changed.img with debugfs
// plus an in-place overwrite of a data block behind the filesystem's back
// (the inode, timestamps included, is untouched: only the data blocks can
// tell). It returns the qemu-io commands that turn base into changed.
func workload(t *testing.T) (dir string, writes []string) {
	dir = t.TempDir()
	tree := filepath.Join(dir, "tree")
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"etc", "sub/deep", "gone", "var/log"} {
		must(os.MkdirAll(filepath.Join(tree, d), 0o755))
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0\n", "etc/hosts": "127.0.0.1 localhost\n",
		"sub/a.txt": "aaa\n", "sub/deep/b.txt": "bbb\n", "gone/x": "x\n",
		"var/log/app.log": strings.Repeat("log line\n", 1000), "c.txt": "ccc\n",
		"big.bin": strings.Repeat("0123456789abcdef", 64<<10), // 1 MiB
	}
	for n := 0; n < 200; n++ {
		files[fmt.Sprintf("sub/f%03d", n)] = fmt.Sprintf("file %d\n", n)
	}
	for p, c := range files {
		must(os.WriteFile(filepath.Join(tree, p), []byte(c), 0o644))
	}
	must(os.Symlink("etc/hosts", filepath.Join(tree, "lnk")))
	sh(t, dir, "mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", tree, "-b", "4096", "base.img", "48M")
	sh(t, dir, "cp", "--sparse=always", "base.img", "changed.img")
	must(os.WriteFile(filepath.Join(dir, "new.txt"), []byte("brand new\n"), 0o644))
	script := strings.Join([]string{
		"write new.txt /sub/new.txt",
		"rm /gone/x", "rmdir /gone",
		"mkdir /newdir", "write new.txt /newdir/inner.txt",
		"ln /sub/a.txt /sub/deep/a-link.txt", "sif /sub/a.txt links_count 2",
		"ln /c.txt /sub/c-renamed.txt", "unlink /c.txt",
		"sif /etc/hosts uid 1000", "sif /etc/passwd mode 0100600",
		"rm /lnk", "symlink /lnk /etc/passwd",
		"punch /var/log/app.log 1",
		"sif /var/log/app.log size 4096",
	}, "\n") + "\n"
	cmd := exec.Command(fixture.Tool(t, "debugfs"), "-w", "-f", "-", "changed.img")
	cmd.Dir, cmd.Stdin = dir, strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	// In-place overwrite of big.bin's file block 3, found with debugfs bmap.
	out := sh(t, dir, "debugfs", "-R", "bmap /big.bin 3", "changed.img")
	blk, err := strconv.ParseInt(strings.TrimSpace(lastLine(out)), 10, 64)
	if err != nil {
		t.Fatalf("debugfs bmap: %q", out)
	}
	f, err := os.OpenFile(filepath.Join(dir, "changed.img"), os.O_WRONLY, 0)
	must(err)
	_, err = f.WriteAt(bytes.Repeat([]byte("X"), 100), blk*4096+10)
	must(err)
	must(f.Close())
	run := exec.Command("go", "run", "./testdata/blkdiff", filepath.Join(dir, "base.img"), filepath.Join(dir, "changed.img"), filepath.Join(dir, "chunks"))
	run.Dir = fixture.Root()
	o, err := run.Output()
	if err != nil {
		t.Fatalf("blkdiff: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(o))
	for sc.Scan() {
		writes = append(writes, sc.Text())
	}
	return dir, writes
}

func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return ls[len(ls)-1]
}

func qemuIO(t *testing.T, dir, img string, writes []string) {
	args := []string{"-f", "qcow2"}
	for _, w := range writes {
		args = append(args, "-c", w)
	}
	sh(t, dir, "qemu-io", append(args, img)...)
}

// TestWorkloadSources runs one workload through every dirty source and
// checks each against the full comparison of the before and after trees.
func TestWorkloadSources(t *testing.T) {
	ctx := context.Background()
	dir, writes := workload(t)
	_, baseV := openVol(t, filepath.Join(dir, "base.img"))
	_, changedV := openVol(t, filepath.Join(dir, "changed.img"))
	truth := truthDiff(walkAll(t, baseV), walkAll(t, changedV))
	after := walkAll(t, changedV)
	if truth["/big.bin"] != Modified {
		t.Fatalf("workload: the reference does not see the in-place write: %v", truth)
	}

	// cow: an overlay on the raw base holding the writes.
	sh(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw", "ov.qcow2")
	qemuIO(t, dir, "ov.qcow2", writes)
	// bitmap: a single qcow2 with an enabled persistent bitmap.
	sh(t, dir, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "base.img", "bm.qcow2")
	sh(t, dir, "qemu-img", "bitmap", "--add", "--enable", "-g", "65536", "bm.qcow2", "poll")
	qemuIO(t, dir, "bm.qcow2", writes)

	for _, src := range []string{"cow", "bitmap", "hash"} {
		t.Run(src, func(t *testing.T) {
			var dirty rangeset.Set
			img := filepath.Join(dir, "changed.img")
			switch src {
			case "cow":
				img = filepath.Join(dir, "ov.qcow2")
			case "bitmap":
				img = filepath.Join(dir, "bm.qcow2")
			}
			im, v := openVol(t, img)
			var err error
			switch src {
			case "cow":
				dirty, err = im.Layers()[0].Allocated(ctx)
			case "bitmap":
				dirty, err = im.Top().(*qcow.Layer).BitmapDirty(ctx, "poll")
			case "hash":
				var a, b []uint64
				a, err = ChunkHashes(ctx, baseV.Device, baseV.Partition.Size, DefaultChunk)
				if err == nil {
					b, err = ChunkHashes(ctx, v.Device, v.Partition.Size, DefaultChunk)
				}
				dirty = HashDirty(a, b, DefaultChunk, v.Partition.Size)
			}
			if err != nil {
				t.Fatal(err)
			}
			// The previous view is the index of the base, as a poll state
			// would hold it (with content digests), without the old image.
			old, err := BuildIndex(ctx, baseV)
			if err != nil {
				t.Fatal(err)
			}
			for ino, r := range old.Files {
				if r.IsRegular() {
					if r.SHA256, err = hashFile(ctx, baseV, ino); err != nil {
						t.Fatal(err)
					}
				}
			}
			res := pollLogged(t, v, old, dirty, WithHashes())
			checkAgainstTruth(t, truth, after, res.Changes)

			// A second poll on the new index with the same (cumulative)
			// dirty ranges reports nothing: nothing changed since.
			res2, err := Poll(ctx, v, res.New, dirty, WithHashes())
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range res2.Changes {
				t.Errorf("second poll: %s %s %v", c.Change, c.Path, c.Reasons)
			}
		})
	}
}
