// Package testdisk opens disk images for the tests of the packages built on
// disk and fsparse (fsparse's own tests cannot import it).
package testdisk

import (
	"testing"

	"github.com/vmscope/vmscope/disk"
	_ "github.com/vmscope/vmscope/disk/vhd"  // VHD joins disk's format registry
	_ "github.com/vmscope/vmscope/disk/vhdx" // VHDX joins disk's format registry
	_ "github.com/vmscope/vmscope/disk/vmdk" // VMDK joins disk's format registry
	"github.com/vmscope/vmscope/fsparse"
	_ "github.com/vmscope/vmscope/qcow" // qcow2 joins disk's format registry
)

// Open opens the image at path and its disk, or fails the test; the image
// is closed when the test ends (closing it earlier is harmless).
func Open(t testing.TB, path string) (*disk.Image, *fsparse.Disk) {
	t.Helper()
	im, err := disk.Open(path)
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
