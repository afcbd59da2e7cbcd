package vmdk_test

import (
	"strings"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/disktest"
	"github.com/vmscope/vmscope/disk/vmdk"
	"github.com/vmscope/vmscope/internal/imgtest"
)

// TestConformance: every VMDK subformat qemu-img writes, a hand-written
// descriptor of FLAT and SPARSE extents and a delta chain read as
// qemu-img convert and allocate as qemu-img map (disktest), layer by layer.
func TestConformance(t *testing.T) {
	for _, c := range []struct {
		name, createType string
		layers           int
	}{
		{"sparse.vmdk", "monolithicSparse", 1},
		{"flat.vmdk", "monolithicFlat", 1},
		{"stream.vmdk", "streamOptimized", 1},
		{"split-sparse.vmdk", "twoGbMaxExtentSparse", 1},
		{"split-flat.vmdk", "twoGbMaxExtentFlat", 1},
		{"multi.vmdk", "monolithicFlat", 1},
		{"delta.vmdk", "monolithicSparse", 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			im, err := disk.Open(imgtest.Path(t, c.name))
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			top, ok := im.Top().(*vmdk.Layer)
			if !ok || top.CreateType() != c.createType || len(im.Layers()) != c.layers {
				t.Fatalf("%s: %T createType %q, %d layers; want %s, %d", c.name, im.Top(), top.CreateType(), len(im.Layers()), c.createType, c.layers)
			}
			if strings.HasPrefix(c.name, "split-") {
				imgtest.CheckLarge(t, im) // 2.1 GiB: disktest.Check runs in bench/images.sh
				return
			}
			disktest.Check(t, im)
		})
	}
}

// TestSleuthKit: the Sleuth Kit (libvmdk) as a second reader of the
// VMDKs it reads (it cannot follow a delta's parent nor the offset FLAT
// extents of multi.vmdk: img_cat fails on both).
func TestSleuthKit(t *testing.T) {
	for _, name := range []string{"sparse.vmdk", "flat.vmdk", "stream.vmdk"} {
		t.Run(name, func(t *testing.T) {
			im, err := disk.Open(imgtest.Path(t, name))
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			imgtest.SleuthKit(t, im, "vmdk")
		})
	}
}
