package lvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmerr"
)

const (
	testMDA     = 4096     // metadata area offset
	testMDASize = 64 << 10 // metadata area size
	testPE      = 1 << 20  // pe_start
	testSize    = 8 << 20  // device size
)

// pvImage builds a PV of testSize bytes: a label in sector 1, one data
// area from testPE, one metadata area at testMDA whose first raw location
// holds text at textOff (relative to the area; the text wraps past the
// area's end to just after its header, as LVM's circular buffer does).
func pvImage(uuid, text string, textOff uint64) []byte {
	return pvImageN(uuid, text, textOff, testSize)
}

// pvImageN is pvImage's first n bytes (at least the metadata area's end).
func pvImageN(uuid, text string, textOff uint64, n int) []byte {
	b := make([]byte, n)
	l := b[512:1024]
	copy(l, labelID)
	binary.LittleEndian.PutUint64(l[8:], 1)
	binary.LittleEndian.PutUint32(l[20:], 32)
	copy(l[24:], labelType)
	h := l[32:]
	copy(h, strings.ReplaceAll(uuid, "-", ""))
	binary.LittleEndian.PutUint64(h[32:], testSize)
	binary.LittleEndian.PutUint64(h[40:], testPE) // data area, then a zero entry
	binary.LittleEndian.PutUint64(h[72:], testMDA)
	binary.LittleEndian.PutUint64(h[80:], testMDASize)
	binary.LittleEndian.PutUint32(l[16:], CRC(initCRC, l[20:]))
	m := b[testMDA : testMDA+512]
	copy(m[4:], mdaMagic)
	binary.LittleEndian.PutUint32(m[20:], 1)
	binary.LittleEndian.PutUint64(m[24:], testMDA)
	binary.LittleEndian.PutUint64(m[32:], testMDASize)
	binary.LittleEndian.PutUint64(m[40:], textOff)
	binary.LittleEndian.PutUint64(m[48:], uint64(len(text)))
	binary.LittleEndian.PutUint32(m[56:], CRC(initCRC, []byte(text)))
	area := b[testMDA : testMDA+testMDASize]
	k := copy(area[textOff:], text)
	copy(area[512:], text[k:])
	binary.LittleEndian.PutUint32(m, CRC(initCRC, m[4:]))
	return b
}

const (
	uuidA = "AAAAAA-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa"
	uuidB = "BBBBBB-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb"
)

// vgText is a VG on two PVs (1 MiB extents, 7 on each): lv "a" is linear
// over both PVs (a on pv0 extents 0-1, then pv1 extent 3), "thin1" is thin,
// "mirror" raid1, "snap" a snapshot of "a" stored in "cow" (pv0 extent 5).
func vgText(seqno int, extra string) string {
	return fmt.Sprintf(`# comment
vg {
id = "VGVGVG-0000-0000-0000-0000-0000-000000"
seqno = %d
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
extent_size = 2048
physical_volumes {
pv0 {
id = %q
device = "/dev/sda2"
pe_start = 2048
pe_count = 7
dev_size = 16384
}
pv1 {
id = %q
pe_start = 2048
pe_count = 7
}
}
logical_volumes {
a {
id = "LVa"
status = ["READ", "WRITE", "VISIBLE"]
segment_count = 2
segment2 { start_extent = 2
extent_count = 1 type = "striped" stripe_count = 1 stripes = [ "pv1", 3 ] }
segment1 {
start_extent = 0
extent_count = 2
type = "striped"
stripe_count = 1
stripes = [
"pv0", 0
]
}
}
thin1 { id = "T" status = ["VISIBLE"] segment_count = 1 segment1 { start_extent = 0 extent_count = 4 type = "thin" thin_pool = "pool" } }
mirror { id = "M" status = ["VISIBLE"] segment_count = 1 segment1 { start_extent = 0 extent_count = 1 type = "raid1" } }
cow { id = "C" status = ["VISIBLE"] segment_count = 1 segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 5] } }
snapshot0 { id = "S" status = [] segment_count = 1 segment1 { start_extent = 0 extent_count = 2 type = "snapshot" chunk_size = 8 origin = "a" cow_store = "cow" } }
%s
}
}
contents = "Text Format Volume Group"
version = 1
description = "with a \"quote\""
`, seqno, uuidA, uuidB, extra)
}

