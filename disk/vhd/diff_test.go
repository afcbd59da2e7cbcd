package vhd_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/vhd"
	"github.com/vmscope/vmscope/internal/imgtest"
)

// parentCopy copies the dynamic VHD fixture into dir as parent.vhd and
// returns its path and its guest bytes.
func parentCopy(t *testing.T, dir string) (string, []byte) {
	return imgtest.ParentCopy(t, "dynamic.vhd", dir, "parent.vhd")
}

var diffWrites = []imgtest.Write{
	{Off: 2<<20 + 0, Len: 4096, Fill: 0xc1},     // part of block 1
	{Off: 2<<20 + 51200, Len: 2048, Fill: 0xc2}, // more of block 1
	{Off: 10 << 20, Len: 2 << 20, Fill: 0xc3},   // all of block 5
	{Off: 63<<20 + 512, Len: 512, Fill: 0xc4},   // one sector of the last block
}

// TestDifferencing: a differencing VHD written in Go (qemu-img cannot)
// over the dynamic fixture reads as the parent with the child's sectors
// over it, its Allocated is exactly the sectors written (the sector
// bitmaps), and the copy-on-write dirty source of the chain is that set.
func TestDifferencing(t *testing.T) {
	for _, loc := range []map[string]string{
		{"W2ru": `.\parent.vhd`},
		{"W2ku": "/nonexistent/parent.vhd", "W2ru": "parent.vhd"},
		{"W2ku": "PARENT"},            // replaced by the absolute path below
		{"W2ku": `C:\vms\parent.vhd`}, // another host's: the Unicode name's base name
	} {
		dir := t.TempDir()
		parent, raw := parentCopy(t, dir)
		if loc["W2ku"] == "PARENT" {
			loc["W2ku"] = parent
		}
		child := filepath.Join(dir, "child.vhd")
		imgtest.WriteVHDChild(t, child, imgtest.VHDChild{Parent: parent, Locators: loc, Writes: diffWrites})
		want, wantAlloc := imgtest.Expect(raw, diffWrites)

		im, err := disk.Open(child)
		if err != nil {
			t.Fatalf("%v: %v", loc, err)
		}
		if ls := im.Layers(); ls[0].(*vhd.Layer).Footer.DiskType != vhd.TypeDifferencing {
			t.Fatalf("%v: disk type %d", loc, ls[0].(*vhd.Layer).Footer.DiskType)
		}
		// Unaligned reads across the written sectors.
		imgtest.CheckChild(t, im, parent, want, wantAlloc, []int64{2<<20 - 100, 2<<20 + 4000, 2<<20 + 51000, 12<<20 - 7, 63<<20 + 1000}, loc)
		im.Close()
	}
}

// TestDifferencingChainErrors: a parent with another unique ID, a missing
// parent and a child naming itself are chain errors naming the child.
func TestDifferencingChainErrors(t *testing.T) {
	dir := t.TempDir()
	parent, _ := parentCopy(t, dir)
	other := [16]byte{1, 2, 3}
	cases := map[string]imgtest.VHDChild{
		"other id": {Parent: parent, ParentID: &other, Locators: map[string]string{"W2ru": "parent.vhd"}},
		"missing":  {Parent: parent, Locators: map[string]string{"W2ru": "gone.vhd"}},
		"loop":     {Parent: parent, Locators: map[string]string{"W2ru": "child.vhd"}},
	}
	for name, c := range cases {
		child := filepath.Join(dir, "child.vhd")
		os.Remove(child)
		imgtest.WriteVHDChild(t, child, c)
		if name == "missing" {
			// The Unicode name is the last resort: hide the parent.
			os.Rename(parent, parent+".hidden")
		}
		im, err := disk.Open(child)
		if name == "missing" {
			os.Rename(parent+".hidden", parent)
		}
		imgtest.CheckChainError(t, name, im, err, disk.ErrChain)
	}
}
