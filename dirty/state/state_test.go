package state

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/testdisk"
)

// newDB opens a new state file, closed when the test ends.
func newDB(t *testing.T) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func open(t *testing.T, name string) (*disk.Image, *fsparse.Disk) {
	return testdisk.Open(t, fixture.Path(t, name))
}

func TestPollsThroughState(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	im, d := open(t, "overlay-raw.qcow2")
	// A scan poll: every due file gets a verdict.
	poll := func(rules string) *dirty.Selection {
		t.Helper()
		sel, err := dirty.Select(ctx, im, d, dirty.Auto(im), db, rules)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range sel.Due() {
			sel.SetVerdict(c, "clean")
		}
		if err := sel.Commit(); err != nil {
			t.Fatal(err)
		}
		return sel
	}
	first := poll("r1")
	if first.Source != "cow" || len(first.Due()) < 100 {
		t.Fatalf("first poll: source %s, %d due", first.Source, len(first.Due()))
	}
	second := poll("r1")
	t.Logf("second poll: %d changes, %d due, stats %+v", len(second.Changes), len(second.Due()), second.Stats)
	// The overlay held its writes at the first poll already: the block
	// hashes that poll kept say none of them changed since.
	if s := second.Stats["disk"]; s.DirtyBytes != 0 {
		t.Errorf("second poll, nothing written since: %d dirty bytes", s.DirtyBytes)
	}
	if len(second.Due()) >= len(first.Due())/4 {
		t.Errorf("second poll: %d due of %d", len(second.Due()), len(first.Due()))
	}
	for _, c := range second.Changes {
		if len(c.Reasons) == 0 {
			t.Errorf("no reason: %+v", c)
		}
	}
	third := poll("r1")
	if len(third.Changes) != 0 {
		t.Errorf("third poll, nothing written since: %d changes: %+v", len(third.Changes), third.Changes)
	}
	fourth := poll("r2")
	if len(fourth.Due()) != len(first.Due()) {
		t.Errorf("rules changed: %d due, want every file (%d)", len(fourth.Due()), len(first.Due()))
	}

	other, od := open(t, "ext4-changed.img")
	if _, err := dirty.Select(ctx, other, od, dirty.Auto(other), db, "r2"); !errors.Is(err, dirty.ErrOtherImage) {
		t.Errorf("another image's state: err = %v", err)
	}
}