func readPV(t *testing.T, b []byte, where string) *PV {
	t.Helper()
	pv, err := ReadPV(bytes.NewReader(b), int64(len(b)), where)
	if err != nil {
		t.Fatal(err)
	}
	return pv
}

// fill writes a recognisable pattern into extent e of a PV image.
func fill(b []byte, e int, tag byte) {
	p := b[testPE+e<<20 : testPE+(e+1)<<20]
	for i := range p {
		p[i] = tag ^ byte(i>>9)
	}
}

func TestTwoPVs(t *testing.T) {
	a := pvImage(uuidA, vgText(3, ""), 512)
	b := pvImage(uuidB, vgText(7, ""), 9000) // newer metadata on the second PV
	fill(a, 0, 1)
	fill(a, 1, 2)
	fill(b, 3, 3)
	pva, pvb := readPV(t, a, "p1"), readPV(t, b, "p2")
	if pva.UUID != uuidA || len(pva.Metadata) != 1 || pva.Metadata[0].Seqno != 3 || pva.Metadata[0].VGName != "vg" {
		t.Fatalf("pv a: %+v", pva)
	}
	vgs, probs := Assemble([]*PV{pva, pvb})
	if len(vgs) != 1 || len(probs) != 0 {
		t.Fatalf("%d VGs, problems %v", len(vgs), probs)
	}
	vg := vgs[0]
	if vg.Seqno != 7 || !strings.HasPrefix(vg.MetadataFrom, "p2 ") || vg.ExtentSize != 1<<20 {
		t.Errorf("VG seqno %d from %s extent %d", vg.Seqno, vg.MetadataFrom, vg.ExtentSize)
	}
	types := map[string]string{}
	for _, lv := range vg.LVs {
		types[lv.Name] = lv.Type
		if lv.Supported() != (lv.Type == "linear") {
			t.Errorf("%s (%s): supported %v", lv.Name, lv.Type, lv.Supported())
		}
		if !lv.Supported() && (!errors.Is(lv.Err, ErrUnsupported) || !strings.Contains(lv.Error, lv.Type)) {
			t.Errorf("%s: %v", lv.Name, lv.Err)
		}
	}
	if fmt.Sprint(types) != "map[a:linear cow:snapshot mirror:raid1 snapshot0:snapshot thin1:thin]" {
		t.Errorf("types %v", types)
	}
	lv := vg.LV("a")
	runs, err := lv.Map()
	if err != nil || len(runs) != 2 || runs[0].PV != pva || runs[0].PVOff != testPE || runs[1].PV != pvb || runs[1].PVOff != testPE+3<<20 || runs[1].Off != 2<<20 {
		t.Fatalf("runs %+v %v", runs, err)
	}
	r, _ := lv.Open()
	got := make([]byte, 3<<20)
	if n, err := r.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatal(n, err)
	}
	want := append(append([]byte{}, a[testPE:testPE+2<<20]...), b[testPE+3<<20:testPE+4<<20]...)
	if !bytes.Equal(got, want) {
		t.Error("LV bytes are not its extents")
	}
	if n, err := r.ReadAt(make([]byte, 10), 3<<20-5); n != 5 || err != io.EOF {
		t.Errorf("read over the end: %d %v", n, err)
	}
}

func TestWrappedText(t *testing.T) {
	text := vgText(1, "")
	off := uint64(testMDASize - 100) // 100 bytes at the end, the rest after the header
	pv := readPV(t, pvImage(uuidA, text, off), "disk")
	if len(pv.Metadata) != 1 || string(pv.Metadata[0].Text) != text {
		t.Fatalf("wrapped text not read back: %+v", pv.Metadata)
	}
}

// TestMissingPV: an LV on a PV that is absent is refused; the others read.
func TestMissingPV(t *testing.T) {
	vgs, probs := Assemble([]*PV{readPV(t, pvImage(uuidA, vgText(1, ""), 512), "img1")})
	if len(vgs) != 1 || len(probs) != 0 {
		t.Fatal(vgs, probs)
	}
	if lv := vgs[0].LV("a"); !errors.Is(lv.Err, ErrMissingPV) || !errors.Is(lv.Err, vmerr.ErrNotPresent) {
		t.Errorf("a: %v", lv.Err)
	}
	if !vgs[0].PVs[1].Missing || vgs[0].LV("cow").Type != "snapshot" {
		t.Errorf("pvs %+v", vgs[0].PVs)
	}
}

