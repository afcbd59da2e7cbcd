package dirty

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/testdisk"
)

// The dirty ground truth on other formats: the Debian cloud kernel, booted
// under QEMU (TCG) with the initramfs of testdata/gdirty/build.sh, changes
// NTFS volumes through ntfs-3g (the kernel has no ntfs3) and XFS in an LVM
// logical volume it maps with dmsetup, on a disk that is a VMDK delta chain.
// The expected answer is the guest's own listing before and after its
// workload (testdata/guest-disk/lister through the guest kernel: before, the
// listing the fixture's prep boot took of the disks it left), never the
// dirty code; vmscope's full walks of the images must agree with those
// listings first.

// gdirtyDir is the fixture folder of testdata/gdirty/build.sh, or skips
// (fails under CI).
func gdirtyDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(fixture.Root(), "testdata", "out-gdirty")
	for _, f := range []string{"vmlinuz", "initrd.gz", "ntfs.raw", "base.vmdk", "dm-table.txt", "console-prep.log"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			fixture.Missing(t, "%s (bash testdata/gdirty/build.sh)", filepath.Join(dir, f))
		}
	}
	fixture.Tool(t, "qemu-system-x86_64")
	return dir
}

// bootFormats boots the gdirty guest on the drives (virtio, in order:
// vda, vdb, ...) with workload work, lvmDisk the drive holding the LVM PV
// and dmTable the LV's table, and waits for its clean power-off. It
// returns the console.
func bootFormats(t *testing.T, fix, dir, work, lvmDisk, dmTable string, drives ...string) []byte {
	t.Helper()
	// A bound for a hung guest only: one boot here took 14 s of QEMU CPU
	// time and 95 s of wall time at a load average of 28 on 2 cores, and
	// another at that load ran past 5 minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	console := filepath.Join(dir, "console-"+work+".log")
	args := []string{"-accel", "tcg", "-m", "256", "-smp", "1", "-nographic", "-display", "none", "-no-reboot",
		"-kernel", filepath.Join(fix, "vmlinuz"), "-initrd", filepath.Join(fix, "initrd.gz"),
		// no_timer_check: a loaded host's TCG can miss the boot's IO-APIC
		// timer check ("IO-APIC + timer doesn't work", a panic)
		"-append", fmt.Sprintf("console=ttyS0 quiet panic=-1 no_timer_check vmscope.work=%s vmscope.lvm=%s vmscope.dm=%s", work, lvmDisk, dmTable),
		"-serial", "file:" + console, "-monitor", "none", "-net", "none"}
	for _, d := range drives {
		format := strings.TrimPrefix(filepath.Ext(d), ".")
		if format == "img" {
			format = "raw"
		}
		args = append(args, "-drive", "file="+d+",format="+format+",if=virtio")
	}
	start := time.Now()
	out, err := exec.CommandContext(ctx, "qemu-system-x86_64", args...).CombinedOutput()
	b, _ := os.ReadFile(console)
	if err != nil || !bytes.Contains(b, []byte("=== DONE "+work+" ===")) || bytes.Contains(b, []byte("=== FAIL")) {
		t.Fatalf("guest %s: qemu: %v %s\nconsole:\n%s", work, err, out, b)
	}
	t.Logf("guest workload %s: %.1fs", work, time.Since(start).Seconds())
	return b
}

// volumeTree is vmscope's full walk of volume id ("" for the only one)
// of the image, with the sha256 of every named stream ("path:stream")
// read through the stream itself.
func volumeTree(t *testing.T, path, id string) map[string]node {
	t.Helper()
	im, d := testdisk.Open(t, path)
	defer im.Close()
	v, err := d.Volume(id)
	if err != nil {
		t.Fatal(err)
	}
	tree := walkAll(t, v)
	for p, n := range tree {
		if n.e.Stream == "" {
			continue
		}
		f, err := v.Open(strings.TrimPrefix(p, "/"))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, f.Size())); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		n.sum = hex.EncodeToString(h.Sum(nil))
		tree[p] = n
	}
	return tree
}

