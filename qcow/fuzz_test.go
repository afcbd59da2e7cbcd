package qcow

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

var fuzzSeeds = []string{"small.qcow2", "small-zstd.qcow2", "small-v2-zlib.qcow2"}

func loadSeed(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "fuzz", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// isCategorized reports whether err wraps one of the package's sentinels.
func isCategorized(err error) bool {
	return errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnsupported) || errors.Is(err, ErrChain)
}

// checkImage opens path and exercises every entry point, asserting the
// invariants that hold for any input.
func checkImage(t *testing.T, path string) {
	im, err := Open(path, WithMaxChainDepth(4))
	if err != nil {
		if !isCategorized(err) {
			t.Fatalf("Open: error without a sentinel: %v", err)
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("Open: error is not an *Error: %v", err)
		}
		return
	}
	defer im.Close()
	size := im.Size()
	if size < 0 || size > maxVirtualSize {
		t.Fatalf("Size = %d", size)
	}
	buf := make([]byte, 64<<10)
	for off := int64(0); off < min(size, 1<<20); off += int64(len(buf)) {
		n, err := im.ReadAt(buf, off)
		if n < 0 || n > len(buf) {
			t.Fatalf("ReadAt n = %d", n)
		}
		if err != nil && !errors.Is(err, io.EOF) && !isCategorized(err) {
			t.Fatalf("ReadAt(%d): error without a sentinel: %v", off, err)
		}
	}
	if size > 0 {
		im.ReadAt(buf, size-1)
		im.ReadAt(buf, size/2)
	}
	for _, l := range im.Layers() {
		s, err := l.Allocated(context.Background())
		if err != nil {
			if !isCategorized(err) {
				t.Fatalf("Allocated: error without a sentinel: %v", err)
			}
			continue
		}
		if r := s.Ranges(); len(r) > 0 && (r[0].Start < 0 || r[len(r)-1].End > l.Size()) {
			t.Fatalf("Allocated %v outside [0,%d)", s, l.Size())
		}
	}
}

// FuzzHeader writes random bytes over the first cluster of a real qcow2
// image: Open must not panic, and must fail with a sentinel or give an image
// whose reads and allocation stay in bounds.
func FuzzHeader(f *testing.F) {
	for _, s := range fuzzSeeds {
		b := loadSeed(f, s)
		f.Add(b[:512], uint8(0))
		f.Add(b[:112], uint8(1))
	}
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"), uint8(2))
	f.Fuzz(func(t *testing.T, hdr []byte, seed uint8) {
		img := loadSeed(t, fuzzSeeds[int(seed)%len(fuzzSeeds)])
		copy(img, hdr[:min(len(hdr), 4096)])
		path := filepath.Join(t.TempDir(), "img.qcow2")
		if err := os.WriteFile(path, img, 0o644); err != nil {
			t.Fatal(err)
		}
		checkImage(t, path)
	})
}

// FuzzTables writes random bytes over the L1 table or an L2 table of a real
// qcow2 image: ReadAt and Allocated must never panic.
func FuzzTables(f *testing.F) {
	for i := range fuzzSeeds {
		f.Add(uint8(i), false, uint16(0), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		f.Add(uint8(i), true, uint16(8), []byte{0x80, 0, 0, 0, 0, 0, 0x10, 0x01})
		f.Add(uint8(i), true, uint16(0), []byte{0x40, 0, 0, 0, 0, 0, 0x50, 0x00, 0x7f})
	}
	f.Fuzz(func(t *testing.T, seed uint8, l2 bool, off uint16, data []byte) {
		img := loadSeed(t, fuzzSeeds[int(seed)%len(fuzzSeeds)])
		cs := int64(1) << binary.BigEndian.Uint32(img[20:])
		target := int64(binary.BigEndian.Uint64(img[40:])) // L1 table
		if l2 {
			target = int64(binary.BigEndian.Uint64(img[target:]) & l1OffsetMask)
		}
		at := target + int64(off)%cs
		if at <= 0 || at >= int64(len(img)) {
			return
		}
		copy(img[at:], data[:min(len(data), int(cs))])
		path := filepath.Join(t.TempDir(), "img.qcow2")
		if err := os.WriteFile(path, img, 0o644); err != nil {
			t.Fatal(err)
		}
		checkImage(t, path)
	})
}