func wantFormatError(t *testing.T, what string, err error, off int64) {
	t.Helper()
	var fe *vmerr.FormatError
	if !errors.Is(err, ErrCorrupt) || !errors.Is(err, vmerr.ErrCorrupt) || !errors.As(err, &fe) {
		t.Errorf("%s: %v, want a corrupt FormatError", what, err)
		return
	}
	if off >= 0 && fe.Offset != off {
		t.Errorf("%s: error at offset %d, want %d (%v)", what, fe.Offset, off, err)
	}
}

// TestHostileHeaders: every damaged structure is an error naming it and
// its offset.
func TestHostileHeaders(t *testing.T) {
	good := pvImage(uuidA, vgText(1, ""), 512)
	resum := func(b []byte) { binary.LittleEndian.PutUint32(b[512+16:], CRC(initCRC, b[512+20:1024])) }
	remda := func(b []byte) { binary.LittleEndian.PutUint32(b[testMDA:], CRC(initCRC, b[testMDA+4:testMDA+512])) }
	cases := []struct {
		name string
		mut  func(b []byte)
		off  int64
		mda  bool // the error is a problem of the metadata area, not of the PV
	}{
		{"label checksum", func(b []byte) { b[600] ^= 1 }, 512, false},
		{"label sector field", func(b []byte) { b[512+8] = 3; resum(b) }, 512, false},
		{"PV header offset", func(b []byte) { binary.LittleEndian.PutUint32(b[512+20:], 500); resum(b) }, 512, false},
		{"endless area list", func(b []byte) {
			for p := 512 + 32 + 40; p+16 <= 1024; p += 16 {
				binary.LittleEndian.PutUint64(b[p:], 4096)
				binary.LittleEndian.PutUint64(b[p+8:], 1)
			}
			resum(b)
		}, 544, false},
		{"area outside the device", func(b []byte) { binary.LittleEndian.PutUint64(b[512+32+80:], 1<<40); resum(b) }, 544, false},
		{"mda checksum", func(b []byte) { b[testMDA+100] ^= 1 }, testMDA, true},
		{"mda start", func(b []byte) { binary.LittleEndian.PutUint64(b[testMDA+24:], 8192); remda(b) }, testMDA, true},
		{"raw location past the area", func(b []byte) { binary.LittleEndian.PutUint64(b[testMDA+48:], testMDASize); remda(b) }, testMDA + 40, true},
		{"raw location in the header", func(b []byte) { binary.LittleEndian.PutUint64(b[testMDA+40:], 100); remda(b) }, testMDA + 40, true},
		{"text checksum", func(b []byte) { b[testMDA+512+20] ^= 1 }, testMDA + 512, true},
	}
	for _, c := range cases {
		b := append([]byte(nil), good...)
		c.mut(b)
		pv, err := ReadPV(bytes.NewReader(b), int64(len(b)), "p1")
		if c.mda {
			if err != nil || len(pv.Problems) != 1 || len(pv.Metadata) != 0 {
				t.Errorf("%s: %v %+v", c.name, err, pv)
				continue
			}
			err = pv.Problems[0].Err
		}
		wantFormatError(t, c.name, err, c.off)
	}
	if _, err := ReadPV(bytes.NewReader(make([]byte, 4096)), 4096, "x"); !errors.Is(err, ErrNoLabel) {
		t.Errorf("zeros: %v", err)
	}
}