// withStreams folds the named streams of an NTFS tree into their file:
// from a walk, the "path:stream" entries; from the guest's listing, the
// user.NAME attributes (ntfs-3g's streams_interface=xattr). A stream is
// content: its change makes the file modified, and is due for re-scan.
func withStreams(t *testing.T, tree map[string]node, fromWalk bool) map[string]node {
	t.Helper()
	streams := map[string][]string{}
	out := map[string]node{}
	for p, n := range tree {
		if fromWalk && n.e.Stream != "" {
			file := strings.TrimSuffix(p, ":"+n.e.Stream)
			streams[file] = append(streams[file], n.e.Stream+"="+n.sum)
			continue
		}
		out[p] = n
	}
	if !fromWalk {
		for p, n := range tree {
			for _, kv := range strings.Split(n.xattrs, ",") {
				name, val, ok := strings.Cut(kv, "=")
				if !ok {
					continue
				}
				stream, ok := strings.CutPrefix(name, "user.")
				if !ok {
					t.Fatalf("%s: attribute %s is no stream", p, name)
				}
				raw, err := base64.StdEncoding.DecodeString(val)
				if err != nil {
					t.Fatal(err)
				}
				sum := sha256.Sum256(raw)
				streams[p] = append(streams[p], stream+"="+hex.EncodeToString(sum[:]))
			}
			n.xattrs = ""
			out[p] = n
		}
	}
	for p, s := range streams {
		n, ok := out[p]
		if !ok {
			t.Fatalf("streams %v of %s, which is not listed", s, p)
		}
		slices.Sort(s)
		n.sum += "+" + strings.Join(s, "+")
		out[p] = n
	}
	return out
}

// ntfs3gView keeps of an NTFS tree (streams folded) what ntfs-3g's
// listing shows of the volume: without a user mapping, ntfs-3g invents
// every owner and mode, a directory's size and no birth time, so those
// are cleared on both sides before checkReaderAgrees compares the rest
// (MFT record number, type, file size, links, the $STANDARD_INFORMATION
// times as mtime, atime and ctime, symlink target, every stream's content).
func ntfs3gView(tree map[string]node) map[string]node {
	out := make(map[string]node, len(tree))
	for p, n := range tree {
		n.e.Perm, n.e.Uid, n.e.Gid, n.e.Crtime = "0", 0, 0, nil
		if n.e.Type == "dir" {
			n.e.Size = 0
		}
		out[p] = n
	}
	return out
}

// checkKinds: each change agrees with the guest's listing after the
// workload on the file it names: a deleted file's paths are gone or name
// another inode now (a replaced symlink), the paths of any other change
// name its inode.
func checkKinds(t *testing.T, after map[string]node, got []Change) {
	t.Helper()
	for _, c := range got {
		for _, p := range c.Paths {
			n, ok := after[p]
			if c.Change == Deleted && ok && n.e.Ino == uint64(c.Ino) || c.Change != Deleted && (!ok || n.e.Ino != uint64(c.Ino)) {
				t.Errorf("%s %s (inode %d): the guest lists it after the workload as inode %d (listed: %v)", c.Change, p, c.Ino, n.e.Ino, ok)
			}
		}
	}
}

// dmTable parses the guest's "dmtable: START LEN linear DEV OFFSET" lines
// (dmsetup table of the LV as the kernel holds it) into byte runs.
func dmTable(t *testing.T, console []byte) [][3]int64 {
	t.Helper()
	var out [][3]int64
	sc := bufio.NewScanner(bytes.NewReader(console))
	for sc.Scan() {
		f := strings.Fields(strings.TrimRight(sc.Text(), "\r"))
		if len(f) != 6 || f[0] != "dmtable:" || f[3] != "linear" {
			continue
		}
		var r [3]int64
		for i, s := range []string{f[1], f[2], f[5]} {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				t.Fatalf("dmtable line %q: %v", sc.Text(), err)
			}
			r[i] = v * 512
		}
		out = append(out, r)
	}
	return out
}

// checkLVMap: vmscope's map of LV gvg/xfs (from the LVM metadata it
// parses) is the table the guest kernel read the LV through.
func checkLVMap(t *testing.T, path string, table [][3]int64) {
	t.Helper()
	im, d := testdisk.Open(t, path)
	defer im.Close()
	if len(d.VGs) != 1 || d.VGs[0].LV("xfs") == nil {
		t.Fatalf("volume groups %+v: want gvg with LV xfs", d.VGs)
	}
	runs, err := d.VGs[0].LV("xfs").Map()
	if err != nil {
		t.Fatal(err)
	}
	var got [][3]int64
	for _, r := range runs {
		got = append(got, [3]int64{r.Off, r.Len, r.PVOff})
	}
	if len(table) < 2 || !slices.Equal(got, table) {
		t.Errorf("vmscope maps gvg/xfs as %v (offset, length, PV offset in bytes); the guest's dm table is %v", got, table)
	}
}

