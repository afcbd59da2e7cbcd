package dirty

import (
	"cmp"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// TestToVolume: disk ranges are translated through a volume's map, extent
// by extent (a logical volume of two segments, the second before the
// first on the disk), not shifted by one offset: what lies outside every
// extent is dropped, a range over two extents is split.
func TestToVolume(t *testing.T) {
	v := &fsparse.Volume{Segments: []fsparse.Segment{{Off: 0, DiskOff: 1 << 20, Len: 1 << 20}, {Off: 1 << 20, DiskOff: 8 << 20, Len: 2 << 20}}}
	disk := rangeset.Of(
		rangeset.Range{Start: 0, End: 4096},                    // before: no volume
		rangeset.Range{Start: 1<<20 + 4096, End: 1<<20 + 8192}, // first segment
		rangeset.Range{Start: 2<<20 - 4096, End: 2<<20 + 4096}, // across its end
		rangeset.Range{Start: 8 << 20, End: 8<<20 + 4096},      // second segment
		rangeset.Range{Start: 10<<20 - 4096, End: 11 << 20},    // across its end
	)
	want := rangeset.Of(
		rangeset.Range{Start: 4096, End: 8192},
		rangeset.Range{Start: 1<<20 - 4096, End: 1<<20 + 4096},
		rangeset.Range{Start: 3<<20 - 4096, End: 3 << 20},
	)
	got := v.FromDisk(disk)
	if !slicesEqual(got.Ranges(), want.Ranges()) {
		t.Errorf("FromDisk = %v, want %v", got.Ranges(), want.Ranges())
	}
	// And back: the parts of the disk ranges that hold the volume.
	inVol := rangeset.Union(disk.Clip(1<<20, 2<<20), disk.Clip(8<<20, 10<<20))
	if back := v.ToDisk(got); !slicesEqual(back.Ranges(), inVol.Ranges()) {
		t.Errorf("ToDisk = %v, want %v", back.Ranges(), inVol.Ranges())
	}
	// One partition: the shift by its start, clipped to its size.
	part := &fsparse.Volume{Segments: []fsparse.Segment{{Off: 0, DiskOff: 1 << 20, Len: 1 << 20}}}
	if got := part.FromDisk(disk); !slicesEqual(got.Ranges(),
		[]rangeset.Range{{Start: 4096, End: 8192}, {Start: 1<<20 - 4096, End: 1 << 20}}) {
		t.Errorf("partition: %v", got.Ranges())
	}
}

func slicesEqual(a, b []rangeset.Range) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestExt4FSAgainstE2fsprogs checks the ext4 view of the dirty mapping
// against e2fsprogs on a fixture: the inode tables against dumpe2fs, and
// blocks each live inode owns (data, directory and extent-tree blocks: the
// block → owner index) against debugfs's blocks command.
func TestExt4FSAgainstE2fsprogs(t *testing.T) {
	img := fixture.Path(t, "ext4.img")
	im, v := openVol(t, img)
	defer im.Close()
	fsys, err := OpenFS(v)
	if err != nil {
		t.Fatal(err)
	}
	out := sh(t, filepath.Dir(img), "dumpe2fs", img)
	re := regexp.MustCompile(`Inode table at (\d+)-(\d+)`)
	var want []InodeTable
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		a, _ := strconv.ParseUint(m[1], 10, 64)
		b, _ := strconv.ParseUint(m[2], 10, 64)
		want = append(want, InodeTable{Start: a, Len: b - a + 1})
	}
	var got []InodeTable
	for _, it := range fsys.InodeTables() {
		got = append(got, InodeTable{Start: it.Start, Len: it.Len})
	}
	slices.SortFunc(want, func(a, b InodeTable) int { return cmp.Compare(a.Start, b.Start) })
	if len(want) == 0 || !slices.Equal(got, want) {
		t.Errorf("inode tables %v, dumpe2fs says %v", got, want)
	}

	x, err := BuildIndex(context.Background(), v)
	if err != nil {
		t.Fatal(err)
	}
	var inos []uint32
	for ino, r := range x.Files {
		if r.ReadErr == "" && !r.Inline && (r.IsRegular() || r.IsDir()) {
			inos = append(inos, ino)
		}
	}
	slices.Sort(inos)
	if len(inos) < 20 {
		t.Fatalf("%d files in the index", len(inos))
	}
	var script strings.Builder
	for _, ino := range inos {
		fmt.Fprintf(&script, "blocks <%d>\n", ino)
	}
	cmd := exec.Command(fixture.Tool(t, "debugfs"), "-f", "-", img)
	cmd.Stdin = strings.NewReader(script.String())
	o, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	ref := map[uint32][]uint64{}
	var cur uint32
	for _, l := range strings.Split(string(o), "\n") {
		if n, ok := strings.CutPrefix(l, "debugfs: blocks <"); ok {
			k, _ := strconv.ParseUint(strings.TrimSuffix(n, ">"), 10, 32)
			cur = uint32(k)
			continue
		}
		for _, f := range strings.Fields(l) {
			b, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				t.Fatalf("debugfs line %q", l)
			}
			ref[cur] = append(ref[cur], b)
		}
	}
	for _, ino := range inos {
		var own []uint64
		for _, run := range x.Files[ino].Runs {
			if run.Kind != KindXattr {
				for b := run.Start; b < run.Start+run.Len; b++ {
					own = append(own, b)
				}
			}
		}
		slices.Sort(own)
		w := slices.Clone(ref[ino])
		slices.Sort(w)
		if !slices.Equal(own, w) {
			t.Errorf("inode %d (%s): owns %d blocks, debugfs lists %d", ino, x.Paths(ino), len(own), len(w))
		}
	}
}