// TestHostileText: the parser's and the VG checks' bounds.
func TestHostileText(t *testing.T) {
	deep := strings.Repeat("a {\n", 40) + strings.Repeat("}\n", 40)
	texts := map[string]string{
		"deep":       deep,
		"long":       `x = "` + strings.Repeat("y", maxString+10) + `"`,
		"open":       `vg { a = 1`,
		"unclosed":   `a = "abc`,
		"dup":        "a = 1\na = 2",
		"many":       "l = [" + strings.Repeat("1,", maxElements) + "1]",
		"bad byte":   "a = @",
		"big number": "a = 99999999999999999999",
	}
	for name, txt := range texts {
		_, err := ParseConfig([]byte(txt), 1000)
		wantFormatError(t, name, err, -1)
	}
	vgErr := func(name, want, extra string, edit func(string) string) {
		t.Helper()
		text := vgText(1, extra)
		if edit != nil {
			text = edit(text)
		}
		vgs, probs := Assemble([]*PV{readPV(t, pvImage(uuidA, text, 512), "p1")})
		if len(vgs) != 0 || len(probs) == 0 {
			t.Errorf("%s: VGs %v problems %v", name, vgs, probs)
			return
		}
		wantFormatError(t, name, probs[0].Err, testMDA+512)
		if !strings.Contains(probs[0].Error(), want) {
			t.Errorf("%s: %v, want it to say %q", name, probs[0], want)
		}
	}
	vgErr("overlap", "both claim extent 1 of pv0", `b { id = "B" status = ["VISIBLE"] segment_count = 1 segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 1] } }`, nil)
	vgErr("outside the PV", "outside the PV", `b { id = "B" segment_count = 1 segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 6] } }`, nil)
	vgErr("unknown PV", "stripe on pv9", `b { id = "B" segment_count = 1 segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv9", 6] } }`, nil)
	vgErr("gap", "want a start at 0", `b { id = "B" segment_count = 1 segment1 { start_extent = 1 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 6] } }`, nil)
	vgErr("stripe count", "stripe_count 2 with 2", `b { id = "B" segment_count = 1 segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 2 stripes = ["pv0", 6] } }`, nil)
	vgErr("segment count", "segment_count 3, 1 segments", `b { id = "B" segment_count = 3 segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 6] } }`, nil)
	vgErr("extent size", "extent_size 0", "", func(s string) string { return strings.Replace(s, "extent_size = 2048", "extent_size = 0", 1) })
	vgErr("pe_count", "end past its", "", func(s string) string {
		return strings.Replace(s, "pe_count = 7\ndev_size", "pe_count = 70000\ndev_size", 1)
	})
	vgErr("huge extent", "covers extents", `b { id = "B" segment_count = 1 segment1 { start_extent = 0 extent_count = 9223372036854775807 type = "striped" stripe_count = 1 stripes = ["pv0", 6] } }`, nil)
}

// FuzzReadPV: any device bytes give a PV or an error, never a panic or
// an unbounded allocation; every readable LV maps inside its PVs, covers
// its size exactly, and reads.
func FuzzReadPV(f *testing.F) {
	seed := func(b []byte) []byte {
		// Only the first 80 KiB matter to the parser; the fuzzer's
		// bytes are laid over a zero device of testSize.
		return b[:testMDA+testMDASize+16<<10]
	}
	f.Add(seed(pvImage(uuidA, vgText(1, ""), 512)))
	f.Add(seed(pvImage(uuidA, vgText(2, ""), testMDASize-64)))
	rng := rand.New(rand.NewSource(19))
	for i := 0; i < 8; i++ {
		b := seed(pvImage(uuidA, vgText(1, ""), 512))
		b[512+rng.Intn(len(b)-512)] ^= byte(1 + rng.Intn(255))
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > testSize {
			in = in[:testSize]
		}
		pv, err := ReadPV(zeroTail(in), testSize, "f")
		if err != nil {
			var fe *vmerr.FormatError
			if errors.Is(err, ErrCorrupt) && !errors.As(err, &fe) {
				t.Fatalf("corrupt error without a structure and offset: %v", err)
			}
			return
		}
		checkVGs(t, []*PV{pv})
	})
}

