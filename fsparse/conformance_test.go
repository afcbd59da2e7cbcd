package fsparse_test

// Conformance of the whole disk stack (qcow → partitions → filesystem) on
// the fixtures that testdata/fixtures.sh builds with mkfs.ext4 -d, sfdisk,
// mkfs.vfat/mcopy and qemu-img: every file read through vmscope must equal
// the source tree it was made from, and every listing must equal debugfs's.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/fscheck"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/qcow"
)

// volumeCase says which source tree a volume of a fixture was made from.
// mkfs.ext4 -d copies times to the second only, so times are compared in
// seconds here; TestTimestampsAgainstDebugfs checks nanoseconds and epoch
// bits against debugfs.
type volumeCase struct {
	id   string // "disk", "p1", ...
	tree string // folder under the fixture dir; "" when only debugfs is the reference
	fat  bool
}

var diskCases = []struct {
	image string
	vols  []volumeCase
}{
	{"ext4.img", []volumeCase{{id: "disk", tree: "tree"}}},
	{"ext4-nocsum-1k.img", []volumeCase{{id: "disk", tree: "tree"}}},
	{"ext4-64k.img", []volumeCase{{id: "disk", tree: "tree-small"}}},
	{"ext4-inline.img", []volumeCase{{id: "disk", tree: "tree-small"}}},
	{"ext4-128.img", []volumeCase{{id: "disk", tree: "tree-small"}}},
	{"ext3.img", []volumeCase{{id: "disk", tree: "tree"}}},
	{"ext2.img", []volumeCase{{id: "disk", tree: "tree"}}},
	{"ext4-changed.img", []volumeCase{{id: "disk"}}},
	{"gpt.img", []volumeCase{{id: "p1", tree: "tree"}, {id: "p2", tree: "tree2"}}},
	{"gpt.qcow2", []volumeCase{{id: "p1", tree: "tree"}, {id: "p2", tree: "tree2"}}},
	{"gpt-v2.qcow2", []volumeCase{{id: "p1", tree: "tree"}, {id: "p2", tree: "tree2"}}},
	{"gpt-zlib.qcow2", []volumeCase{{id: "p1", tree: "tree"}, {id: "p2", tree: "tree2"}}},
	{"gpt-zstd.qcow2", []volumeCase{{id: "p1", tree: "tree"}, {id: "p2", tree: "tree2"}}},
	{"mbr.img", []volumeCase{{id: "p1", tree: "tree-fat", fat: true}, {id: "p2", tree: "tree2"}}},
}

