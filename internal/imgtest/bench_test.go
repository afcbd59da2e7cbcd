package imgtest_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/disk"
	_ "github.com/vmscope/vmscope/disk/vhd"
	_ "github.com/vmscope/vmscope/disk/vhdx"
	_ "github.com/vmscope/vmscope/disk/vmdk"
	_ "github.com/vmscope/vmscope/qcow"
)

// BenchmarkReadImage reads each image of $VMSCOPE_BENCH_IMAGES (a
// comma-separated list; bench/images.sh sets it) whole, in the 4 MiB
// chunks of a scan, through disk.Open: vmscope's side of bench/images.sh,
// which times `qemu-img convert -O raw` of the same files in the same run.
// With $VMSCOPE_BENCH_DUMP set, the guest view read is also written there
// (bench/images.sh compares it with qemu-img convert -O raw).
func BenchmarkReadImage(b *testing.B) {
	list := os.Getenv("VMSCOPE_BENCH_IMAGES")
	if list == "" {
		b.Skip("VMSCOPE_BENCH_IMAGES not set (run bench/images.sh)")
	}
	for _, p := range strings.Split(list, ",") {
		b.Run(filepath.Base(p), func(b *testing.B) {
			im, err := disk.Open(p)
			if err != nil {
				b.Fatal(err)
			}
			defer im.Close()
			var dump *os.File
			if d := os.Getenv("VMSCOPE_BENCH_DUMP"); d != "" {
				if dump, err = os.Create(d); err != nil {
					b.Fatal(err)
				}
				defer dump.Close()
			}
			buf := make([]byte, 4<<20)
			b.SetBytes(im.Size())
			for b.Loop() {
				for off := int64(0); off < im.Size(); off += int64(len(buf)) {
					n, err := im.ReadAt(buf, off)
					if err != nil && off+int64(len(buf)) < im.Size() {
						b.Fatal(err)
					}
					if dump != nil {
						if _, err := dump.WriteAt(buf[:n], off); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
		})
	}
}
