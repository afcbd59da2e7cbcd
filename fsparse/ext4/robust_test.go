package ext4

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestCorruptImage damages one directory block and one inode's extent
// header in a copy of the ext4 image: Open still works, the other files
// still read, and the damaged ones fail with ErrCorrupt naming the inode.
func TestCorruptImage(t *testing.T) {
	src, imgs := testImages(t)
	for _, v := range []string{"ext4", "ext2"} {
		t.Run(v, func(t *testing.T) {
			cp := filepath.Join(t.TempDir(), "bad.img")
			if out, err := exec.Command("cp", "--sparse=always", imgs[v], cp).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v %s", err, out)
			}
			f := openImage(t, cp)
			dirIno, _ := f.Lookup("main/d2")
			fileIno, _ := f.Lookup("main/big")
			ext, err := f.Extents(dirIno)
			if err != nil || len(ext) == 0 {
				t.Fatalf("Extents(dir) = %v, %v", ext, err)
			}
			w, err := os.OpenFile(cp, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			bs := uint64(f.Super().BlockSize)
			garbage := bytes.Repeat([]byte{0xff, 0x7f, 0x13, 0x00}, int(bs)/4)
			if _, err := w.WriteAt(garbage, int64(ext[0].Physical*bs)); err != nil {
				t.Fatal(err)
			}
			off := f.inodeOffset(fileIno)
			// Extent magic (ext4) or the first direct block pointer (ext2).
			if _, err := w.WriteAt([]byte{0xfe, 0xff, 0xff, 0xff}, int64(off+0x28)); err != nil {
				t.Fatal(err)
			}
			w.Close()

			f = openImage(t, cp)
			checkBad := func(what string, ino uint32, err error) {
				t.Helper()
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("inode %d", ino)) {
					t.Errorf("%s: err = %v, want ErrCorrupt naming inode %d", what, err, ino)
				}
			}
			_, err = f.ReadDirInode(dirIno)
			checkBad("ReadDirInode", dirIno, err)
			_, err = f.Lookup("main/d2/f002.dat")
			checkBad("Lookup", dirIno, err)
			_, err = f.OpenInode(fileIno)
			checkBad("OpenInode", fileIno, err)
			_, err = fs.ReadFile(f, "main/big")
			checkBad("ReadFile", fileIno, err)
			for _, p := range []string{"main/d0/sub0/f000.dat", "extra/big3m", "extra/sparse"} {
				got, err := fs.ReadFile(f, p)
				want, _ := os.ReadFile(filepath.Join(src, p))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s after damage: %v", p, err)
				}
			}
		})
	}
}

// inodeOffset is the byte offset of inode ino on the device.
func (f *FS) inodeOffset(ino uint32) uint64 {
	g := (ino - 1) / f.sb.InodesPerGroup
	idx := (ino - 1) % f.sb.InodesPerGroup
	return f.itable[g]*f.bs + uint64(idx)*uint64(f.sb.InodeSize)
}

func TestBadInputs(t *testing.T) {
	if _, err := Open(bytes.NewReader(make([]byte, 4096)), 4096); !errors.Is(err, ErrNotExt) {
		t.Errorf("zeros: %v", err)
	}
	if _, err := Open(bytes.NewReader(nil), 0); !errors.Is(err, ErrNotExt) {
		t.Errorf("empty: %v", err)
	}
	base := fuzzBase(t)
	img := bytes.Clone(base.imgs[0])
	img[1024+0x60] |= 0x80 // unknown incompat bit 31
	img[1024+0x63] |= 0x80
	if _, err := Open(bytes.NewReader(img), int64(len(img))); !errors.Is(err, ErrUnsupported) {
		t.Errorf("unknown incompat: %v", err)
	}
	f, err := Open(bytes.NewReader(base.imgs[0]), int64(len(base.imgs[0])))
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range []uint32{0, f.Super().InodesCount + 1} {
		if _, err := f.Inode(ino); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Inode(%d): %v", ino, err)
		}
	}
	// A truncated image: Open or reads fail with ErrCorrupt, never panic.
	short := base.imgs[0][:len(base.imgs[0])/2]
	if f, err := Open(bytes.NewReader(short), int64(len(short))); err == nil {
		exercise(t, f)
	} else if !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated: %v", err)
	}
}

