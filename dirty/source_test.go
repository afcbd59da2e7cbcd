package dirty

import (
	"strings"
	"testing"

	"github.com/vmscope/vmscope/disk"
)

// sourceOf is the source the tests name: auto, cow, bitmap:NAME or hash.
func sourceOf(t *testing.T, im *disk.Image, name string) Source {
	t.Helper()
	var src Source
	var err error
	switch bm, isBitmap := strings.CutPrefix(name, "bitmap:"); {
	case name == "auto":
		src = Auto(im)
	case name == "cow":
		src, err = Cow(im)
	case isBitmap:
		src, err = Bitmap(im, bm)
	case name == "hash":
		src = Hash(im)
	default:
		t.Fatalf("no source %q", name)
	}
	if err != nil {
		t.Fatal(err)
	}
	return src
}
