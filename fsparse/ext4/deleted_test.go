package ext4

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// rec writes a directory record at off of b.
func rec(b []byte, off int, ino uint32, rl int, name string, ft uint8) {
	binary.LittleEndian.PutUint32(b[off:], ino)
	binary.LittleEndian.PutUint16(b[off+4:], uint16(rl))
	b[off+6] = byte(len(name))
	b[off+7] = ft
	copy(b[off+8:], name)
}

// TestScanSlackBuilt: in a block built here, a live record whose rec_len
// covers two deleted ones and hostile candidates: the deleted records are
// found, each hostile one (inode 0 or past the count, '/' or NUL in the
// name, rec_len past the block or too small, name past the slack, unknown
// file type) is refused.
func TestScanSlackBuilt(t *testing.T) {
	b := make([]byte, 4096)
	rec(b, 0, 12, 4096, "alive", 1)          // live, its slack is [16, 4096)
	rec(b, 16, 13, 4080, "gone.txt", 1)      // deleted, itself covering more
	rec(b, 32, 14, 64, "older-dir", 2)       // deleted, in the slack of gone.txt
	rec(b, 96, 0, 32, "zero-ino", 1)         // inode 0
	rec(b, 128, 99999, 32, "big-ino", 1)     // inode past the count
	rec(b, 160, 15, 32, "sl/ash", 1)         // '/'
	rec(b, 192, 16, 32, "nu\x00l", 1)        // NUL
	rec(b, 224, 17, 8192, "too-long-rec", 1) // rec_len past the block
	rec(b, 256, 18, 12, "short-rec-len", 1)  // rec_len below what the name needs
	rec(b, 288, 19, 32, "badtype", 9)        // unknown file type
	rec(b, 4080, 20, 16, "tail-overflow", 1) // name past the end
	var got []string
	ScanSlack(b, 16, 4096, 4096, 1000, true, func(r SlackRecord) {
		got = append(got, strconv.Itoa(r.Off)+":"+string(r.Name)+":"+strconv.Itoa(int(r.Ino)))
	})
	want := []string{"16:gone.txt:13", "32:older-dir:14"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("found %v, want %v", got, want)
	}
}

// FuzzScanSlack: whatever the bytes, every record ScanSlack reports lies
// inside the slack, is 4-aligned, in increasing order, names an inode in
// range with a valid name; and the scan ends.
func FuzzScanSlack(f *testing.F) {
	b := make([]byte, 1024)
	rec(b, 0, 12, 1024, "alive", 1)
	rec(b, 16, 13, 1008, "gone.txt", 1)
	f.Add(b, uint16(16), uint16(1024), true)
	f.Add(b[:64], uint16(0), uint16(64), false)
	f.Fuzz(func(t *testing.T, b []byte, from, to uint16, filetype bool) {
		if len(b) > 65536 {
			b = b[:65536]
		}
		const inodes = 5000
		last := -1
		n := 0
		ScanSlack(b, int(from), int(to), len(b), inodes, filetype, func(r SlackRecord) {
			n++
			if r.Off <= last || r.Off&3 != 0 || r.Off < int(from) || r.Off+8+len(r.Name) > min(int(to), len(b)) {
				t.Fatalf("record at %d (last %d) name %d bytes outside [%d,%d)", r.Off, last, len(r.Name), from, to)
			}
			if r.Ino < 1 || r.Ino > inodes || !validName(r.Name) {
				t.Fatalf("record at %d: inode %d name %q", r.Off, r.Ino, r.Name)
			}
			last = r.Off
		})
		if n > len(b)/12+1 {
			t.Fatalf("%d records in %d bytes", n, len(b))
		}
	})
}

func irImage(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", "out-ir", name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (bash testdata/ir/build.sh)", p)
	}
	return p
}

