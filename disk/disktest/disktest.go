// Package disktest is the conformance kit of disk layers, for tests: a
// format reader conforms when, for every layer of every image it opens,
//
//   - the layer's guest view (its ReadAt, with its backing chain merged)
//     equals `qemu-img convert -O raw` of that layer's file, byte for
//     byte, read whole in large chunks, in unaligned reads across cluster
//     boundaries and the end of the disk, and from several goroutines at
//     once; a read at Size gives 0, io.EOF, a short read at the end gives
//     io.EOF, a negative offset an error;
//   - Size equals the size of that conversion;
//   - Allocated equals the ranges `qemu-img map --output=json` reports
//     for the file at depth 0 with present true, and lies in [0, Size);
//   - Backing links the layers in the order of the chain.
//
// The reference is QEMU's own tools, run on the file the layer names
// (Layer.Name), with the layer's format given explicitly (-f), so the
// check never depends on probing. A new format costs one call of Check per
// fixture.
package disktest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
)

// Check runs the conformance checks on every layer of im (top first).
func Check(t *testing.T, im *disk.Image) {
	t.Helper()
	layers := im.Layers()
	if len(layers) == 0 || im.Top() != layers[0] || im.Size() != layers[0].Size() || im.Format() != layers[0].Format() {
		t.Fatalf("image %s: Top, Size or Format is not its first layer's", im)
	}
	for i, l := range layers {
		var below disk.Layer
		if i+1 < len(layers) {
			below = layers[i+1]
		}
		if l.Backing() != below {
			t.Errorf("layer %d %s: Backing is not layer %d", i, l.Name(), i+1)
		}
	}
	// The image's own ReadAt (with its small-read cache) against the top's
	// reference, then every layer's.
	ref := Reference(t, layers[0])
	checkReads(t, "image "+layers[0].Name(), im, im.Size(), ref)
	for i, l := range layers {
		t.Run(fmt.Sprintf("layer%d", i), func(t *testing.T) { CheckLayer(t, l) })
	}
}

// CheckLayer checks one layer: its guest view and its allocation.
func CheckLayer(t *testing.T, l disk.Layer) {
	t.Helper()
	ref := Reference(t, l)
	checkReads(t, l.Name(), l, l.Size(), ref)
	got, err := l.Allocated(context.Background())
	if err != nil {
		t.Fatalf("%s: Allocated: %v", l.Name(), err)
	}
	if r := got.Ranges(); len(r) > 0 && (r[0].Start < 0 || r[len(r)-1].End > l.Size()) {
		t.Errorf("%s: Allocated %v outside [0,%d)", l.Name(), got, l.Size())
	}
	if want := QemuMap(t, l.Name(), l.Format()); !rangeset.Equal(got, want) {
		t.Errorf("%s: Allocated\n got  %v\n want %v (qemu-img map depth 0 present)", l.Name(), got, want)
	}
}

var (
	refMu sync.Mutex
	refs  = map[string]string{}
)

// Reference returns the path of `qemu-img convert -O raw` of the layer's
// file (made once per test binary, in a temporary folder removed when the
// test that made it ends).
func Reference(t testing.TB, l disk.Layer) string {
	t.Helper()
	qemuImg := fixture.Tool(t, "qemu-img")
	refMu.Lock()
	defer refMu.Unlock()
	key := l.Format() + ":" + l.Name()
	if p, ok := refs[key]; ok {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	out := filepath.Join(t.TempDir(), "ref.raw")
	cmd := exec.Command(qemuImg, "convert", "-f", l.Format(), "-O", "raw", l.Name(), out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v\n%s", l.Name(), err, b)
	}
	refs[key] = out
	return out
}

// QemuMap is the set of guest ranges `qemu-img map --output=json` reports
// at depth 0 with present true: what the file holds itself.
func QemuMap(t testing.TB, path, format string) rangeset.Set {
	t.Helper()
	qemuImg := fixture.Tool(t, "qemu-img")
	b, err := exec.Command(qemuImg, "map", "-f", format, "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img map %s: %v", path, err)
	}
	var ents []struct {
		Start   int64 `json:"start"`
		Length  int64 `json:"length"`
		Depth   int   `json:"depth"`
		Present *bool `json:"present"`
	}
	if err := json.Unmarshal(b, &ents); err != nil {
		t.Fatalf("qemu-img map %s: %v\n%s", path, err, b)
	}
	var s rangeset.Set
	for _, e := range ents {
		if e.Present == nil {
			t.Fatalf("qemu-img map %s: no present field", path)
		}
		if e.Depth == 0 && *e.Present {
			s.Add(e.Start, e.Start+e.Length)
		}
	}
	return s
}

// checkReads compares r (size bytes) with the reference file.
func checkReads(t *testing.T, name string, r io.ReaderAt, size int64, refPath string) {
	t.Helper()
	ref, err := os.Open(refPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	st, err := ref.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size {
		t.Fatalf("%s: Size = %d, qemu-img convert gives %d bytes", name, size, st.Size())
	}
	// want reads the reference (from any goroutine: a read error of the
	// reference gives bytes that cannot match, reported as a difference).
	want := func(off int64, n int) []byte {
		b := make([]byte, n)
		if k, err := ref.ReadAt(b, off); k < n || (err != nil && !errors.Is(err, io.EOF)) {
			return nil
		}
		return b
	}
	// The whole disk in 4 MiB chunks (the scan's block size).
	const chunk = 4 << 20
	buf := make([]byte, chunk)
	for off := int64(0); off < size; off += chunk {
		n, err := r.ReadAt(buf, off)
		end := min(off+chunk, size)
		if int64(n) != end-off || (err != nil && !(errors.Is(err, io.EOF) && end == size)) {
			t.Fatalf("%s: ReadAt(len %d, %d) = %d, %v", name, chunk, off, n, err)
		}
		if w := want(off, n); w == nil || !bytes.Equal(buf[:n], w) {
			t.Fatalf("%s: chunk at %d differs from qemu-img convert", name, off)
		}
	}
	// Unaligned reads across cluster boundaries and the end, from several
	// goroutines at once.
	if size > 0 {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var first error
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(g), uint64(size)))
				for i := range 100 {
					off := rng.Int64N(size)
					n := 1 + rng.IntN(8192)
					if i%4 == 0 {
						n = rng.IntN(600 << 10)
					}
					if i%10 == 0 {
						off = max(size-int64(n/2), 0)
					}
					p := make([]byte, n)
					got, err := r.ReadAt(p, off)
					wantN := int(min(int64(n), size-off))
					bad := ""
					switch {
					case got != wantN || (wantN < n) != errors.Is(err, io.EOF) || (err != nil && !errors.Is(err, io.EOF)):
						bad = fmt.Sprintf("ReadAt(len %d, %d) = %d, %v; want %d", n, off, got, err, wantN)
					case got > 0 && !bytes.Equal(p[:got], want(off, got)):
						bad = fmt.Sprintf("ReadAt(len %d, %d) differs from qemu-img convert", n, off)
					}
					if bad != "" {
						mu.Lock()
						if first == nil {
							first = errors.New(bad)
						}
						mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		if first != nil {
			t.Fatalf("%s: %v", name, first)
		}
	}
	if n, err := r.ReadAt(make([]byte, 10), size); n != 0 || err != io.EOF {
		t.Fatalf("%s: ReadAt at Size = %d, %v; want 0, EOF", name, n, err)
	}
	if _, err := r.ReadAt(make([]byte, 10), -1); err == nil {
		t.Fatalf("%s: ReadAt(-1) succeeded", name)
	}
}
