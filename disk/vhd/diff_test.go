package vhd_test

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
	"github.com/vmscope/vmscope/disk/vhd"
	"github.com/vmscope/vmscope/internal/imgtest"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// parentCopy copies the dynamic VHD fixture into dir as parent.vhd and
// returns its path and its guest bytes (ext4.img, which qemu-img compare
// found equal when the fixture was made: checked again by TestConformance).
func parentCopy(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	b, err := os.ReadFile(imgtest.Path(t, "dynamic.vhd"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "parent.vhd")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(imgtest.Path(t, "ext4.img"))
	if err != nil {
		t.Fatal(err)
	}
	return p, raw
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
		ls := im.Layers()
		if len(ls) != 2 || ls[1].Name() != parent || ls[0].(*vhd.Layer).Footer.DiskType != vhd.TypeDifferencing {
			t.Fatalf("%v: chain %s", loc, im)
		}
		got := make([]byte, im.Size())
		if n, err := im.ReadAt(got, 0); n != len(want) || (err != nil && !errors.Is(err, io.EOF)) {
			t.Fatalf("ReadAt = %d, %v", n, err)
		}
		if !bytes.Equal(got, want) {
			i := 0
			for got[i] == want[i] {
				i++
			}
			t.Fatalf("%v: bytes differ at %d (%#x, want %#x) from the parent with the child's writes", loc, i, got[i], want[i])
		}
		// Unaligned reads across the written sectors.
		for _, off := range []int64{2<<20 - 100, 2<<20 + 4000, 2<<20 + 51000, 12<<20 - 7, 63<<20 + 1000} {
			p := make([]byte, 9000)
			if _, err := ls[0].ReadAt(p, off); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if !bytes.Equal(p, want[off:min(off+9000, int64(len(want)))]) {
				t.Fatalf("%v: read at %d differs", loc, off)
			}
		}
		alloc, err := ls[0].Allocated(context.Background())
		if err != nil || !rangeset.Equal(alloc, wantAlloc) {
			t.Fatalf("%v: Allocated %v, %v; want %v", loc, alloc, err, wantAlloc)
		}
		d, err := cow.Dirty(context.Background(), im, 1)
		if err != nil || !rangeset.Equal(d, wantAlloc) {
			t.Fatalf("%v: cow.Dirty %v, %v; want %v", loc, d, err, wantAlloc)
		}
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
		if err == nil {
			im.Close()
			t.Fatalf("%s: opened", name)
		}
		imgtest.CheckError(t, name, err)
		if !errors.Is(err, disk.ErrChain) {
			t.Fatalf("%s: %v is not ErrChain", name, err)
		}
	}
}