func openFS(t *testing.T, p string) *FS {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, _ := f.Stat()
	fsys, err := Open(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	return fsys
}

// TestOpenDeletedContent: on the image debugfs deleted from, every
// deleted regular file whose name is still in slack reads back equal to
// the content kept before the delete; the unlinked orphan.bin (inode in
// use) and a live file are refused (ErrNotDeleted); on the image the
// kernel deleted from, the freed inodes' block maps are cleared
// (ErrNotRecoverable, never wrong bytes).
func TestOpenDeletedContent(t *testing.T) {
	img := irImage(t, "del-debugfs.img")
	kept := filepath.Join(filepath.Dir(img), "kept")
	fsys := openFS(t, img)
	ok := 0
	var walk func(ino uint32, dir string)
	walk = func(ino uint32, dir string) {
		slots, err := fsys.ScanDir(ino, dir != "" && ino != rootIno && strings.HasPrefix(dir, "/olddir"))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range slots {
			p := dir + "/" + s.Name
			if s.Ino == 0 {
				continue
			}
			if s.Type.IsDir() {
				if s.Deleted || !strings.HasPrefix(p, "/olddir") {
					walk(s.Ino, p)
				}
				continue
			}
			if !s.Deleted {
				continue
			}
			fl, err := fsys.OpenDeleted(s.Ino)
			if p == "/docs/orphan.bin" || p == "/big/file-with-a-long-name-010" {
				if !errors.Is(err, ErrNotDeleted) {
					t.Errorf("%s (inode %d in use): %v", p, s.Ino, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			got := make([]byte, fl.Size())
			if _, err := fl.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join(kept, p))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s: recovered %d bytes differ from the kept %d", p, len(got), len(want))
			}
			ok++
		}
	}
	walk(rootIno, "")
	if ok < 7 {
		t.Fatalf("%d deleted files recovered, want the 7 rm'd ones", ok)
	}
	if _, err := fsys.OpenDeleted(uint32(mustLookup(t, fsys, "keep/live.txt"))); !errors.Is(err, ErrNotDeleted) {
		t.Errorf("live file: %v", err)
	}

	kfs := openFS(t, irImage(t, "del-kernel.img"))
	n := 0
	err := kfs.ScanInodes(func(ino uint32, alloc bool, _ uint32, raw []byte) {
		in, err := kfs.ParseRaw(ino, raw)
		if err != nil || alloc || !in.IsRegular() || in.Dtime == 0 {
			return
		}
		n++
		if _, err := kfs.OpenDeleted(in.Ino); !errors.Is(err, ErrNotRecoverable) {
			t.Errorf("kernel-deleted inode %d: %v", in.Ino, err)
		}
	})
	if err != nil || n < 5 {
		t.Fatalf("%d kernel-deleted files: %v", n, err)
	}
}

func mustLookup(t *testing.T, f *FS, p string) uint32 {
	ino, err := f.Lookup(p)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

// TestOpenDeletedReusedBlocks: on ext4-frag.img, where debugfs wrote
// fragmented.bin into the blocks of the deleted fill files, a deleted file
// is either refused (a block in use again: debugfs icheck names the
// owner, fragmented.bin) or reads equal to its source.
func TestOpenDeletedReusedBlocks(t *testing.T) {
	img := fixture.Path(t, "ext4-frag.img")
	src := fixture.Path(t, "tree-frag")
	fsys := openFS(t, img)
	dir := mustLookup(t, fsys, "fill")
	frag := mustLookup(t, fsys, "fragmented.bin")
	slots, err := fsys.ScanDir(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	refused, read, checked := 0, 0, 0
	for _, s := range slots {
		if !s.Deleted || s.Ino == 0 {
			continue
		}
		fl, err := fsys.OpenDeleted(s.Ino)
		if errors.Is(err, ErrNotDeleted) {
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrNotRecoverable) {
				t.Fatalf("%s: %v", s.Name, err)
			}
			refused++
			if checked < 3 {
				checked++
				ext, _ := fsys.inodeExtents(s.Ino)
				out, _ := exec.Command(fixture.Tool(t, "debugfs"), "-R", "icheck "+strconv.FormatUint(ext[0].Physical, 10), img).Output()
				if !strings.Contains(string(out), "\t"+strconv.Itoa(int(frag))) {
					t.Errorf("%s: refused, but debugfs icheck of block %d says %q", s.Name, ext[0].Physical, out)
				}
			}
			continue
		}
		got := make([]byte, fl.Size())
		if _, err := fl.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(filepath.Join(src, "fill", s.Name))
		if !bytes.Equal(got, want) {
			t.Errorf("%s: recovered content differs", s.Name)
		}
		read++
	}
	if refused == 0 {
		t.Fatal("no deleted file refused: the fixture's reuse is not exercised")
	}
	t.Logf("%d refused (blocks reused), %d read back equal", refused, read)
}

// FuzzDeletedScan: a fuzzed block written over a directory block of a
// real image, or over its first inode-table block (which&2): ScanDir in
// both modes, DirInCopy and InodesInCopy on the bytes end without panic,
// their records are in range and their names valid; and the view that
// holds the inode tables in memory lists and scans the root and
// lost+found exactly as the filesystem read from the device does.
func FuzzDeletedScan(f *testing.F) {
	base := fuzzBase(f)
	b := make([]byte, 1024)
	rec(b, 0, 12, 1024, "alive", 1)
	rec(b, 16, 13, 1008, "gone.txt", 1)
	f.Add(uint8(0), b)
	f.Add(uint8(1), b[:100])
	f.Add(uint8(3), b)
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		k := int(which & 1)
		img := bytes.Clone(base.imgs[k])
		fs0 := openBytes(t, img)
		if fs0 == nil {
			return
		}
		root, err := fs0.Inode(rootIno)
		if err != nil {
			return
		}
		m, err := fs0.mapInode(root)
		if err != nil || len(m.ext) == 0 {
			return
		}
		blk := m.ext[0].Physical
		if which&2 != 0 {
			blk = fs0.itable[0]
		}
		copy(img[blk*fs0.bs:(blk+1)*fs0.bs], data)
		fsys := openBytes(t, img)
		if fsys == nil {
			return
		}
		view, err := fsys.WithInodeTables(context.Background(), 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		// The root (whose block or inode the fuzzed block holds) and
		// lost+found.
		for _, ino := range []uint32{rootIno, 11} {
			a, aerr := fsys.ReadDirInode(ino)
			b, berr := view.ReadDirInode(ino)
			if !reflect.DeepEqual(a, b) || errString(aerr) != errString(berr) {
				t.Fatalf("inode %d: ReadDirInode from the device %v, %v; from the view %v, %v", ino, a, aerr, b, berr)
			}
			for _, del := range []bool{false, true} {
				a, aerr := fsys.ScanDir(ino, del)
				b, berr := view.ScanDir(ino, del)
				if !reflect.DeepEqual(a, b) || errString(aerr) != errString(berr) {
					t.Fatalf("inode %d: ScanDir(%v) differs through the view", ino, del)
				}
			}
		}
		for _, del := range []bool{false, true} {
			slots, err := fsys.ScanDir(rootIno, del)
			if err != nil {
				continue
			}
			for _, s := range slots {
				if s.Ino > fsys.sb.InodesCount || (s.Slack && !validName([]byte(s.Name))) {
					t.Fatalf("slot %+v", s)
				}
			}
		}
		page := make([]byte, fsys.bs)
		copy(page, data)
		if d, ok := fsys.DirInCopy(page); ok {
			for _, s := range d.Entries {
				if s.Ino == 0 || s.Ino > fsys.sb.InodesCount {
					t.Fatalf("dir copy entry %+v", s)
				}
			}
		}
		fsys.InodesInCopy(fsys.itable[0], page)
	})
}
