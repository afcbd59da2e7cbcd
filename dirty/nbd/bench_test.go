package nbd

import (
	"context"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// BenchmarkReadVsNbdcopy reads a 256 MiB qcow2 export (every byte data)
// from qemu-nbd with this client (4 readers of 4 MiB) and, in the same
// run, with nbdcopy (libnbd) to null:, and reports both rates and their
// ratio (client/nbdcopy).
func BenchmarkReadVsNbdcopy(b *testing.B) {
	dir := b.TempDir()
	img := filepath.Join(dir, "b.qcow2")
	fixture.Run(b, dir, "qemu-img", "create", "-q", "-f", "qcow2", img, "256M")
	fixture.Run(b, dir, "qemu-io", "-c", "write -P 0x61 0 256M", img)
	sock := serve(b, img)
	c := dial(b, sock)
	size := c.Size()
	nbdcopy := fixture.Tool(b, "nbdcopy")
	var ours, theirs time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		var wg sync.WaitGroup
		const chunk = 4 << 20
		next := make(chan int64, size/chunk+1)
		for off := int64(0); off < size; off += chunk {
			next <- off
		}
		close(next)
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, chunk)
				for off := range next {
					if _, err := c.ReadAtContext(context.Background(), buf, off); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		ours += time.Since(t0)
		t1 := time.Now()
		if out, err := exec.Command(nbdcopy, "nbd+unix:///ex?socket="+sock, "null:").CombinedOutput(); err != nil {
			b.Fatalf("nbdcopy: %v\n%s", err, out)
		}
		theirs += time.Since(t1)
	}
	mib := float64(size) * float64(b.N) / (1 << 20)
	b.ReportMetric(mib/ours.Seconds(), "MiB/s")
	b.ReportMetric(mib/theirs.Seconds(), "nbdcopy-MiB/s")
	b.ReportMetric(theirs.Seconds()/ours.Seconds(), "ratio")
}
