package dirty

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/gob"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/testdisk"
	"github.com/vmscope/vmscope/qcow"
)

// The ground truth of the dirty poll: the Debian cloud kernel, booted under
// QEMU (TCG) with the images attached as virtio-blk, mounts their ext4
// filesystems and runs the scripted workloads of testdata/guest-disk/init.sh.
// The expected answer is the full comparison of the before and after trees
// (walkAll, truthDiff), never the dirty code.

// guestKernel returns the kernel and initramfs that
// testdata/guest-disk/build.sh makes, or skips (fails under CI).
func guestKernel(t *testing.T) (kernel, initrd string) {
	t.Helper()
	dir := filepath.Join(fixture.Root(), "testdata", "out-guest-disk")
	kernel, initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.gz")
	for _, p := range []string{kernel, initrd} {
		if _, err := os.Stat(p); err != nil {
			fixture.Missing(t, "%s (bash testdata/guest-disk/build.sh)", p)
		}
	}
	fixture.Tool(t, "qemu-system-x86_64")
	return kernel, initrd
}

// bootGuest boots the guest on the drives with workload work. Clean
// workloads power the guest off and QEMU exits; with crash, the guest is
// killed once it says its transactions are committed (a crash-consistent
// image whose journal needs recovery).
func bootGuest(t *testing.T, dir, work string, drives ...string) {
	t.Helper()
	kernel, initrd := guestKernel(t)
	console := filepath.Join(dir, "console-"+work+".log")
	args := []string{"-accel", "tcg", "-m", "256", "-smp", "1", "-nographic", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 vmscope.work=" + work,
		"-serial", "file:" + console, "-monitor", "none", "-net", "none"}
	for _, d := range drives {
		format := "raw"
		if strings.HasSuffix(d, ".qcow2") {
			format = "qcow2"
		}
		args = append(args, "-drive", "file="+d+",format="+format+",if=virtio")
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(5 * time.Minute)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			b, _ := os.ReadFile(console)
			if err != nil || !bytes.Contains(b, []byte("=== DONE "+work+" ===")) || bytes.Contains(b, []byte("=== FAIL")) {
				t.Fatalf("guest %s: qemu: %v %s\nconsole:\n%s", work, err, stderr.String(), b)
			}
			t.Logf("guest workload %s: %.1fs", work, time.Since(start).Seconds())
			return
		case <-deadline:
			cmd.Process.Kill()
			<-done
			b, _ := os.ReadFile(console)
			t.Fatalf("guest %s: no power-off after 5 minutes\nconsole:\n%s", work, b)
		case <-tick.C:
			if work != "crash" {
				continue
			}
			b, _ := os.ReadFile(console)
			if bytes.Contains(b, []byte("=== FAIL")) {
				cmd.Process.Kill()
				<-done
				t.Fatalf("guest %s failed:\n%s", work, b)
			}
			if bytes.Contains(b, []byte("=== CRASH-READY ===")) {
				cmd.Process.Kill() // a crash: nothing is unmounted, the journal is not checkpointed
				<-done
				t.Logf("guest workload %s: killed after %.1fs", work, time.Since(start).Seconds())
				return
			}
		}
	}
}

