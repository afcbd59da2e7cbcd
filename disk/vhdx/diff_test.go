package vhdx_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/cow"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/vhdx"
	"github.com/vmscope/vmscope/internal/imgtest"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// parentCopy copies the dynamic VHDX fixture into dir as parent.vhdx and
// returns its path, its data write GUID and its guest bytes (ext4.img).
func parentCopy(t *testing.T, dir string) (string, string, []byte) {
	t.Helper()
	b, err := os.ReadFile(imgtest.Path(t, "dynamic.vhdx"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "parent.vhdx")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	im, err := disk.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	raw, err := os.ReadFile(imgtest.Path(t, "ext4.img"))
	if err != nil {
		t.Fatal(err)
	}
	return p, "{" + im.Top().(*vhdx.Layer).Header.DataWriteGUID.String() + "}", raw
}

var diffWrites = []imgtest.Write{
	{Off: 2<<20 + 0, Len: 4096, Fill: 0xd1},     // part of block 1: partially present
	{Off: 2<<20 + 51200, Len: 2048, Fill: 0xd2}, // more of block 1
	{Off: 10 << 20, Len: 2 << 20, Fill: 0xd3},   // all of block 5: fully present
	{Off: 63<<20 + 512, Len: 512, Fill: 0xd4},   // one sector of the last block
}

// TestDifferencing: a differencing VHDX written in Go (qemu-img cannot)
// over the dynamic fixture reads as the parent with the child's sectors
// and zero block over it; Allocated is the sectors written and the zero
// block; the copy-on-write dirty source of the chain is that set.
func TestDifferencing(t *testing.T) {
	for _, keys := range []map[string]string{
		{"relative_path": `.\parent.vhdx`},
		{"relative_path": `gone.vhdx`, "absolute_win32_path": "PARENT"},
		{"relative_path": `parent.vhdx`, "absolute_win32_path": `C:\vms\parent.vhdx`},
	} {
		dir := t.TempDir()
		parent, linkage, raw := parentCopy(t, dir)
		if keys["absolute_win32_path"] == "PARENT" {
			keys["absolute_win32_path"] = parent
		}
		child := filepath.Join(dir, "child.vhdx")
		const zeroBlock = 20 // guest [40 MiB, 42 MiB)
		imgtest.WriteVHDXChild(t, child, imgtest.VHDXChild{Size: int64(len(raw)), Linkage: linkage, Keys: keys,
			Writes: diffWrites, ZeroBlocks: []int64{zeroBlock}})
		want, wantAlloc := imgtest.Expect(raw, append(diffWrites, imgtest.Write{Off: zeroBlock << 21, Len: 2 << 20, Fill: 0}))

		im, err := disk.Open(child)
		if err != nil {
			t.Fatalf("%v: %v", keys, err)
		}
		ls := im.Layers()
		if len(ls) != 2 || ls[1].Name() != parent || !ls[0].(*vhdx.Layer).HasParent {
			t.Fatalf("%v: chain %s", keys, im)
		}
		got := make([]byte, im.Size())
		if n, err := im.ReadAt(got, 0); n != len(want) || (err != nil && !errors.Is(err, io.EOF)) {
			t.Fatalf("ReadAt = %d, %v", n, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%v: bytes differ from the parent with the child's writes", keys)
		}
		for _, off := range []int64{2<<20 - 100, 2<<20 + 4000, 2<<20 + 51000, 12<<20 - 7, 63<<20 + 1000, 40<<20 - 3} {
			p := make([]byte, 9000)
			if _, err := ls[0].ReadAt(p, off); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if !bytes.Equal(p, want[off:min(off+9000, int64(len(want)))]) {
				t.Fatalf("%v: read at %d differs", keys, off)
			}
		}
		alloc, err := ls[0].Allocated(context.Background())
		if err != nil || !rangeset.Equal(alloc, wantAlloc) {
			t.Fatalf("%v: Allocated %v, %v; want %v", keys, alloc, err, wantAlloc)
		}
		d, err := cow.Dirty(context.Background(), im, 1)
		if err != nil || !rangeset.Equal(d, wantAlloc) {
			t.Fatalf("%v: cow.Dirty %v, %v; want %v", keys, d, err, wantAlloc)
		}
		im.Close()
	}
}

// TestDifferencingErrors: a parent with another data write GUID, a
// missing parent and a child naming itself are chain errors; a log to
// replay is refused (unsupported); a newer header with a bad CRC-32C
// leaves the older one in use.
func TestDifferencingErrors(t *testing.T) {
	dir := t.TempDir()
	parent, linkage, raw := parentCopy(t, dir)
	rel := map[string]string{"relative_path": "parent.vhdx"}
	cases := []struct {
		name string
		c    imgtest.VHDXChild
		want error
	}{
		{"other linkage", imgtest.VHDXChild{Linkage: "{01234567-89ab-cdef-0123-456789abcdef}", Keys: rel}, disk.ErrChain},
		{"missing", imgtest.VHDXChild{Linkage: linkage, Keys: map[string]string{"relative_path": "gone.vhdx"}}, disk.ErrChain},
		{"loop", imgtest.VHDXChild{Linkage: linkage, Keys: map[string]string{"relative_path": "child.vhdx"}}, disk.ErrChain},
		{"log", imgtest.VHDXChild{Linkage: linkage, Keys: rel, LogGUID: true}, disk.ErrUnsupported},
		{"bad newer crc", imgtest.VHDXChild{Linkage: linkage, Keys: rel, BadNewerCRC: true}, nil},
	}
	for _, c := range cases {
		child := filepath.Join(dir, "child.vhdx")
		c.c.Size = int64(len(raw))
		c.c.Writes = diffWrites
		imgtest.WriteVHDXChild(t, child, c.c)
		im, err := disk.Open(child)
		if c.want == nil {
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if h := im.Top().(*vhdx.Layer).Header; h.Sequence != 1 || h.At != 64<<10 {
				t.Fatalf("%s: header %+v in use", c.name, h)
			}
			im.Close()
			continue
		}
		if err == nil {
			im.Close()
			t.Fatalf("%s: opened", c.name)
		}
		imgtest.CheckError(t, c.name, err)
		if !errors.Is(err, c.want) {
			t.Fatalf("%s: %v is not %v", c.name, err, c.want)
		}
	}
	_ = parent
}
