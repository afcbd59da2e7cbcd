package qcow_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/disk/disktest"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/qcow"
)

// rchar is the number of bytes this process has read with read system
// calls (read, pread, ...) so far: /proc/self/io "rchar", whatever code
// made the calls.
func rchar(t testing.TB) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/io")
	if err != nil {
		fixture.Missing(t, "/proc/self/io: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "rchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no rchar in /proc/self/io")
	return 0
}

// allocatedBytes is the disk space the file takes (st_blocks).
func allocatedBytes(t testing.TB, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}

// scanAll reads every regular file of every volume as the scanner does:
// 4 workers, each reading whole files in 4 MiB blocks.
func scanAll(t *testing.T, im io.ReaderAt, size int64) int64 {
	d, err := fsparse.Open(im, size)
	if err != nil {
		t.Fatal(err)
	}
	files := make(chan fsparse.File)
	var total int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4<<20)
			for f := range files {
				for off := int64(0); off < f.Size(); off += int64(len(buf)) {
					n, err := f.ReadAt(buf, off)
					if err != nil && !errors.Is(err, io.EOF) {
						t.Error(err)
						return
					}
					mu.Lock()
					total += int64(n)
					mu.Unlock()
				}
			}
		}()
	}
	for _, v := range d.Volumes {
		err := v.Walk(context.Background(), ".", func(e fsparse.Entry, err error) error {
			if err != nil || e.Type != "file" {
				return err
			}
			f, err := v.OpenInode(e.Ino)
			if err != nil {
				return err
			}
			files <- f
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	close(files)
	wg.Wait()
	return total
}

// TestCompressedReadBytes: reading a whole compressed qcow2 image, and
// scanning every file of it, reads at most 1.2 times the file's allocated
// size from the file: each compressed cluster is read once, with one read
// of its exact extent (the bytes counted are every read system call of
// the process, /proc/self/io rchar).
func TestCompressedReadBytes(t *testing.T) {
	for _, name := range []string{"gpt-zlib.qcow2", "gpt-zstd.qcow2"} {
		t.Run(name, func(t *testing.T) {
			path := fixture.Path(t, name)
			alloc := allocatedBytes(t, path)
			limit := alloc * 12 / 10

			before := rchar(t)
			im, err := qcow.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4<<20)
			for off := int64(0); off < im.Size(); off += int64(len(buf)) {
				if _, err := im.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
			}
			im.Close()
			if got := rchar(t) - before; got > limit {
				t.Errorf("full read: %d bytes read from a file of %d allocated bytes (%.2fx, limit 1.2x)", got, alloc, float64(got)/float64(alloc))
			} else {
				t.Logf("full read: %d bytes read, file %d allocated bytes (%.2fx)", got, alloc, float64(got)/float64(alloc))
			}

			before = rchar(t)
			im, err = qcow.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			n := scanAll(t, im, im.Size())
			im.Close()
			got := rchar(t) - before
			if got > limit {
				t.Errorf("full scan (%d bytes of files): %d bytes read from a file of %d allocated bytes (%.2fx, limit 1.2x)", n, got, alloc, float64(got)/float64(alloc))
			} else {
				t.Logf("full scan (%d bytes of files): %d bytes read, file %d allocated bytes (%.2fx)", n, got, alloc, float64(got)/float64(alloc))
			}
			if n == 0 {
				t.Error("the scan read no file")
			}
		})
	}
}

// countingFile records every read of a file.
type countingFile struct {
	f     *os.File
	mu    sync.Mutex
	reads map[int64]int // offset -> reads at it
	calls int
}

func (c *countingFile) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.reads[off]++
	c.calls++
	c.mu.Unlock()
	return c.f.ReadAt(p, off)
}

// TestCompressedOneReadPerCluster: a full read of a compressed image from
// 4 goroutines makes at most one read per cluster the file holds (qemu-img
// map: present at depth 0) plus its L2 tables, and never reads one offset
// twice: one read of each compressed extent, inflated once.
func TestCompressedOneReadPerCluster(t *testing.T) {
	for _, name := range []string{"gpt-zlib.qcow2", "gpt-zstd.qcow2"} {
		t.Run(name, func(t *testing.T) {
			path := fixture.Path(t, name)
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			c := &countingFile{f: f, reads: map[int64]int{}}
			im, err := disk.New(c, st.Size(), nil, disk.WithName(path))
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			top := im.Top().(*qcow.Layer)
			c.mu.Lock()
			c.reads, c.calls = map[int64]int{}, 0 // the reads of the open
			c.mu.Unlock()
			readAll(t, im)
			present := disktest.QemuMap(t, path, qcow.Qcow2).Bytes()
			clusters := (present + int64(top.ClusterSize) - 1) / int64(top.ClusterSize)
			l2 := (top.VirtualSize + int64(top.ClusterSize)*int64(top.ClusterSize/8) - 1) / (int64(top.ClusterSize) * int64(top.ClusterSize/8))
			if int64(c.calls) > clusters+l2 {
				t.Errorf("%d reads for %d present clusters and at most %d L2 tables", c.calls, clusters, l2)
			}
			for off, n := range c.reads {
				if n > 1 {
					t.Errorf("offset %d read %d times", off, n)
					break
				}
			}
			t.Logf("%d reads, %d present clusters, <= %d L2 tables", c.calls, clusters, l2)
		})
	}
}

// BenchmarkCompressedRead reads the whole GPT fixture disk from 4
// goroutines in 4 MiB blocks (the scan's shape), freshly opened each time:
// raw, the same disk as zlib and as zstd compressed qcow2. Bytes/s are of
// the guest disk; file-B/op is what was read from the file.
func BenchmarkCompressedRead(b *testing.B) {
	for _, name := range []string{"gpt.img", "gpt-zlib.qcow2", "gpt-zstd.qcow2"} {
		b.Run(name, func(b *testing.B) {
			path := fixture.Path(b, name)
			var size int64
			before := rchar(b)
			for b.Loop() {
				im, err := disk.Open(path)
				if err != nil {
					b.Fatal(err)
				}
				size = im.Size()
				readAll(b, im)
				im.Close()
			}
			b.SetBytes(size)
			b.ReportMetric(float64(rchar(b)-before)/float64(b.N), "file-B/op")
		})
	}
}

// readAll reads the whole guest disk of im from 4 goroutines in 4 MiB
// blocks, the shape of a scan.
func readAll(t testing.TB, im *disk.Image) {
	t.Helper()
	size := im.Size()
	var wg sync.WaitGroup
	const chunk = 4 << 20
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunk)
			for off := int64(g) * chunk; off < size; off += 4 * chunk {
				if _, err := im.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