// fuzzImages are two small real images (ext4 with 1 KiB blocks and
// metadata_csum; ext2 with block maps), built once, with the offsets of the
// structures the fuzz targets overwrite.
type fuzzImages struct {
	imgs     [2][]byte
	inodes   [2][]uint64 // byte offsets of interesting inodes
	dirBlock [2]uint64   // byte offset of a directory block
	leaf     uint64      // byte offset of an extent leaf block (ext4)
	root     uint64      // byte offset of that inode's i_block (ext4)
	bs       [2]int
}

var (
	fuzzOnce sync.Once
	fuzzImg  *fuzzImages
	fuzzErr  error
)

func fuzzBase(t testing.TB) *fuzzImages {
	mkfs := tool(t, "mkfs.ext4")
	fuzzOnce.Do(func() { fuzzImg, fuzzErr = buildFuzzImages(mkfs) })
	if fuzzErr != nil {
		t.Fatal(fuzzErr)
	}
	return fuzzImg
}

func buildFuzzImages(mkfs string) (*fuzzImages, error) {
	dir, err := os.MkdirTemp("", "ext4fuzz")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "d", "e"), 0o755)
	for i := 0; i < 20; i++ {
		os.WriteFile(filepath.Join(src, "d", fmt.Sprintf("file%02d", i)), bytes.Repeat([]byte{byte(i)}, i*97), 0o644)
	}
	os.WriteFile(filepath.Join(src, "d", "e", "tiny"), []byte("tiny"), 0o600)
	sp, _ := os.Create(filepath.Join(src, "sparse"))
	for i := 0; i < 12; i++ {
		sp.WriteAt(bytes.Repeat([]byte{'s'}, 1024), int64(i)*4096)
	}
	sp.Close()
	os.Symlink("d/e/tiny", filepath.Join(src, "short"))
	os.Symlink(strings.Repeat("abcdefgh/", 12), filepath.Join(src, "long"))
	fi := &fuzzImages{}
	for k, args := range [][]string{{"-t", "ext4", "-b", "1024", "-O", "inline_data"}, {"-t", "ext2", "-b", "1024", "-I", "128"}} {
		img := filepath.Join(dir, fmt.Sprintf("%d.img", k))
		a := append([]string{"-q", "-F", "-N", "64", "-E", "root_owner=0:0", "-d", src}, args...)
		a = append(a, img, "1M")
		if out, err := exec.Command(mkfs, a...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("mkfs: %v %s", err, out)
		}
		b, err := os.ReadFile(img)
		if err != nil {
			return nil, err
		}
		f, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return nil, err
		}
		fi.imgs[k] = b
		fi.bs[k] = f.Super().BlockSize
		for _, p := range []string{".", "d", "sparse", "long", "d/file05", "d/e"} {
			ino, err := f.Lookup(p)
			if err != nil {
				return nil, err
			}
			fi.inodes[k] = append(fi.inodes[k], f.inodeOffset(ino))
		}
		dIno, _ := f.Lookup("d")
		ext, err := f.Extents(dIno)
		if err != nil || len(ext) == 0 {
			return nil, fmt.Errorf("no dir block: %v", err)
		}
		fi.dirBlock[k] = ext[0].Physical * uint64(fi.bs[k])
		if k == 0 {
			spIno, _ := f.Lookup("sparse")
			meta, err := f.MetadataBlocks(spIno)
			if err != nil || len(meta) == 0 {
				return nil, fmt.Errorf("sparse has no extent leaf: %v", err)
			}
			fi.leaf = meta[0] * uint64(fi.bs[k])
			fi.root = f.inodeOffset(spIno) + 0x28
		}
	}
	return fi, nil
}

func isCategory(err error) bool {
	return errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNotExt) || errors.Is(err, ErrUnsupported)
}