// checkVGs assembles pvs and checks the invariants of every readable LV:
// its runs lie inside their PVs, follow each other from 0 to its size, no
// two runs of the VG share a PV byte, and a read at its end stops there.
func checkVGs(t *testing.T, pvs []*PV) {
	vgs, _ := Assemble(pvs)
	for _, vg := range vgs {
		type span struct{ start, end int64 }
		used := map[*PV][]span{}
		for _, lv := range vg.LVs {
			runs, err := lv.Map()
			if err != nil {
				continue
			}
			var total int64
			for _, r := range runs {
				if r.Off != total || r.Len <= 0 || r.PVOff < 0 || r.PVOff+r.Len > r.PV.Size {
					t.Fatalf("LV %s: run %+v", lv.Name, r)
				}
				for _, u := range used[r.PV] {
					if r.PVOff < u.end && u.start < r.PVOff+r.Len {
						t.Fatalf("LV %s: run %+v overlaps another LV's", lv.Name, r)
					}
				}
				used[r.PV] = append(used[r.PV], span{r.PVOff, r.PVOff + r.Len})
				total += r.Len
			}
			if total != lv.Size {
				t.Fatalf("LV %s: runs cover %d of %d bytes", lv.Name, total, lv.Size)
			}
			r, _ := lv.Open()
			if _, err := r.ReadAt(make([]byte, 16), lv.Size-8); err != io.EOF {
				t.Fatalf("LV %s: read at its end: %v", lv.Name, err)
			}
		}
	}
}

// FuzzAssemble: hostile metadata text behind valid checksums (the
// fuzzer cannot get past the CRCs in FuzzReadPV), on two PVs.
func FuzzAssemble(f *testing.F) {
	f.Add(vgText(1, ""))
	f.Add(vgText(2, `b { id = "B" status = ["VISIBLE"] segment_count = 1 segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv1", 0] } }`))
	f.Add(vgText(3, `st { id = "S" status = ["VISIBLE"] segment_count = 1 segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 2 stripes = ["pv0", 2, "pv1", 0] } }`))
	other := pvImageN(uuidB, vgText(1, ""), 512, testMDA+testMDASize)
	f.Fuzz(func(t *testing.T, text string) {
		if len(text) == 0 || len(text) > testMDASize-1024 {
			return
		}
		a, err := ReadPV(zeroTail(pvImageN(uuidA, text, 512, testMDA+testMDASize)), testSize, "a")
		if err != nil {
			var fe *vmerr.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error without a structure and offset: %v", err)
			}
			return
		}
		b, err := ReadPV(zeroTail(other), testSize, "b")
		if err != nil {
			t.Fatal(err)
		}
		checkVGs(t, []*PV{a, b})
	})
}

// zeroTail is a testSize-byte device: b, then zeros (no 8 MiB buffer per
// fuzz input).
type zeroTail []byte

func (z zeroTail) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= testSize {
		return 0, io.EOF
	}
	n := min(int64(len(p)), testSize-off)
	clear(p[:n])
	if off < int64(len(z)) {
		copy(p[:n], z[off:])
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// FuzzParseConfig: any text parses or fails with a FormatError, within
// the element bound.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(vgText(1, "")))
	f.Add([]byte(`a { b = [ "x", 1, -2 ] c = "\"" } # c`))
	f.Fuzz(func(t *testing.T, b []byte) {
		root, err := ParseConfig(b, 0)
		if err != nil {
			var fe *vmerr.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error without a structure and offset: %v", err)
			}
			return
		}
		if len(root.Keys) != len(root.Vals) || len(root.Keys) > maxElements {
			t.Fatalf("%d keys, %d values", len(root.Keys), len(root.Vals))
		}
	})
}

// TestOlderMetadataWhenNewestInvalid: the newest text (seqno 9, on the
// second PV) has overlapping LVs; the VG is built from the older valid one
// (seqno 4) and the refused text is a problem.
func TestOlderMetadataWhenNewestInvalid(t *testing.T) {
	bad := vgText(9, `b { id = "B" status = ["VISIBLE"] segment_count = 1 segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 1] } }`)
	a := readPV(t, pvImage(uuidA, vgText(4, ""), 512), "p1")
	b := readPV(t, pvImage(uuidB, bad, 512), "p2")
	vgs, probs := Assemble([]*PV{a, b})
	if len(vgs) != 1 || vgs[0].Seqno != 4 || len(probs) != 1 || !errors.Is(probs[0], ErrCorrupt) || probs[0].Where != "p2: volume group vg" {
		t.Fatalf("VGs %+v, problems %v", vgs, probs)
	}
}
