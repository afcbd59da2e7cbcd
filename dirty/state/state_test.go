package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/qcow"
)

func open(t *testing.T, name string) (*qcow.Image, *fsparse.Disk) {
	im, err := qcow.Open(fixture.Path(t, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	d, err := fsparse.Open(im, im.Size())
	if err != nil {
		t.Fatal(err)
	}
	return im, d
}

func TestPollsThroughState(t *testing.T) {
	ctx := context.Background()
	db, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	im, d := open(t, "overlay-raw.qcow2")
	poll := func(rules string) *dirty.Selection {
		t.Helper()
		sel, err := dirty.Select(ctx, im, d, "auto", db, rules)
		if err != nil {
			t.Fatal(err)
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
	t.Logf("second poll: %d changes, %d due", len(second.Changes), len(second.Due()))
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
	if _, err := dirty.Select(ctx, other, od, "auto", db, "r2"); !errors.Is(err, dirty.ErrOtherImage) {
		t.Errorf("another image's state: err = %v", err)
	}
}

// TestDeltaEqualsRebuild: after polls saved as deltas, the stored records
// equal a full index of the image (but for digests and verdicts), and the
// runs and links buckets hold exactly the records' runs and names.
func TestDeltaEqualsRebuild(t *testing.T) {
	ctx := context.Background()
	db, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	im, d := open(t, "overlay-raw.qcow2")
	for i, rules := range []string{"r1", "r1", "r2", "r2"} {
		sel, err := dirty.Select(ctx, im, d, "auto", db, rules)
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
		if v.Ext4 == nil {
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
	r := &dirty.FileRec{Ino: 12, Mode: 0o100644, Uid: 1000, Gid: 1000, Size: 1 << 40, Links: 2, Flags: 0x80000,
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
