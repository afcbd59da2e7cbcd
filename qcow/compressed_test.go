package qcow

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// firstCompressed finds the first compressed L2 entry of a qcow2 file:
// the entry's file offset, its value and its guest offset.
func firstCompressed(t *testing.T, img []byte) (at int64, e uint64, guest int64) {
	t.Helper()
	be := binary.BigEndian
	cs := int64(1) << be.Uint32(img[20:])
	l1 := int64(be.Uint64(img[40:]))
	for i := int64(0); i < int64(be.Uint32(img[36:])); i++ {
		l2 := int64(be.Uint64(img[l1+i*8:]) & l1OffsetMask)
		if l2 == 0 {
			continue
		}
		for j := int64(0); j < cs/8; j++ {
			if e := be.Uint64(img[l2+j*8:]); e&l2Compressed != 0 {
				return l2 + j*8, e, (i*cs/8 + j) * cs
			}
		}
	}
	t.Fatal("no compressed cluster")
	return 0, 0, 0
}

// TestCompressedErrors: a compressed cluster whose data is garbage, or
// whose extent lies outside the file, gives ErrCorrupt naming the
// structure and its offset, never a panic or made-up bytes.
func TestCompressedErrors(t *testing.T) {
	d := fixtures(t)
	for _, name := range []string{"zlib.qcow2", "zstd.qcow2"} {
		img, err := os.ReadFile(filepath.Join(d, name))
		if err != nil {
			t.Fatal(err)
		}
		at, e, guest := firstCompressed(t, img)
		h := &header{clusterBits: binary.BigEndian.Uint32(img[20:])}
		host, n := h.compressedExtent(e)
		if host <= 0 || n <= 0 || host+n > int64(len(img))+511 {
			t.Fatalf("%s: compressed extent %d+%d in a %d-byte file", name, host, n, len(img))
		}

		garbage := append([]byte(nil), img...)
		for i := host; i < min(host+n, int64(len(garbage))); i++ {
			garbage[i] = byte(i*13 + 7)
		}
		outside := append([]byte(nil), img...)
		binary.BigEndian.PutUint64(outside[at:], l2Compressed|uint64(len(img)+4096))

		for _, c := range []struct {
			what string
			img  []byte
			off  int64
		}{{"compressed cluster", garbage, host}, {"L2 table entry", outside, at}} {
			p := filepath.Join(t.TempDir(), name)
			if err := os.WriteFile(p, c.img, 0o644); err != nil {
				t.Fatal(err)
			}
			im := mustOpen(t, p)
			buf := make([]byte, 4096)
			_, err := im.ReadAt(buf, guest)
			var fe *Error
			if !errors.Is(err, ErrCorrupt) || !errors.As(err, &fe) || fe.What != c.what || fe.Offset != c.off || fe.Path != p {
				t.Errorf("%s, %s: ReadAt = %v; want ErrCorrupt in %s at offset %d", name, c.what, err, c.what, c.off)
			}
			if _, err := im.ReadAt(buf, guest); err == nil || errors.Is(err, io.EOF) {
				t.Errorf("%s, %s: second read succeeded", name, c.what)
			}
		}
	}
}
