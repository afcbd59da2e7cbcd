package snapshot_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi/snapshot"
)

// lzoEncode is a small LZO1X encoder for the synthetic kdump files: greedy
// matches (M3, distance up to 16 KiB, found by brute force) and literal
// runs, ended by the M4 end-of-stream marker, following the instruction
// rules of the kernel's Documentation/staging/lzo.rst. QEMU's and
// makedumpfile's own LZO pages are read by the guest fixture tests.
func lzoEncode(src []byte) []byte {
	var out []byte
	lit := 0     // start of the pending literal run
	lastOp := -1 // index in out of the last match's second distance byte; -1 before any match
	literals := func(end int) {
		n := end - lit
		if n == 0 {
			return
		}
		switch {
		case lastOp < 0 && len(out) == 0 && n <= 238:
			out = append(out, byte(17+n)) // first byte: a literal run
		case lastOp >= 0 && n <= 3:
			out[lastOp-1] |= byte(n) // the S bits of the match before
		case n <= 18:
			out = append(out, byte(n-3))
		default:
			out = append(out, 0)
			r := n - 18
			for ; r > 255; r -= 255 {
				out = append(out, 0)
			}
			out = append(out, byte(r))
		}
		out = append(out, src[lit:end]...)
		lit = end
	}
	for i := 0; i < len(src); {
		best, dist := 0, 0
		for d := 1; d <= i && d <= 16384; d++ {
			l := 0
			for i+l < len(src) && src[i+l] == src[i+l-d] {
				l++
			}
			if l > best {
				best, dist = l, d
			}
		}
		if best < 4 {
			i++
			continue
		}
		literals(i)
		if best <= 33 {
			out = append(out, 0x20|byte(best-2))
		} else {
			out = append(out, 0x20)
			r := best - 33
			for ; r > 255; r -= 255 {
				out = append(out, 0)
			}
			out = append(out, byte(r))
		}
		v := (dist - 1) << 2
		out = append(out, byte(v), byte(v>>8))
		lastOp = len(out) - 1
		i += best
		lit = i
	}
	literals(len(src))
	return append(out, 0x11, 0, 0)
}

// TestLZOEncoder checks the test encoder against the decoder on pages
// that need every instruction it writes, and that it really compresses.
func TestLZOEncoder(t *testing.T) {
	for name, page := range map[string][]byte{
		"zeros":   make([]byte, pg),
		"seeds0":  seedPages(5)[0],
		"seeds4":  seedPages(5)[4],
		"pattern": bytes.Repeat([]byte("vmscope LZO page "), pg/17+1)[:pg],
	} {
		enc := lzoEncode(page)
		if name == "zeros" && len(enc) > 64 {
			t.Errorf("%s: %d bytes: nothing compressed", name, len(enc))
		}
		b := buildKdumpPages(t, [][]byte{page}, enc)
		s := newSnap(t, b)
		got := make([]byte, pg)
		if _, err := s.ReadAt(got, 0); err != nil || !bytes.Equal(got, page) {
			t.Errorf("%s: err %v, equal %v", name, err, bytes.Equal(got, page))
		}
	}
}

// buildKdumpPages makes a one-page kdump whose page data is enc, flagged LZO.
func buildKdumpPages(t testing.TB, pages [][]byte, enc []byte) []byte {
	t.Helper()
	m := &memImage{ranges: rangesOf(len(pages)), data: [][]byte{bytes.Join(pages, nil)}}
	return buildKdumpWith(m, testCPU, func(int, []byte) ([]byte, uint32) { return enc, kdLZO })
}

// TestLZOBad checks that damaged LZO pages are refused as corrupt, with no
// panic: truncated, a match reaching before the page, a stream that
// decodes to less or more than a page, and trailing bytes.
func TestLZOBad(t *testing.T) {
	page := bytes.Repeat([]byte("0123456789abcdef"), pg/16)
	good := lzoEncode(page)
	short := lzoEncode(page[:pg-1])
	long := lzoEncode(append(append([]byte(nil), page...), 'x'))
	before := append([]byte{17 + 4, 'a', 'b', 'c', 'd', 0x20 | 5, 0xfc, 0xff}, 0x11, 0, 0) // distance 16384 after 4 bytes
	cases := map[string][]byte{
		"truncated": good[:len(good)-2],
		"cut":       good[:len(good)/2],
		"before":    before,
		"short":     short,
		"long":      long,
		"trailing":  append(append([]byte(nil), good...), 0),
		"empty3":    {0, 0, 0},
	}
	for name, enc := range cases {
		b := buildKdumpPages(t, [][]byte{page}, enc)
		s := newSnap(t, b)
		_, err := s.ReadAt(make([]byte, 8), 0)
		if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), "LZO page") {
			t.Errorf("%s: err %v, want an LZO ErrCorrupt", name, err)
		}
	}
}

// FuzzLZOPage feeds arbitrary bytes to the reader as the LZO data of a
// page: no panic; a read returns the whole page or an error wrapping
// ErrCorrupt; the decoder writes nothing outside the page (the page read
// back twice is the same).
func FuzzLZOPage(f *testing.F) {
	for _, p := range seedPages(3) {
		f.Add(lzoEncode(p))
	}
	f.Add([]byte{0x11, 0, 0})
	f.Add([]byte{17 + 4, 'a', 'b', 'c', 'd', 0x20 | 5, 0xfc, 0xff, 0x11, 0, 0})
	f.Fuzz(func(t *testing.T, enc []byte) {
		if len(enc) == 0 || len(enc) > pg {
			return // the descriptor check refuses these before the decoder
		}
		s := newSnap(t, buildKdumpPages(t, [][]byte{make([]byte, pg)}, enc))
		got := make([]byte, pg)
		n, err := s.ReadAt(got, 0)
		if err != nil {
			if !errors.Is(err, snapshot.ErrCorrupt) {
				t.Fatalf("error wraps no ErrCorrupt: %v", err)
			}
			return
		}
		if n != pg {
			t.Fatalf("read %d bytes, no error", n)
		}
		again := make([]byte, pg)
		if _, err := s.ReadAt(again, 0); err != nil || !bytes.Equal(got, again) {
			t.Fatalf("second read differs: %v", err)
		}
	})
}

// FuzzLZORoundTrip encodes arbitrary pages with the test encoder and
// checks that the reader gives them back.
func FuzzLZORoundTrip(f *testing.F) {
	f.Add([]byte("abcabcabcabc"), uint16(0))
	f.Add(seedPages(1)[0][:512], uint16(3))
	f.Fuzz(func(t *testing.T, data []byte, rep uint16) {
		page := make([]byte, pg)
		for i := 0; len(data) > 0 && i < pg; i += len(data) + int(rep%64) {
			copy(page[i:], data)
		}
		enc := lzoEncode(page)
		if len(enc) > pg {
			return // stored raw by a writer
		}
		s := newSnap(t, buildKdumpPages(t, [][]byte{page}, enc))
		got := make([]byte, pg)
		if _, err := s.ReadAt(got, 0); err != nil || !bytes.Equal(got, page) {
			t.Fatalf("round trip: err %v, equal %v", err, bytes.Equal(got, page))
		}
	})
}