// exercise walks the whole filesystem (bounded) and checks the invariants:
// errors belong to a category, extents are sorted and inside the fs.
func exercise(t testing.TB, f *FS) {
	sb := f.Super()
	check := func(what string, err error) bool {
		if err != nil && !isCategory(err) {
			t.Fatalf("%s: error outside the categories: %v", what, err)
		}
		return err == nil
	}
	seen := map[uint32]bool{}
	queue := []uint32{rootIno}
	buf := make([]byte, 64<<10)
	for len(queue) > 0 && len(seen) < 200 {
		ino := queue[0]
		queue = queue[1:]
		if seen[ino] {
			continue
		}
		seen[ino] = true
		in, err := f.Inode(ino)
		if !check("Inode", err) {
			continue
		}
		_ = in.FileMode()
		ext, err := f.Extents(ino)
		if check("Extents", err) {
			var next uint64
			for _, e := range ext {
				if e.Len == 0 || e.Logical < next || e.Physical+e.Len > sb.BlocksCount || e.Physical < uint64(sb.FirstDataBlock) {
					t.Fatalf("inode %d: bad extent %+v (fs of %d blocks)", ino, e, sb.BlocksCount)
				}
				next = e.Logical + e.Len
			}
		}
		if meta, err := f.MetadataBlocks(ino); check("MetadataBlocks", err) {
			for _, m := range meta {
				if m >= sb.BlocksCount {
					t.Fatalf("inode %d: metadata block %d beyond %d", ino, m, sb.BlocksCount)
				}
			}
		}
		f.InlineData(ino)
		if fl, err := f.OpenInode(ino); check("OpenInode", err) {
			for off := int64(0); off < min(fl.Size(), 4<<20); off += int64(len(buf)) {
				_, err := fl.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					check("ReadAt", err)
					break
				}
			}
		}
		if in.IsSymlink() {
			_, err := f.ReadlinkInode(ino)
			check("Readlink", err)
		}
		if in.IsDir() {
			ents, err := f.ReadDirInode(ino)
			if check("ReadDirInode", err) {
				for _, e := range ents {
					if e.Ino == 0 || e.Ino > sb.InodesCount {
						t.Fatalf("bad entry %+v", e)
					}
					// Names are data: one that cannot be a path element
					// comes with its problem, the others are path elements.
					bad := e.Name == "" || e.Name == "." || e.Name == ".." || strings.ContainsAny(e.Name, "/\x00")
					if bad != (e.Problem != nil) || (bad && !errors.Is(e.Problem, ErrBadName)) {
						t.Fatalf("entry %q: problem %v", e.Name, e.Problem)
					}
					queue = append(queue, e.Ino)
				}
			}
		}
	}
	for _, p := range []string{"d/e/tiny", "d/file05", "long", "sparse"} {
		_, err := fs.ReadFile(f, p)
		if err != nil && !isCategory(err) && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, ErrNotDir) {
			t.Fatalf("ReadFile(%s): %v", p, err)
		}
	}
}

func openBytes(t testing.TB, img []byte) *FS {
	f, err := Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		if !isCategory(err) {
			t.Fatalf("Open: error outside the categories: %v", err)
		}
		return nil
	}
	return f
}

// FuzzOpen overwrites the superblock and the group descriptors (bytes 1024
// to 1024+len) of a real image.
func FuzzOpen(f *testing.F) {
	base := fuzzBase(f)
	for k := range base.imgs {
		f.Add(uint8(k), base.imgs[k][1024:1024+2048])
		f.Add(uint8(k), base.imgs[k][1024:1024+100])
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		img := bytes.Clone(base.imgs[which&1])
		copy(img[1024:], data[:min(len(data), 4096)])
		if fs := openBytes(t, img); fs != nil {
			exercise(t, fs)
		}
	})
}

// FuzzSuperblock parses random bytes as a superblock.
func FuzzSuperblock(f *testing.F) {
	base := fuzzBase(f)
	f.Add(base.imgs[0][1024:2048])
	f.Add(base.imgs[1][1024:2048])
	f.Fuzz(func(t *testing.T, data []byte) {
		sb, err := parseSuperblock(data)
		if err != nil {
			if !isCategory(err) {
				t.Fatalf("error outside the categories: %v", err)
			}
			return
		}
		if sb.BlockSize < 1024 || sb.BlockSize > 65536 || sb.InodeSize < 128 || sb.InodeSize > sb.BlockSize {
			t.Fatalf("accepted %+v", sb)
		}
		_, _, _ = sb.Features(), sb.Kind(), sb.UUIDString()
	})
}

