package snapshot_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

func lime(t testing.TB, m vmi.Memory) []byte {
	var b bytes.Buffer
	if err := snapshot.WriteLiME(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func newSnap(t testing.TB, b []byte) *snapshot.Snapshot {
	t.Helper()
	s, err := snapshot.New(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSynthetic checks every reader on small files built in Go: the same
// bytes and holes as the memory they were made from, and the saved vCPU.
func TestSynthetic(t *testing.T) {
	m := smallImage()
	kd := buildKdump(m, testCPU, []uint32{kdZlib, kdRaw, kdSnappy, kdLZO})
	files := map[string][]byte{
		"elf":       buildELF(m, testCPU),
		"kdump":     kd,
		"flattened": flatten(kd, 1000),
		"lime":      lime(t, m),
	}
	formats := map[string]snapshot.Format{"elf": snapshot.ELF, "kdump": snapshot.Kdump, "flattened": snapshot.Kdump, "lime": snapshot.LiME}
	for name, b := range files {
		s := newSnap(t, b)
		if s.Format() != formats[name] {
			t.Errorf("%s: format %v", name, s.Format())
		}
		if fmt.Sprint(s.Ranges()) != fmt.Sprint(m.ranges) {
			t.Errorf("%s: ranges %v, want %v", name, s.Ranges(), m.ranges)
		}
		for _, a := range []int64{0, 100, pg - 10, 3*pg - 100, 0x10000 - 50, 0x10000, 0x10000 + pg + 7, 0x12000 - 1, 0x20000} {
			want := make([]byte, 300)
			got := make([]byte, 300)
			wn, werr := m.ReadAt(want, a)
			n, err := s.ReadAt(got, a)
			var he, whe *vmi.HoleError
			if n != wn || !bytes.Equal(got[:n], want[:wn]) || (werr == nil) != (err == nil) ||
				(err != nil && (!errors.As(err, &he) || !errors.As(werr, &whe) || he.Addr != whe.Addr)) {
				t.Errorf("%s at %#x: %d bytes, err %v; want %d, %v", name, a, n, err, wn, werr)
			}
		}
		if name == "lime" {
			continue
		}
		cpus := s.CPUs()
		if len(cpus) != 1 {
			t.Fatalf("%s: %d CPUs", name, len(cpus))
		}
		c := cpus[0]
		want := testCPU
		want.GSBase = want.GS.Base
		want.HasGPRs, want.HasControl, want.HasKernelGSBase = true, true, true
		if c != want {
			t.Errorf("%s: CPU\n%+v\nwant\n%+v", name, c, want)
		}
	}
	var raw bytes.Buffer
	if err := snapshot.WriteRaw(&raw, m); err != nil {
		t.Fatal(err)
	}
	if raw.Len() != 0x12000 || !bytes.Equal(raw.Bytes()[:3*pg], m.data[0]) || !bytes.Equal(raw.Bytes()[0x10000:], m.data[1]) {
		t.Errorf("raw of %d bytes", raw.Len())
	}

	unknown := newSnap(t, buildKdumpWith(m, testCPU, func(_ int, page []byte) ([]byte, uint32) { return page, 0x40 }))
	if _, err := unknown.ReadAt(make([]byte, 8), 0); !errors.Is(err, snapshot.ErrUnsupported) {
		t.Errorf("page of unknown compression: %v, want ErrUnsupported", err)
	}
}

// TestTruncated opens every prefix of each format at many lengths: an
// error wrapping a sentinel or a snapshot whose reads fail cleanly.
func TestTruncated(t *testing.T) {
	m := smallImage()
	for name, b := range seeds(t) {
		for l := 0; l < len(b); l += 1 + l/16 {
			check(t, b[:l])
		}
		_ = name
	}
	_ = m
}

func seeds(t testing.TB) map[string][]byte {
	m := smallImage()
	kd := buildKdump(m, testCPU, []uint32{kdZlib, kdRaw, kdSnappy, kdLZO})
	return map[string][]byte{
		"elf":       buildELF(m, testCPU),
		"kdump":     kd,
		"flattened": flatten(kd, 3000),
		"lime":      lime(t, m),
	}
}

// check is the invariant every input must keep: no panic; an error wraps
// ErrCorrupt or ErrUnsupported; an opened snapshot has sorted disjoint
// ranges and reads that succeed or fail with a sentinel; allocation stays
// within a bound of the input size.
func check(t *testing.T, b []byte) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s, err := snapshot.New(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		if !errors.Is(err, snapshot.ErrCorrupt) && !errors.Is(err, snapshot.ErrUnsupported) {
			t.Fatalf("error wraps no sentinel: %v", err)
		}
		return
	}
	rs := s.Ranges()
	for i, r := range rs {
		if r.Size == 0 || (i > 0 && r.Start < rs[i-1].End()) {
			t.Fatalf("ranges not sorted and disjoint: %v", rs)
		}
	}
	buf := make([]byte, 64)
	for i, r := range rs {
		if i >= 64 {
			break
		}
		for _, a := range []vmi.PA{r.Start, r.End() - 1} {
			if _, err := s.ReadAt(buf, int64(a)); err != nil &&
				!errors.Is(err, vmi.ErrNotPresent) && !errors.Is(err, snapshot.ErrCorrupt) && !errors.Is(err, snapshot.ErrUnsupported) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("read at %#x: error wraps no sentinel: %v", uint64(a), err)
			}
		}
	}
	s.CPUs()
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 16<<20+64*uint64(len(b)) {
		t.Fatalf("allocated %d bytes for a %d-byte input", d, len(b))
	}
}

func FuzzELF(f *testing.F) {
	f.Add(seeds(f)["elf"])
	f.Fuzz(check)
}

func FuzzKdump(f *testing.F) {
	s := seeds(f)
	f.Add(s["kdump"])
	f.Add(s["flattened"])
	f.Fuzz(check)
}

func FuzzLiME(f *testing.F) {
	f.Add(seeds(f)["lime"])
	f.Fuzz(check)
}

// TestSyntheticCompressed makes sure the synthetic kdump really holds
// compressed pages (so TestSynthetic covers zlib, snappy and LZO).
func TestSyntheticCompressed(t *testing.T) {
	m := smallImage()
	for _, c := range []uint32{kdZlib, kdSnappy, kdLZO} {
		if b := buildKdump(m, testCPU, []uint32{c}); len(b) >= len(buildKdump(m, testCPU, []uint32{kdRaw})) {
			t.Errorf("compression %d: no page compressed", c)
		}
	}
}
