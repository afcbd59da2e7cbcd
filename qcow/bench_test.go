package qcow

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

var (
	benchOnce sync.Once
	benchDir  string
)

// benchImages builds a 256 MiB qcow2 full of data, its zstd twin, and a
// sparse 64 GiB qcow2 with 2048 scattered clusters (for Allocated).
func benchImages(b *testing.B) string {
	qemuImg := fixture.Tool(b, "qemu-img")
	fixture.Tool(b, "qemu-io")
	benchOnce.Do(func() {
		d, err := os.MkdirTemp("", "qcow-bench-")
		if err != nil {
			b.Fatal(err)
		}
		fixDirs = append(fixDirs, d)
		p := func(n string) string { return filepath.Join(d, n) }
		run(b, qemuImg, "create", "-f", "raw", p("big.raw"), "256M")
		var cmds []string
		for i := range 256 {
			cmds = append(cmds, fmt.Sprintf("write -P %d %dM 1M", i, i))
		}
		qio(b, "raw", p("big.raw"), cmds...)
		run(b, qemuImg, "convert", "-O", "qcow2", p("big.raw"), p("big.qcow2"))
		run(b, qemuImg, "convert", "-O", "qcow2", "-c", "-o", "compression_type=zstd", p("big.raw"), p("big-zstd.qcow2"))
		os.Remove(p("big.raw"))
		run(b, qemuImg, "create", "-f", "qcow2", p("sparse.qcow2"), "64G")
		cmds = cmds[:0]
		for i := range 2048 {
			cmds = append(cmds, fmt.Sprintf("write -P 1 %d 4k", int64(i)*(32<<20)+int64(i%7)*65536))
		}
		qio(b, "qcow2", p("sparse.qcow2"), cmds...)
		benchDir = d
	})
	if benchDir == "" {
		b.Fatal("bench images: build failed earlier")
	}
	return benchDir
}

func benchSequential(b *testing.B, name string) {
	im, err := Open(filepath.Join(benchImages(b), name))
	if err != nil {
		b.Fatal(err)
	}
	defer im.Close()
	buf := make([]byte, 1<<20)
	b.SetBytes(im.Size())
	b.ResetTimer()
	for b.Loop() {
		for off := int64(0); off < im.Size(); off += int64(len(buf)) {
			if _, err := im.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkSequentialRead(b *testing.B) {
	b.Run("qcow2", func(b *testing.B) { benchSequential(b, "big.qcow2") })
	b.Run("zstd", func(b *testing.B) { benchSequential(b, "big-zstd.qcow2") })
}

func BenchmarkConcurrentRead(b *testing.B) {
	for _, name := range []string{"big.qcow2", "big-zstd.qcow2"} {
		b.Run(name, func(b *testing.B) {
			im, err := Open(filepath.Join(benchImages(b), name))
			if err != nil {
				b.Fatal(err)
			}
			defer im.Close()
			const chunk = 1 << 20
			b.SetBytes(chunk)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, chunk)
				rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
				for pb.Next() {
					off := rng.Int64N(im.Size()/chunk) * chunk
					if _, err := im.ReadAt(buf, off); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkAllocated(b *testing.B) {
	im, err := Open(filepath.Join(benchImages(b), "sparse.qcow2"))
	if err != nil {
		b.Fatal(err)
	}
	defer im.Close()
	l := info(im.Layers()[0])
	b.ResetTimer()
	for b.Loop() {
		s, err := l.Allocated(context.Background())
		if err != nil || s.Len() != 2048 {
			b.Fatalf("%d ranges, %v", s.Len(), err)
		}
	}
}
