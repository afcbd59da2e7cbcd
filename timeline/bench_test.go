package timeline

import (
	"context"
	"io"
	"os"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
)

// benchImage is the image of the timeline benchmarks: VMSCOPE_BENCH_IMAGE,
// else bench/.out/usr-del.img (made by bench/timeline.sh: this machine's
// /usr tree with deleted files). The benchmarks skip when it is missing:
// the 56,000-file image is built by the bench script, never by make test.
func benchImage(b *testing.B) string {
	p := os.Getenv("VMSCOPE_BENCH_IMAGE")
	if p == "" {
		p = "../bench/.out/usr-del.img"
	}
	if _, err := os.Stat(p); err != nil {
		b.Skipf("bench image %s missing (bash bench/timeline.sh makes it)", p)
	}
	return p
}

// BenchmarkTimeline is `vmscope timeline IMAGE` without the process:
// the live walk, the deleted names and orphans, and the body file.
func BenchmarkTimeline(b *testing.B) {
	p := benchImage(b)
	for b.Loop() {
		v, f := openBench(b, p)
		recs, _, err := Collect(context.Background(), v, ".", "", nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := WriteBody(io.Discard, recs); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

// BenchmarkScanDeleted is `vmscope ls -r --deleted IMAGE` without the
// process and the output.
func BenchmarkScanDeleted(b *testing.B) {
	p := benchImage(b)
	for b.Loop() {
		v, f := openBench(b, p)
		if _, err := v.ScanDeleted(context.Background(), "."); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

// openBench opens the image's filesystem as the commands do (through
// disk.Image and its cache, the view holding the inode tables); the
// caller closes the image.
func openBench(b *testing.B, p string) (*fsparse.Volume, io.Closer) {
	b.Helper()
	im, err := disk.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	d, err := fsparse.Open(im, im.Size())
	if err != nil {
		b.Fatal(err)
	}
	if len(d.Volumes) != 1 {
		b.Fatalf("%d volumes", len(d.Volumes))
	}
	v, err := d.Volumes[0].WithInodeTables(context.Background(), fsparse.TablesBudget)
	if err != nil {
		b.Fatal(err)
	}
	return v, im
}