func openDisk(t *testing.T, name string) (*disk.Image, *fsparse.Disk) {
	t.Helper()
	im, err := qcow.Open(fixture.Path(t, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	d, err := fsparse.Open(im, im.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Problems) > 0 {
		t.Fatalf("%s: problems: %v", name, d.Problems)
	}
	return im, d
}

// TestAgainstSourceTree walks every volume of every fixture and compares
// each file with the file it was made from: type, permissions, owner,
// size, mtime, link count, symlink target and every byte of content.
func TestAgainstSourceTree(t *testing.T) {
	for _, c := range diskCases {
		t.Run(c.image, func(t *testing.T) {
			_, d := openDisk(t, c.image)
			if len(d.Volumes) != len(c.vols) {
				t.Fatalf("%d volumes, want %d", len(d.Volumes), len(c.vols))
			}
			for _, vc := range c.vols {
				if vc.tree == "" {
					continue
				}
				v, err := d.Volume(vc.id)
				if err != nil {
					t.Fatal(err)
				}
				src := filepath.Join(fixture.Dir(), vc.tree)
				compareTree(t, c.image, v, src, vc)
				dirs := []string{"."} // tree2, tree-fat: small
				if vc.tree == "tree" || vc.tree == "tree-small" {
					dirs = []string{"etc", "links"}
				}
				for _, dir := range dirs {
					fscheck.FS(t, v, dir, someFiles(t, filepath.Join(src, dir), 2)...)
				}
			}
		})
	}
}

func compareTree(t *testing.T, image string, v *fsparse.Volume, src string, vc volumeCase) {
	opt := fscheck.Options{NoUnixMeta: vc.fat}
	if v.Partition.Index == 0 {
		// mkfs.ext4 -d (1.47.0) drops the tail hole of a sparse file on an
		// inline_data filesystem: debugfs is the judge then.
		opt.Size = func(p string) (int64, bool) { return debugfsSize(t, image, p), true }
	}
	if n := fscheck.Tree(t, v, src, opt); n < 10 {
		t.Fatalf("only %d files compared", n)
	}
}

// someFiles returns up to n files (not directories) of the tree src, as
// io/fs paths.
func someFiles(t *testing.T, src string, n int) []string {
	var out []string
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && len(out) < n {
			rel, _ := filepath.Rel(src, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if len(out) == 0 {
		t.Fatalf("%s: no file", src)
	}
	return out
}

// debugfsSize is the size debugfs gives for path on a whole-disk image.
func debugfsSize(t *testing.T, image, path string) int64 {
	out, err := exec.Command(fixture.Tool(t, "debugfs"), "-R", "stat \""+path+"\"", fixture.Path(t, image)).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	_, after, ok := strings.Cut(string(out), "Size: ")
	if !ok {
		return -1
	}
	n, _ := strconv.ParseInt(strings.Fields(after)[0], 10, 64)
	return n
}

// debugfsList runs debugfs's parsable listing ("ls -p") of every directory
// in one debugfs process and returns path -> (inode, mode, uid, gid, size).
func debugfsList(t *testing.T, img string, dirs []string) map[string][5]uint64 {
	t.Helper()
	debugfs := fixture.Tool(t, "debugfs")
	var cmds bytes.Buffer
	for _, d := range dirs {
		fmt.Fprintf(&cmds, "ls -p \"%s\"\n", d)
	}
	cmd := exec.Command(debugfs, "-f", "-", img)
	cmd.Stdin = &cmds
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	res := map[string][5]uint64{}
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "debugfs: ls -p ") {
			cur = strings.Trim(strings.TrimPrefix(line, "debugfs: ls -p "), `"`)
			continue
		}
		// /ino/mode/uid/gid/name/size/ ; name may not contain '/'.
		f := strings.Split(line, "/")
		if len(f) != 8 || f[0] != "" {
			continue
		}
		name := f[5]
		if name == "." || name == ".." {
			continue
		}
		var v [5]uint64
		for i, s := range []string{f[1], f[2], f[3], f[4], f[6]} {
			base := 10
			if i == 1 {
				base = 8
			}
			if s == "" {
				continue
			}
			x, err := strconv.ParseUint(s, base, 64)
			if err != nil {
				t.Fatalf("debugfs line %q: %v", line, err)
			}
			v[i] = x
		}
		if v[0] == 0 {
			continue // an unused slot (deleted entry or empty block): not a file
		}
		p := strings.TrimSuffix(cur, "/") + "/" + name
		res[p] = v
	}
	return res
}

// TestAgainstDebugfs compares every directory listing of the ext fixtures
// (inode, mode, owner, size of every entry) with debugfs's own.
func TestAgainstDebugfs(t *testing.T) {
	for _, img := range []string{"ext4.img", "ext4-nocsum-1k.img", "ext4-64k.img", "ext4-inline.img", "ext4-128.img", "ext3.img", "ext2.img", "ext4-changed.img", "ext4-frag.img"} {
		t.Run(img, func(t *testing.T) {
			_, d := openDisk(t, img)
			v, err := d.Volume("")
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]fsparse.Entry{}
			var dirs []string
			err = v.Walk(context.Background(), ".", func(e fsparse.Entry, err error) error {
				if err != nil {
					t.Errorf("%s: %v", e.Path, err)
				}
				if e.Type == "dir" {
					if strings.ContainsAny(e.Path, "\"\\") {
						t.Fatalf("cannot quote %q for debugfs", e.Path)
					}
					dirs = append(dirs, e.Path)
				}
				if e.Path != "/" {
					got[e.Path] = e
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			want := debugfsList(t, fixture.Path(t, img), dirs)
			if len(want) != len(got) {
				t.Errorf("%d entries, debugfs lists %d", len(got), len(want))
			}
			for p, w := range want {
				e, ok := got[p]
				if !ok {
					t.Errorf("%s: listed by debugfs, not by vmscope", p)
					continue
				}
				mode := uint64(fsparse.UnixPerm(e.Mode))
				if w[0] != e.Ino || w[1]&0o7777 != mode || w[2] != uint64(e.Uid) || w[3] != uint64(e.Gid) {
					t.Errorf("%s: ino %d mode %04o owner %d:%d; debugfs: ino %d mode %o owner %d:%d", p, e.Ino, mode, e.Uid, e.Gid, w[0], w[1], w[2], w[3])
				}
				if e.Type != "dir" && w[4] != uint64(e.Size) {
					t.Errorf("%s: size %d, debugfs %d", p, e.Size, w[4])
				}
			}
		})
	}
}

// TestFragmented reads the file debugfs wrote into the gaps of deleted
// files and compares it with its source (the first 6 MiB of big.bin).
func TestFragmented(t *testing.T) {
	_, d := openDisk(t, "ext4-frag.img")
	v, err := d.Volume("")
	if err != nil {
		t.Fatal(err)
	}
	f, err := v.Open("fragmented.bin")
	if err != nil {
		t.Fatal(err)
	}
	ino, _ := v.Ext4().Lookup("fragmented.bin")
	ext, err := v.Ext4().Extents(ino)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) < 100 {
		t.Fatalf("fragmented.bin has %d extents; the fixture should fragment it", len(ext))
	}
	if f.Size() != 6<<20 {
		t.Fatalf("size %d, want %d", f.Size(), 6<<20)
	}
	tmp := filepath.Join(fixture.Dir(), "tree/data/big.bin")
	fscheck.SameContent(t, "fragmented.bin", io.NewSectionReader(f, 0, f.Size()), tmp, 6<<20)
}

// TestChainSeesOverlayChanges checks that the filesystem seen through the
// 3-layer chain and through the overlay on a raw base is the changed one.
func TestChainSeesOverlayChanges(t *testing.T) {
	for _, img := range []string{"chain-top.qcow2", "overlay-raw.qcow2"} {
		t.Run(img, func(t *testing.T) {
			_, d := openDisk(t, img)
			v, err := d.Volume("")
			if err != nil {
				t.Fatal(err)
			}
			f, err := v.Open("etc/new-file.txt")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
			if string(b) != "hello from the overlay\n" {
				t.Fatalf("new-file.txt = %q", b)
			}
			if _, err := v.Lstat("etc/shadow"); !errorsIsNotExist(err) {
				t.Fatalf("etc/shadow: %v, want not-exist (deleted in the overlay)", err)
			}
			e, err := v.Lstat("etc/passwd")
			if err != nil || e.Perm != "0600" {
				t.Fatalf("etc/passwd: %+v %v, want mode 0600", e, err)
			}
		})
	}
}

func errorsIsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// TestTimestampsAgainstDebugfs checks all four timestamps, with
// nanoseconds and the epoch bits that carry dates past 2038, against
// debugfs's stat of files whose extra fields the fixture set with sif.
func TestTimestampsAgainstDebugfs(t *testing.T) {
	img := "ext4-changed.img"
	_, d := openDisk(t, img)
	v, _ := d.Volume("")
	for _, p := range []string{"/etc/new-file.txt", "/etc/hostname", "/etc/passwd"} {
		e, err := v.Lstat(strings.TrimPrefix(p, "/"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(fixture.Tool(t, "debugfs"), "-R", "stat "+p, fixture.Path(t, img))
		cmd.Env = append(os.Environ(), "TZ=UTC")
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]time.Time{}
		for _, line := range strings.Split(string(out), "\n") {
			// " mtime: 0x65f32d3b:1d6f3454 -- Thu Mar 14 17:00:43 2024"
			name, rest, ok := strings.Cut(strings.TrimSpace(line), ": 0x")
			if !ok || !strings.HasSuffix(name, "time") {
				continue
			}
			hex, date, ok := strings.Cut(rest, " -- ")
			if !ok {
				continue
			}
			sec, err := time.Parse("Mon Jan _2 15:04:05 2006", strings.TrimSpace(date))
			if err != nil {
				t.Fatalf("debugfs date %q: %v", date, err)
			}
			var ns int64
			if _, extra, ok := strings.Cut(hex, ":"); ok {
				x, _ := strconv.ParseUint(extra, 16, 32)
				ns = int64(x >> 2)
			}
			want[name] = sec.Add(time.Duration(ns))
		}
		if len(want) != 4 {
			t.Fatalf("%s: debugfs gave %d timestamps: %s", p, len(want), out)
		}
		got := map[string]time.Time{"atime": e.Atime, "mtime": e.Mtime, "ctime": e.Ctime}
		if e.Crtime != nil {
			got["crtime"] = *e.Crtime
		}
		for k, w := range want {
			if !got[k].Equal(w) {
				t.Errorf("%s %s = %v, debugfs says %v", p, k, got[k].UTC(), w)
			}
		}
	}
}

// TestGroupsAgainstDumpe2fs: each group's inode table location and used
// inode slots equal what dumpe2fs prints.
func TestGroupsAgainstDumpe2fs(t *testing.T) {
	for _, img := range []string{"ext4.img", "ext4-nocsum-1k.img", "ext2.img"} {
		_, d := openDisk(t, img)
		v, _ := d.Volume("")
		out, err := exec.Command(fixture.Tool(t, "dumpe2fs"), fixture.Path(t, img)).Output()
		if err != nil {
			t.Fatal(err)
		}
		groups := v.Ext4().Groups()
		sb := v.Ext4().Super()
		csum := strings.Contains(string(out), "metadata_csum") || strings.Contains(string(out), "uninit_bg")
		var n int
		text := string(out)
		starts := regexp.MustCompile(`(?m)^Group ([0-9]+): `).FindAllStringSubmatchIndex(text, -1)
		for k, m := range starts {
			end := len(text)
			if k+1 < len(starts) {
				end = starts[k+1][0]
			}
			blk := text[m[0]:end]
			g, _ := strconv.Atoi(text[m[2]:m[3]])
			var lo, hi uint64
			if i := strings.Index(blk, "Inode table at "); i >= 0 {
				fmt.Sscanf(blk[i:], "Inode table at %d-%d", &lo, &hi)
			}
			var unused uint32
			if i := strings.Index(blk, " unused inodes"); i >= 0 {
				j := strings.LastIndex(blk[:i], " ")
				fmt.Sscanf(blk[j+1:i], "%d", &unused)
			}
			gr := groups[g]
			if gr.InodeTable != lo || gr.InodeTable+gr.InodeTableBlocks-1 != hi {
				t.Errorf("%s group %d: inode table %d+%d, dumpe2fs %d-%d", img, g, gr.InodeTable, gr.InodeTableBlocks, lo, hi)
			}
			want := sb.InodesPerGroup
			if csum && !strings.Contains(strings.SplitN(blk, "\n", 2)[0], "INODE_UNINIT") {
				want -= unused
			} else if csum {
				want = 0
			}
			if gr.UsedInodes != want {
				t.Errorf("%s group %d: %d used inode slots, dumpe2fs says %d unused of %d", img, g, gr.UsedInodes, unused, sb.InodesPerGroup)
			}
			n++
		}
		if n != len(groups) || n == 0 {
			t.Errorf("%s: %d groups, dumpe2fs lists %d", img, len(groups), n)
		}
	}
}
