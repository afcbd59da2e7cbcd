package vhdx_test

import (
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/vhdx"
	"github.com/vmscope/vmscope/internal/imgtest"
)

// parentCopy copies the dynamic VHDX fixture into dir as parent.vhdx and
// returns its path, its data write GUID and its guest bytes (ext4.img).
func parentCopy(t *testing.T, dir string) (string, string, []byte) {
	t.Helper()
	p, raw := imgtest.ParentCopy(t, "dynamic.vhdx", dir, "parent.vhdx")
	im, err := disk.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
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
		if !im.Layers()[0].(*vhdx.Layer).HasParent {
			t.Fatalf("%v: no parent in %s", keys, im)
		}
		imgtest.CheckChild(t, im, parent, want, wantAlloc, []int64{2<<20 - 100, 2<<20 + 4000, 2<<20 + 51000, 12<<20 - 7, 63<<20 + 1000, 40<<20 - 3}, keys)
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
		imgtest.CheckChainError(t, c.name, im, err, c.want)
	}
	_ = parent
}