// guestTree writes the tree the workloads change.
func guestTree(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"etc", "data", "olddir/sub", "unrelated", "w2", "newtree"} {
		must(os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	pseudo := func(n int, seed byte) []byte {
		b := make([]byte, n)
		x := uint32(seed) + 1
		for i := range b {
			x = x*1664525 + 1013904223
			b[i] = byte(x >> 24)
		}
		return b
	}
	files := map[string][]byte{
		"etc/hosts": []byte("127.0.0.1 localhost\n"), "etc/passwd": []byte("root:x:0:0:root:/root:/bin/sh\n"),
		"data/append.log":    bytes.Repeat([]byte("log line\n"), 1000),
		"data/inplace.bin":   pseudo(64<<10, 1),
		"data/trunc.txt":     bytes.Repeat([]byte("truncate me\n"), 2000),
		"data/old-name.txt":  []byte("renamed\n"),
		"data/linkme.txt":    []byte("hard-linked\n"),
		"data/delete-me.txt": []byte("deleted\n"),
		"olddir/a.txt":       []byte("a\n"), "olddir/sub/b.txt": []byte("b\n"),
		"big.bin":                pseudo(4<<20, 2),
		"unrelated/big-constant": pseudo(2<<20, 3),
		"w2/edit.txt":            []byte("edit\n"), "w2/rm.txt": []byte("rm\n"),
	}
	for i := range 300 {
		files[fmt.Sprintf("unrelated/f%03d", i)] = []byte(fmt.Sprintf("unrelated file %d\n", i))
	}
	for p, c := range files {
		must(os.WriteFile(filepath.Join(root, p), c, 0o644))
	}
	// A sparse file: data at both ends, a hole between.
	f, err := os.Create(filepath.Join(root, "data/sparse.img"))
	must(err)
	_, err = f.WriteAt(pseudo(4096, 4), 0)
	must(err)
	_, err = f.WriteAt(pseudo(4096, 5), 1<<20-4096)
	must(err)
	must(f.Close())
	must(os.Symlink("etc/hosts", filepath.Join(root, "lnk")))
}

// guestDisk makes a 64 MiB raw disk: an MBR with one partition from 1 MiB
// holding ext4 (4 KiB blocks) made by mkfs.ext4 -d from guestTree.
func guestDisk(t *testing.T, dir string) string {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	guestTree(t, tree)
	sh(t, dir, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", tree, "part.img", "63M")
	disk := filepath.Join(dir, "disk.raw")
	f, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cmd := exec.Command(fixture.Tool(t, "sfdisk"), "-q", disk)
	cmd.Stdin = strings.NewReader("start=2048, type=83\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	sh(t, dir, "dd", "if=part.img", "of=disk.raw", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none")
	os.Remove(filepath.Join(dir, "part.img"))
	return disk
}

// memStore keeps the poll state in memory as dirty/state keeps it: one
// gob-encoded record per inode, read on demand through IndexSource, and a
// poll saves only its delta (so nothing but what the state stores survives
// a poll, and the delta path is what the guest workloads check).
type memStore struct {
	meta   []byte
	vols   map[string]*memVol
	blocks memHashes // nil: no block hashes
	chunks []uint64  // the hash source's chunk hashes
}

type memHashes map[uint64][]uint64

func (h memHashes) HashGroup(g uint64) ([]uint64, error) { return slices.Clone(h[g]), nil }

func (h memHashes) EachGroup(fn func(g uint64, hashes []uint64)) error {
	for _, g := range slices.Sorted(maps.Keys(h)) {
		fn(g, slices.Clone(h[g]))
	}
	return nil
}

type memVol struct {
	uuid  string
	bs    int64
	files map[uint32][]byte
	itab  map[uint64][]uint64
}

func (v *memVol) InodeBlock(blk uint64) ([]uint64, error) { return slices.Clone(v.itab[blk]), nil }

func (m *memStore) Load(identity string) (*Snapshot, error) {
	if m.meta == nil {
		return nil, nil
	}
	var s Snapshot
	if err := json.Unmarshal(m.meta, &s); err != nil {
		return nil, err
	}
	if s.Identity != identity {
		return nil, ErrOtherImage
	}
	if m.blocks != nil {
		s.Blocks = NewBlockHashes(m.blocks)
	}
	s.Hashes = slices.Clone(m.chunks)
	s.Indexes = map[string]*Index{}
	for id, v := range m.vols {
		s.Indexes[id] = StoredIndex(id, v.uuid, v.bs, v)
	}
	return &s, nil
}

func (m *memStore) Save(s *Snapshot) error {
	c := *s
	c.Indexes, c.Blocks = nil, nil
	blocks := m.blocks
	if s.Blocks == nil {
		blocks = nil
	} else {
		groups, replace := s.Blocks.Changed()
		if replace || blocks == nil {
			blocks = memHashes{}
		}
		for g, h := range groups {
			blocks[g] = slices.Clone(h)
		}
	}
	meta, err := json.Marshal(&c)
	if err != nil {
		return err
	}
	vols := map[string]*memVol{}
	for id, x := range s.Indexes {
		dx, ok := x.Delta()
		v := m.vols[id]
		if !ok || v == nil {
			v = &memVol{uuid: x.UUID, bs: x.BlockSize, files: map[uint32][]byte{}, itab: map[uint64][]uint64{}}
			dx = &Delta{Changed: map[uint32]*FileRec{}, Itab: map[uint64][]uint64{}}
			x.Each(func(ino uint32, r *FileRec) { dx.Changed[ino] = r })
			x.InodeBlocks(func(blk uint64, s []uint64) { dx.Itab[blk] = s })
		}
		changed, deleted := dx.Changed, dx.Deleted
		for blk, s := range dx.Itab {
			v.itab[blk] = slices.Clone(s)
		}
		for _, ino := range deleted {
			delete(v.files, ino)
		}
		for ino, r := range changed {
			var e bytes.Buffer
			if err := gob.NewEncoder(&e).Encode(r); err != nil {
				return err
			}
			v.files[ino] = e.Bytes()
		}
		vols[id] = v
	}
	m.meta, m.vols, m.blocks, m.chunks = meta, vols, blocks, slices.Clone(s.Hashes)
	return nil
}

func (v *memVol) Rec(ino uint32) (*FileRec, error) {
	b, ok := v.files[ino]
	if !ok {
		return nil, nil
	}
	r := &FileRec{}
	return r, gob.NewDecoder(bytes.NewReader(b)).Decode(r)
}

func (v *memVol) All() (map[uint32]*FileRec, error) {
	out := map[uint32]*FileRec{}
	for ino := range v.files {
		r, err := v.Rec(ino)
		if err != nil {
			return nil, err
		}
		out[ino] = r
	}
	return out, nil
}

func (v *memVol) Owners(lo, hi uint64, fn func(start, n uint64, ino uint32, kind Kind)) error {
	all, err := v.All()
	for ino, r := range all {
		for _, run := range r.Runs {
			if run.Start < hi && run.Start+run.Len > lo {
				fn(run.Start, run.Len, ino, run.Kind)
			}
		}
	}
	return err
}

func (v *memVol) Children(dir uint32) ([]uint32, error) {
	all, err := v.All()
	var out []uint32
	for ino, r := range all {
		for _, l := range r.Names {
			if l.Parent == dir {
				out = append(out, ino)
				break
			}
		}
	}
	return out, err
}

// snapshotTree is the reference view of the image's (only) volume.
func snapshotTree(t *testing.T, path string) map[string]node {
	t.Helper()
	im, d := testdisk.Open(t, path)
	defer im.Close()
	v, err := d.Volume("")
	if err != nil {
		t.Fatal(err)
	}
	return walkAll(t, v)
}

// poll runs one poll of the image with the dirty source src and commits it.
func poll(t *testing.T, path, src string, st Store) *Selection {
	t.Helper()
	ctx := context.Background()
	im, d := testdisk.Open(t, path)
	defer im.Close()
	start := time.Now()
	sel, err := Select(ctx, im, d, sourceOf(t, im, src), st, "rules-1")
	if err != nil {
		t.Fatal(err)
	}
	defer sel.Close()
	for _, e := range sel.Errors {
		t.Error(e)
	}
	if err := sel.Commit(); err != nil {
		t.Fatal(err)
	}
	t.Logf("poll %s of %s: %d changes in %v; stats %+v", src, filepath.Base(path), len(sel.Changes), time.Since(start).Round(time.Millisecond), sel.Stats)
	return sel
}

// checkStrict is checkAgainstTruth (zero misses, zero extras, reasons
// everywhere) plus: a metadata-only change is not due for re-scan.
func checkStrict(t *testing.T, truth map[string]string, after map[string]node, got []Change) {
	t.Helper()
	checkAgainstTruth(t, truth, after, got)
	// Metadata-only changes (chmod, chown, a rename) are reported, not re-scanned.
	for _, c := range got {
		for _, p := range c.Paths {
			if truth[p] == Metadata && after[p].e.Type == "file" && c.Rescan {
				t.Errorf("%s: metadata-only change marked for re-scan: %v %v", p, c.Reasons, c.Fields)
			}
		}
	}
	for p, k := range truth {
		t.Logf("reference: %-9s %s", k, p)
	}
	for _, c := range got {
		t.Logf("reported:  %-9s %-28s %v %v rescan=%v old=%v", c.Change, c.Path, c.Reasons, c.Fields, c.Rescan, c.OldPaths)
	}
}

// qemuBitmap is what qemu-img info says of one persistent bitmap.
type qemuBitmap struct {
	Name  string   `json:"name"`
	Flags []string `json:"flags"`
}

func qemuBitmaps(t *testing.T, dir, img string) []qemuBitmap {
	t.Helper()
	var info struct {
		Format struct {
			Data struct {
				Bitmaps []qemuBitmap `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(sh(t, dir, "qemu-img", "info", "-U", "--output=json", img)), &info); err != nil {
		t.Fatal(err)
	}
	return info.Format.Data.Bitmaps
}

// TestGuestWrites: one boot runs workload 1 on three copies of one disk,
// an overlay (cow source), a qcow2 with an enabled persistent bitmap
// (bitmap source) and a raw file (hash source), each polled before with an
// empty state; a second boot runs workload 2 on the same images and states.
func TestGuestWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU")
	}
	guestKernel(t)
	dir := t.TempDir()
	disk := guestDisk(t, dir)
	sh(t, dir, "cp", "--sparse=always", disk, "base.raw")
	sh(t, dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "ov.qcow2")
	sh(t, dir, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk, "bm.qcow2")
	sh(t, dir, "qemu-img", "bitmap", "--add", "--enable", "bm.qcow2", "poll")
	sh(t, dir, "mv", disk, "raw.img")
	type source struct {
		name, img, src string
		st             memStore
		before         map[string]node // vmscope's walk of the image at the last poll
		listed         map[string]node // the guest's listing after the last workload
	}
	srcs := []*source{
		{name: "cow", img: "ov.qcow2", src: "cow"},
		{name: "bitmap", img: "bm.qcow2", src: "bitmap:poll"},
		{name: "hash", img: "raw.img", src: "hash"},
	}
	var drives []string
	for _, s := range srcs {
		s.img = filepath.Join(dir, s.img)
		drives = append(drives, s.img)
		sel := poll(t, s.img, s.src, &s.st)
		if sel.Source != s.src || len(sel.Due()) == 0 {
			t.Fatalf("%s: first poll: source %s, %d due", s.name, sel.Source, len(sel.Due()))
		}
		s.before = snapshotTree(t, s.img)
	}
	baseSum := fileSum(t, filepath.Join(dir, "base.raw"))

	for _, work := range []string{"1", "2"} {
		bootGuest(t, dir, work, drives...)
		console := filepath.Join(dir, "console-"+work+".log")
		bms := qemuBitmaps(t, dir, filepath.Join(dir, "bm.qcow2"))
		if len(bms) != 1 || !slices.Contains(bms[0].Flags, "auto") || slices.Contains(bms[0].Flags, "in-use") {
			t.Fatalf("after a clean power-off, qemu-img info says bitmaps %+v; want poll with auto and not in-use", bms)
		}
		func() {
			im, err := qcow.Open(filepath.Join(dir, "bm.qcow2"))
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			b, ok := im.Top().(*qcow.Layer).Bitmap("poll")
			if !ok || !b.Enabled || b.InUse {
				t.Fatalf("vmscope reads bitmap poll as %+v (found %v); qemu-img says %+v", b, ok, bms)
			}
		}()
		for i, s := range srcs {
			dev := fmt.Sprintf("vd%c", 'a'+i)
			t.Run(s.name+"/work"+work, func(t *testing.T) {
				// The reference: the guest's own listings of the filesystem
				// before and after the workload.
				before := guestListing(t, console, "before "+dev)
				after := guestListing(t, console, "after "+dev)
				if s.listed != nil {
					if d := truthDiff(s.listed, before); len(d) != 0 {
						t.Fatalf("the filesystem changed between two boots: %v", d)
					}
				}
				checkReaderAgrees(t, s.before, before)
				walked := snapshotTree(t, s.img)
				checkReaderAgrees(t, walked, after)
				truth := truthDiff(before, after)
				if len(truth) < 5 {
					t.Fatalf("the reference sees only %d changes: the workload did not run", len(truth))
				}
				sel := poll(t, s.img, s.src, &s.st)
				if sel.Source != s.src {
					t.Errorf("source %s, want %s", sel.Source, s.src)
				}
				checkStrict(t, truth, after, sel.Changes)
				if work == "2" {
					// Only the second workload: nothing of the first one.
					for _, c := range sel.Changes {
						for _, p := range append(slices.Clone(c.Paths), c.OldPaths...) {
							if truth[p] == "" && (strings.HasPrefix(p, "/data/") || p == "/big.bin" || p == "/lnk") {
								t.Errorf("second poll reports a file of the first workload: %s %s %v", c.Change, p, c.Reasons)
							}
						}
					}
				}
				if work == "1" && truth["/unrelated/f150"] != Metadata {
					t.Errorf("the reference sees the xattr set on /unrelated/f150 as %q, want %s", truth["/unrelated/f150"], Metadata)
				}
				s.before, s.listed = walked, after
			})
		}
	}
	if got := fileSum(t, filepath.Join(dir, "base.raw")); got != baseSum {
		t.Error("the overlay's base changed")
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
