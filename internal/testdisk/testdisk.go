// Package testdisk opens disk images for the tests of the packages built on
// qcow and fsparse (fsparse's own tests cannot import it).
package testdisk

import (
	"testing"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/qcow"
)

// Open opens the image at path and its disk, or fails the test; the image
// is closed when the test ends (closing it earlier is harmless).
func Open(t testing.TB, path string) (*qcow.Image, *fsparse.Disk) {
	t.Helper()
	im, err := qcow.Open(path)
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