// FuzzInode overwrites one of several real inodes (root, a dir, a file with
// an extent tree, a slow symlink, a small file, an inline dir).
func FuzzInode(f *testing.F) {
	base := fuzzBase(f)
	for k := range base.imgs {
		isz := 256
		if k == 1 {
			isz = 128
		}
		for i, off := range base.inodes[k] {
			f.Add(uint8(k), uint8(i), base.imgs[k][off:off+uint64(isz)])
		}
	}
	f.Fuzz(func(t *testing.T, which, idx uint8, data []byte) {
		k := int(which & 1)
		offs := base.inodes[k]
		off := offs[int(idx)%len(offs)]
		img := bytes.Clone(base.imgs[k])
		isz := 256
		if k == 1 {
			isz = 128
		}
		copy(img[off:off+uint64(isz)], data)
		if fs := openBytes(t, img); fs != nil {
			exercise(t, fs)
		}
	})
}

// FuzzExtentTree overwrites the extent root in the inode (first 60 bytes)
// and the leaf block (the rest) of a file with a depth-1 tree.
func FuzzExtentTree(f *testing.F) {
	base := fuzzBase(f)
	img := base.imgs[0]
	bs := uint64(base.bs[0])
	seed := append(bytes.Clone(img[base.root:base.root+60]), img[base.leaf:base.leaf+bs]...)
	f.Add(seed)
	f.Add(seed[:60])
	f.Fuzz(func(t *testing.T, data []byte) {
		img := bytes.Clone(base.imgs[0])
		copy(img[base.root:base.root+60], data)
		if len(data) > 60 {
			copy(img[base.leaf:base.leaf+bs], data[60:])
		}
		if fs := openBytes(t, img); fs != nil {
			exercise(t, fs)
		}
	})
}

// FuzzDirBlock overwrites a directory block.
func FuzzDirBlock(f *testing.F) {
	base := fuzzBase(f)
	for k := range base.imgs {
		off := base.dirBlock[k]
		f.Add(uint8(k), base.imgs[k][off:off+uint64(base.bs[k])])
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		k := int(which & 1)
		img := bytes.Clone(base.imgs[k])
		off := base.dirBlock[k]
		copy(img[off:off+uint64(base.bs[k])], data)
		if fs := openBytes(t, img); fs != nil {
			exercise(t, fs)
		}
	})
}

// BenchmarkWalkAndRead lists every directory and reads every regular file
// of the largest test image.
func BenchmarkWalkAndRead(b *testing.B) {
	// The shared ext4.img of testdata/fixtures.sh (5,000+ files) when it is
	// built, else this package's own ext4 image.
	img := filepath.Join(fixture.Dir(), "ext4.img")
	if _, err := os.Stat(img); err != nil {
		_, imgs := testImages(b)
		img = imgs["ext4"]
	}
	b.Logf("image %s", img)
	f := openImage(b, img)
	buf := make([]byte, 1<<20)
	var total int64
	for b.Loop() {
		total = 0
		var walk func(ino uint32)
		walk = func(ino uint32) {
			ents, err := f.ReadDirInode(ino)
			if err != nil {
				b.Fatal(err)
			}
			for _, e := range ents {
				switch {
				case e.Type.IsDir():
					walk(e.Ino)
				case e.Type.IsRegular():
					fl, err := f.OpenInode(e.Ino)
					if err != nil {
						b.Fatal(err)
					}
					for off := int64(0); off < fl.Size(); off += int64(len(buf)) {
						n, err := fl.ReadAt(buf, off)
						if err != nil && err != io.EOF {
							b.Fatal(err)
						}
						total += int64(n)
					}
				}
			}
		}
		walk(rootIno)
	}
	b.SetBytes(total)
}
