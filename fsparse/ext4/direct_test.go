package ext4

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/fixture"
)

// countedImage is a disk image whose direct reads are counted.
type countedImage struct {
	*disk.Image
	direct atomic.Int64
}

func (c *countedImage) ReadAtDirect(p []byte, off int64) (int, error) {
	c.direct.Add(1)
	return c.Image.ReadAtDirect(p, off)
}

// cachedOnly hides ReadAtDirect: every read goes through the cache.
type cachedOnly struct{ r io.ReaderAt }

func (c cachedOnly) ReadAt(p []byte, off int64) (int, error) { return c.r.ReadAt(p, off) }

// dirAnswers lists and scans (both modes) every directory inode in use.
func dirAnswers(t *testing.T, f *FS) []answer {
	t.Helper()
	var out []answer
	for ino := uint32(1); ino <= f.sb.InodesCount; ino++ {
		in, err := f.Inode(ino)
		if a, _ := f.InodeAllocated(ino); err != nil || !in.IsDir() || !a {
			continue
		}
		ents, err := f.ReadDirInode(ino)
		out = append(out, answer{"readdir", ino, ents, errString(err)})
		for _, del := range []bool{false, true} {
			slots, err := f.ScanDir(ino, del)
			out = append(out, answer{"scandir", ino, slots, errString(err)})
		}
	}
	return out
}

// TestDirectoryReadsDirect: directories are read past the cluster cache of
// a raw image (disk.Image.ReadAtDirect, reached through the sections a
// volume's device is made of), and what they list and scan equals what
// the same image read through the cache gives, errors included: on
// fixtures, and on an image cut short under a device that claims its
// whole size (reads past the end fall back to the cached read and its
// error).
func TestDirectoryReadsDirect(t *testing.T) {
	cut := filepath.Join(t.TempDir(), "cut.img")
	src := fixture.Path(t, "ext4-nocsum-1k.img")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	// Cut at the first block of the directory whose block lies last
	// (after its inode): its listing then fails.
	f0 := openFS(t, src)
	var at uint64
	for ino := uint32(1); ino <= f0.sb.InodesCount; ino++ {
		in, err := f0.Inode(ino)
		if err != nil || !in.IsDir() || in.HasInlineData() {
			continue
		}
		m, err := f0.mapInode(in)
		ib, _ := f0.inodeByte(ino)
		if err == nil && len(m.ext) > 0 && m.ext[0].Physical*f0.bs > uint64(ib) {
			at = max(at, m.ext[0].Physical*f0.bs)
		}
	}
	if at == 0 {
		t.Fatal("no directory block after its inode")
	}
	if err := os.WriteFile(cut, b[:at], 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		size int64 // of the device: the original size for the cut image
	}{{fixture.Path(t, "ext4-128.img"), 0}, {src, 0}, {fixture.Path(t, "ext4-inline.img"), 0}, {irImage(t, "del-kernel.img"), 0}, {cut, int64(len(b))}} {
		t.Run(filepath.Base(c.path), func(t *testing.T) {
			im, err := disk.Open(c.path)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			size := c.size
			if size == 0 {
				size = im.Size()
			}
			ci := &countedImage{Image: im}
			// As fsparse makes a volume's device: a section of the disk,
			// and the filesystem's own section of it.
			dev := io.NewSectionReader(io.NewSectionReader(ci, 0, size), 0, size)
			direct, err := Open(dev, size)
			if err != nil {
				t.Fatal(err)
			}
			cached, err := Open(io.NewSectionReader(cachedOnly{im}, 0, size), size)
			if err != nil {
				t.Fatal(err)
			}
			want, got := dirAnswers(t, cached), dirAnswers(t, direct)
			if ci.direct.Load() == 0 {
				t.Fatal("no direct read")
			}
			if !reflect.DeepEqual(want, got) {
				for i := range min(len(want), len(got)) {
					if !reflect.DeepEqual(want[i], got[i]) {
						t.Fatalf("first difference:\n cached: %+v\n direct: %+v", want[i], got[i])
					}
				}
				t.Fatalf("%d answers through the cache, %d direct", len(want), len(got))
			}
			if c.size != 0 {
				var errs int
				for _, a := range got {
					if a.err != "" {
						errs++
					}
				}
				if errs == 0 {
					t.Fatal("the cut image gives no directory error")
				}
				t.Logf("%d answers, %d errors", len(got), errs)
			}
		})
	}
}