// xfsFormat is the data fork format xfs_db -r gives inode ino of the XFS
// image at path ("extents", "btree", ...).
func xfsFormat(t *testing.T, dir, path string, ino uint64) string {
	t.Helper()
	out := sh(t, dir, "xfs_db", "-r", "-c", fmt.Sprintf("inode %d", ino), "-c", "print core.format", path)
	_, f, ok := strings.Cut(strings.TrimSpace(out), "(")
	if !ok {
		t.Fatalf("xfs_db inode %d: %q", ino, out)
	}
	return strings.TrimSuffix(f, ")")
}

// extractLV writes the bytes of the LV that the runs map (on the PV,
// partition 1 at partStart) from the raw image raw into lv.
func extractLV(t *testing.T, raw, lv string, partStart int64, runs [][3]int64) {
	t.Helper()
	in, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(lv)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	var size int64
	for _, r := range runs {
		size = max(size, r[0]+r[1])
	}
	if err := out.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf, zeros := make([]byte, 1<<20), make([]byte, 1<<20)
	for _, r := range runs {
		for done := int64(0); done < r[1]; done += int64(len(buf)) {
			n := min(int64(len(buf)), r[1]-done)
			if _, err := in.ReadAt(buf[:n], partStart+r[2]+done); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:n], zeros[:n]) { // the LV file stays sparse
				if _, err := out.WriteAt(buf[:n], r[0]+done); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// TestGuestFormats: one boot runs workload 1 (testdata/gdirty/init.sh:
// create, write in place keeping the mtime, append, truncate, write into
// a hole, rename, delete, hard link, symlink replaced, a new directory tree,
// a directory tree removed; NTFS: a stream changed and a stream added; XFS:
// chmod, chown, an xattr, holes filled in a B+tree fork, an extent fork
// grown into a B+tree) on two disks, polled before the boot with empty
// states and after it:
//   - ntfs/bitmap: NTFS (MBR partition) in a qcow2 with an enabled
//     persistent bitmap (bitmap source);
//   - ntfs/hash: the same image by the block-hash source, with its own
//     state (one disk less to boot: the guest's time is the test's);
//   - xfs-lvm-vmdk/cow: XFS in LV gvg/xfs (two segments) whose PV is on a
//     VMDK delta of a monolithicSparse base (the delta is the cow source).
//
// Each poll must report every path the guest's listings show changed (zero
// missed), nothing else (zero extra), and each change as the guest's
// listing has its file (checkKinds).
func TestGuestFormats(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU")
	}
	fix := gdirtyDir(t)
	dir := t.TempDir()
	sh(t, dir, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", filepath.Join(fix, "ntfs.raw"), "ntfs.qcow2")
	sh(t, dir, "qemu-img", "bitmap", "--add", "--enable", "ntfs.qcow2", "poll")
	sh(t, dir, "cp", filepath.Join(fix, "base.vmdk"), "base.vmdk")
	sh(t, dir, "qemu-img", "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "delta.vmdk")
	b, err := os.ReadFile(filepath.Join(fix, "dm-table.txt"))
	if err != nil {
		t.Fatal(err)
	}
	table := strings.TrimSpace(string(b))

	type source struct {
		name, img, src, vol, dev string
		ntfs                     bool
		st                       memStore
		before                   map[string]node // vmscope's walk at the first poll
	}
	srcs := []*source{
		{name: "ntfs/bitmap", img: "ntfs.qcow2", src: "bitmap:poll", dev: "vda", ntfs: true},
		{name: "ntfs/hash", img: "ntfs.qcow2", src: "hash", dev: "vda", ntfs: true},
		{name: "xfs-lvm-vmdk/cow", img: "delta.vmdk", src: "cow", dev: "vdb", vol: "gvg/xfs"},
	}
	for _, s := range srcs {
		s.img = filepath.Join(dir, s.img)
		sel := poll(t, s.img, s.src, &s.st)
		if sel.Source != s.src || len(sel.Due()) == 0 {
			t.Fatalf("%s: first poll: source %s, %d due", s.name, sel.Source, len(sel.Due()))
		}
		s.before = volumeTree(t, s.img, s.vol)
	}
	baseSum := fileSum(t, filepath.Join(dir, "base.vmdk"))

	console := bootFormats(t, fix, dir, "1", "vdb", table, srcs[0].img, srcs[2].img)
	// The guest's listings: before workload 1, the one the prep boot
	// took of the disks it left (the images polled first); after it, the
	// test boot's.
	prepLog, logPath := filepath.Join(fix, "console-prep.log"), filepath.Join(dir, "console-1.log")
	for _, s := range srcs {
		dev := s.dev
		t.Run(s.name, func(t *testing.T) {
			before := guestListing(t, prepLog, "after "+dev)
			after := guestListing(t, logPath, "after "+dev)
			walked := volumeTree(t, s.img, s.vol)
			rawBefore, rawAfter := before, after
			if s.ntfs {
				// The reference too keeps only what ntfs-3g does not invent:
				// a directory's size is whatever ntfs-3g has cached (the
				// prep boot's listing gives /docs 160 bytes, a fresh
				// mount's 0, with the same bytes on the disk).
				before, after = ntfs3gView(withStreams(t, before, false)), ntfs3gView(withStreams(t, after, false))
				checkReaderAgrees(t, ntfs3gView(withStreams(t, s.before, true)), before)
				checkReaderAgrees(t, ntfs3gView(withStreams(t, walked, true)), after)
			} else {
				checkReaderAgrees(t, s.before, before)
				checkReaderAgrees(t, walked, after)
			}
			if s.src == "hash" {
				// A second reader of the raw image: Sleuth Kit.
				sh(t, dir, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", s.img, "ntfs-after.raw")
				checkTSKAgrees(t, dir, filepath.Join(fix, "ntfs.raw"), rawBefore, nil)
				checkTSKAgrees(t, dir, filepath.Join(dir, "ntfs-after.raw"), rawAfter, slices.Sorted(maps.Keys(truthDiff(rawBefore, rawAfter))))
			}
			truth := truthDiff(before, after)
			if sel := poll(t, s.img, s.src, &s.st); sel.Source == s.src && len(truth) >= 15 {
				checkStrict(t, truth, after, sel.Changes)
				checkKinds(t, after, sel.Changes)
			} else {
				t.Errorf("poll by source %s (want %s); %d changes in the reference (want at least 15)", sel.Source, s.src, len(truth))
			}
			want := map[string]string{"/data/new.txt": Added, "/data/delete-me.txt": Deleted, "/data/inplace.bin": Modified,
				"/data/sparse.img": Modified, "/newtree/a/b/two": Added, "/olddir/sub/b.txt": Deleted}
			if s.ntfs {
				want["/docs/withstream.txt"] = Modified // its stream zone changed
				want["/w2/edit.txt"] = Modified         // appended, and a stream added
				want["/unrelated/f150"] = Modified      // a stream added (its user.vmscope attribute)
			} else {
				want["/frag.bin"] = Modified
				want["/grow.bin"] = Modified
				want["/unrelated/f150"] = Metadata
			}
			for p, k := range want {
				if truth[p] != k {
					t.Errorf("the reference sees %s as %q, want %s: the workload did not do what it says", p, truth[p], k)
				}
			}
		})
	}
	t.Run("xfs-lvm-vmdk/forks", func(t *testing.T) {
		// The guest kernel's LV table is what vmscope reads from the LVM
		// metadata; through it, xfs_db sees the B+tree forks the workload
		// changed (frag.bin's was one before, grow.bin's became one), and
		// xfs_repair -n a consistent filesystem before and after.
		runs := dmTable(t, console)
		checkLVMap(t, srcs[2].img, runs)
		before, after := guestListing(t, prepLog, "after vdb"), guestListing(t, logPath, "after vdb")
		for _, c := range []struct {
			img         string
			tree        map[string]node
			frag, grown string
		}{{filepath.Join(dir, "base.vmdk"), before, "btree", "extents"}, {srcs[2].img, after, "btree", "btree"}} {
			raw, lv := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "lv.img")
			sh(t, dir, "qemu-img", "convert", "-f", "vmdk", "-O", "raw", c.img, raw)
			extractLV(t, raw, lv, 2048*512, runs)
			if f := xfsFormat(t, dir, lv, c.tree["/frag.bin"].e.Ino); f != c.frag {
				t.Errorf("%s: frag.bin's fork is %s, want %s", filepath.Base(c.img), f, c.frag)
			}
			if f := xfsFormat(t, dir, lv, c.tree["/grow.bin"].e.Ino); f != c.grown {
				t.Errorf("%s: grow.bin's fork is %s, want %s", filepath.Base(c.img), f, c.grown)
			}
			// The guest left a clean filesystem (xfs_repair -n exits 1 on
			// any inconsistency, fixture.Run fails the test).
			sh(t, dir, "xfs_repair", "-n", "-f", lv)
			os.Remove(raw)
			os.Remove(lv)
		}
	})
	if got := fileSum(t, filepath.Join(dir, "base.vmdk")); got != baseSum {
		t.Error("the VMDK delta's base changed")
	}
}

// tskEntry is one line of Sleuth Kit's fls -r -p -u -l.
type tskEntry struct {
	typ   string // "r/r", "d/d", ...
	addr  string // "MFT-TYPE-ID", icat's address of the stream
	mtime int64  // seconds
	size  int64
}

// tskListing lists the NTFS volume at sector 2048 of the raw image with
// fls (named streams as "path:stream"), leaving out the metadata files.
func tskListing(t *testing.T, dir, img string) map[string]tskEntry {
	t.Helper()
	out := map[string]tskEntry{}
	for _, l := range strings.Split(sh(t, dir, "fls", "-r", "-p", "-u", "-l", "-o", "2048", img), "\n") {
		f := strings.Split(l, "\t")
		if len(f) < 9 {
			continue
		}
		head := strings.Fields(f[0])
		if len(head) != 2 || strings.HasPrefix(f[1], "$") {
			continue
		}
		mt, err := time.Parse("2006-01-02 15:04:05 (MST)", f[2])
		if err != nil {
			t.Fatalf("fls line %q: %v", l, err)
		}
		size, err := strconv.ParseInt(f[6], 10, 64)
		if err != nil {
			t.Fatalf("fls line %q: %v", l, err)
		}
		out["/"+f[1]] = tskEntry{typ: head[0], addr: strings.TrimSuffix(head[1], ":"), mtime: mt.Unix(), size: size}
	}
	return out
}

// checkTSKAgrees: Sleuth Kit reads the same tree as the guest's listing
// of that image: every path and named stream, with its MFT record, type,
// mtime (to the second) and size, and, for the regular files and streams
// in paths, the same content (icat).
func checkTSKAgrees(t *testing.T, dir, img string, guest map[string]node, paths []string) {
	t.Helper()
	tsk := tskListing(t, dir, img)
	seen := 0
	for p, g := range guest {
		if p == "/" {
			continue
		}
		e, ok := tsk[p]
		ino, _, _ := strings.Cut(e.addr, "-")
		wantType := map[string]string{"file": "r/r", "symlink": "r/r", "dir": "d/d"}[g.e.Type]
		if !ok || ino != strconv.FormatUint(g.e.Ino, 10) || e.typ != wantType || e.mtime != g.e.Mtime.Unix() ||
			g.e.Type == "file" && e.size != g.e.Size {
			t.Errorf("fls: %s is %+v (found %v); the guest lists %+v", p, e, ok, g.e)
		}
		seen++
		for _, kv := range strings.Split(g.xattrs, ",") {
			name, val, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			sp := p + ":" + strings.TrimPrefix(name, "user.")
			raw, _ := base64.StdEncoding.DecodeString(val)
			if s, ok := tsk[sp]; !ok || s.size != int64(len(raw)) {
				t.Errorf("fls: stream %s is %+v (found %v); the guest has %d bytes", sp, s, ok, len(raw))
			} else if slices.Contains(paths, p) && !bytes.Equal(icat(t, img, s.addr), raw) {
				t.Errorf("icat %s: not the guest's bytes", sp)
			}
			seen++
		}
	}
	if len(tsk) != seen {
		t.Errorf("fls lists %d paths and streams, the guest %d", len(tsk), seen)
	}
	read := 0
	for _, p := range paths {
		g := guest[p]
		if g.e.Type != "file" {
			continue
		}
		sum := sha256.Sum256(icat(t, img, tsk[p].addr))
		if hex.EncodeToString(sum[:]) != g.sum {
			t.Errorf("icat %s: sha256 %x, the guest's %s", p, sum, g.sum)
		}
		read++
	}
	t.Logf("fls of %s: %d paths and streams as the guest lists them; %d files read by icat", filepath.Base(img), seen, read)
}

// icat is the content of stream addr ("MFT-TYPE-ID") of the NTFS volume
// at sector 2048 of the raw image, as Sleuth Kit reads it.
func icat(t *testing.T, img, addr string) []byte {
	t.Helper()
	out, err := exec.Command(fixture.Tool(t, "icat"), "-o", "2048", img, addr).Output()
	if err != nil {
		t.Fatalf("icat %s: %v", addr, err)
	}
	return out
}