// TestDeltaEqualsRebuild: after polls saved as deltas, the stored records
// equal a full index of the image (but for digests and verdicts), and the
// runs and links buckets hold exactly the records' runs and names.
func TestDeltaEqualsRebuild(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	im, d := open(t, "overlay-raw.qcow2")
	for i, rules := range []string{"r1", "r1", "r2", "r2"} {
		sel, err := dirty.Select(ctx, im, d, dirty.Auto(im), db, rules)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range sel.Due() {
			sel.SetVerdict(c, fmt.Sprintf("v%d", i))
		}
		if err := sel.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := db.Load(dirty.Identity(im, d))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range d.Volumes {
		if v.Ext4() == nil {
			continue
		}
		want, err := dirty.BuildIndex(ctx, v)
		if err != nil {
			t.Fatal(err)
		}
		got := map[uint32]*dirty.FileRec{}
		snap.Indexes[v.ID].Each(func(ino uint32, r *dirty.FileRec) { got[ino] = r })
		if err := snap.Indexes[v.ID].Err(); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want.Files) {
			t.Errorf("%s: %d records stored, %d live inodes", v.ID, len(got), len(want.Files))
		}
		var runs, links [][]byte
		for ino, w := range want.Files {
			g := got[ino]
			if g == nil {
				t.Errorf("%s: inode %d not stored", v.ID, ino)
				continue
			}
			if w.IsRegular() && g.Verdict == "" {
				t.Errorf("%s: inode %d: no verdict", v.ID, ino)
			}
			c := *g
			c.SHA256, c.Verdict = w.SHA256, w.Verdict
			ww, _ := decodeRec(encodeRec(w)) // without the in-memory children
			if !reflect.DeepEqual(&c, ww) {
				t.Errorf("%s: inode %d:\nstored %+v\nimage  %+v", v.ID, ino, &c, ww)
			}
			for _, k := range runKeys(ino, w) {
				runs = append(runs, k[:12])
			}
			for _, l := range w.Names {
				links = append(links, linkKey(l, ino))
			}
		}
		src := &source{db.db, []byte(prefixVol + v.ID)}
		want.InodeBlocks(func(blk uint64, sums []uint64) {
			got, err := src.InodeBlock(blk)
			if err != nil || !slices.Equal(got, sums) {
				t.Errorf("%s: inode-table block %d: digests %v, %v; want %v", v.ID, blk, got, err, sums)
			}
		})
		err = db.db.View(func(tx *bolt.Tx) error {
			vb := tx.Bucket(bucket).Bucket([]byte(prefixVol + v.ID))
			for _, c := range []struct {
				b    []byte
				want [][]byte
			}{{bRuns, runs}, {bLinks, links}} {
				var keys [][]byte
				vb.Bucket(c.b).ForEach(func(k, _ []byte) error { keys = append(keys, slices.Clone(k)); return nil })
				slices.SortFunc(c.want, bytes.Compare)
				if !slices.EqualFunc(keys, c.want, bytes.Equal) {
					t.Errorf("%s: bucket %s: %d keys, want %d", v.ID, c.b, len(keys), len(c.want))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestRecRoundTrip(t *testing.T) {
	r := &dirty.FileRec{Ino: 12, Mode: 0o644, Uid: 1000, Gid: 1000, Size: 1 << 40, Links: 2, Flags: 0x80000,
		Gen: 7, Atime: -1, Mtime: 1700000000123456789, Ctime: 3, Crtime: 4, Xattr: 99, Target: "x",
		Extents: 1<<64 - 1, Runs: []dirty.Run{{Start: 5, Len: 300, Kind: dirty.KindData}, {Start: 9, Len: 1, Kind: dirty.KindExtent}},
		Names: []dirty.Link{{Parent: 2, Name: "caf\xe9"}, {Parent: 11, Name: ""}}, SHA256: "ab", Verdict: "clean", ReadErr: "e", Inline: true}
	b := encodeRec(r)
	g, err := decodeRec(b)
	if err != nil || !reflect.DeepEqual(g, r) {
		t.Fatalf("round trip: %v\n%+v\n%+v", err, g, r)
	}
	for i := range b {
		if _, err := decodeRec(b[:i]); err == nil {
			t.Errorf("truncated to %d bytes: no error", i)
		}
	}
}

// FuzzDecodeRec: a state file is input from disk. Decoding random bytes
// never panics nor allocates past the input, and whatever decodes encodes
// back to a record that decodes to the same value.
func FuzzDecodeRec(f *testing.F) {
	f.Add(encodeRec(&dirty.FileRec{Ino: 12, Size: 5, Runs: []dirty.Run{{Start: 5, Len: 3, Kind: dirty.KindData}}, Names: []dirty.Link{{Parent: 2, Name: "a"}}}))
	f.Add([]byte{recVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRec(b)
		if err != nil {
			return
		}
		if len(r.Runs)+len(r.Names) > len(b) {
			t.Fatalf("%d runs and %d names from %d bytes", len(r.Runs), len(r.Names), len(b))
		}
		g, err := decodeRec(encodeRec(r))
		if err != nil || !reflect.DeepEqual(g, r) {
			t.Fatalf("re-encoding: %v\n%+v\n%+v", err, g, r)
		}
	})
}

// TestBlockHashesThroughState: the block hashes a bitmap poll keeps survive
// the state file. A bitmap's blocks rewritten with the same bytes (data of
// the filesystem, and zeros over unused space: a uniform group) are not
// changed; a block rewritten with other bytes is, alone.
func TestBlockHashesThroughState(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := fixture.Path(t, "ext4.img")
	img := filepath.Join(dir, "bm.qcow2")
	run := func(tool string, args ...string) {
		t.Helper()
		if out, err := exec.Command(fixture.Tool(t, tool), args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
		}
	}
	run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", src, img)
	run("qemu-img", "bitmap", "--add", "--enable", img, "b")
	db := newDB(t)
	poll := func() *dirty.Selection {
		t.Helper()
		im, d := testdisk.Open(t, img)
		defer im.Close()
		src, err := dirty.Bitmap(im, "b")
		if err != nil {
			t.Fatal(err)
		}
		sel, err := dirty.Select(ctx, im, d, src, db, "r")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range sel.Errors {
			t.Error(e)
		}
		if err := sel.Commit(); err != nil {
			t.Fatal(err)
		}
		return sel
	}
	poll()
	// The first 256 KiB of /data/big.bin (contiguous, where debugfs maps
	// it) written back as they are, and 1 MiB of zeros over the unused
	// space at 4 MiB.
	bmap := func(n int) int64 {
		out, err := exec.Command(fixture.Tool(t, "debugfs"), "-R", fmt.Sprintf("bmap /data/big.bin %d", n), src).Output()
		fields := strings.Fields(string(out))
		if err != nil || len(fields) == 0 {
			t.Fatalf("debugfs bmap: %v: %s", err, out)
		}
		b, err := strconv.ParseInt(fields[len(fields)-1], 10, 64)
		if err != nil {
			t.Fatalf("debugfs bmap: %s", out)
		}
		return b
	}
	const dataLen = 256 << 10
	first := bmap(0)
	if bmap(dataLen/4096-1) != first+dataLen/4096-1 {
		t.Fatal("the first 256 KiB of /data/big.bin are not contiguous")
	}
	dataOff := first * 4096
	same := filepath.Join(dir, "same.bin")
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, dataLen)
	_, err = f.ReadAt(buf, dataOff)
	f.Close()
	if err != nil || bytes.Count(buf, []byte{0}) == len(buf) {
		t.Fatalf("no data at %d in ext4.img (%v)", dataOff, err)
	}
	if err := os.WriteFile(same, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	run("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -s %s %d %d", same, dataOff, dataLen), "-c", "write -z 4M 1M", img)
	sel := poll()
	if s := sel.Stats["disk"]; s.DirtyBytes != 0 || len(sel.Changes) != 0 {
		t.Errorf("rewritten with the same bytes: %d dirty bytes, %d changes", s.DirtyBytes, len(sel.Changes))
	}
	run("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x55 %d 4096", dataOff+8192), img)
	sel = poll()
	if s := sel.Stats["disk"]; s.DirtyBytes != 4096 || len(sel.Changes) != 1 || sel.Changes[0].Path != "/data/big.bin" {
		t.Errorf("one block of /data/big.bin written: %d dirty bytes, changes %+v", s.DirtyBytes, sel.Changes)
	}
}

// TestDigestsFromScanReads: a first poll records each file's sha256 from
// the scanner's own reads (overlapping blocks, as scan reads them) instead
// of reading the files again; the stored digests must be the files'
// sha256, as debugfs cat gives the content for a sample of them.
func TestDigestsFromScanReads(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	im, d := open(t, "ext4.img")
	sel, err := dirty.Select(ctx, im, d, dirty.Hash(im), db, "r")
	if err != nil {
		t.Fatal(err)
	}
	due := sel.Due()
	if len(due) < 100 {
		t.Fatalf("first poll: %d due", len(due))
	}
	buf := make([]byte, 64<<10)
	for _, c := range due {
		_, f, err := sel.Open(c)
		if err != nil {
			t.Fatal(err)
		}
		// Blocks of 64 KiB that overlap by 4 KiB, then the head again.
		for off := int64(0); off < f.Size(); off += int64(len(buf)) - 4096 {
			f.ReadAt(buf, off)
		}
		f.ReadAt(buf[:100], 0)
	}
	if err := sel.Commit(); err != nil {
		t.Fatal(err)
	}
	snap, err := db.Load(dirty.Identity(im, d))
	if err != nil {
		t.Fatal(err)
	}
	stored := map[uint32]*dirty.FileRec{}
	snap.Indexes["disk"].Each(func(ino uint32, r *dirty.FileRec) { stored[ino] = r })
	v, _ := d.Volume("disk")
	for i, c := range due {
		r := stored[c.Ino]
		f, err := v.OpenInode(uint64(c.Ino))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		io.Copy(h, io.NewSectionReader(f, 0, f.Size()))
		want := hex.EncodeToString(h.Sum(nil))
		if i < 5 {
			out, err := exec.Command(fixture.Tool(t, "debugfs"), "-R", "cat "+c.Path, fixture.Path(t, "ext4.img")).Output()
			if err != nil {
				t.Fatal(err)
			}
			if s := sha256.Sum256(out); hex.EncodeToString(s[:]) != want {
				t.Fatalf("%s: our read and debugfs cat differ", c.Path)
			}
		}
		if r == nil || r.SHA256 != want {
			t.Errorf("%s: stored digest %v, want %s", c.Path, r, want)
		}
	}
}
