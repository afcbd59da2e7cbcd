package snapshot_test

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
	"github.com/vmscope/vmscope/vmi/memtest"
	"github.com/vmscope/vmscope/vmi/snapshot"
)

// The writers boot of the guest fixture (testdata/guest/build.sh): dumps
// of one stopped guest written by QEMU and makedumpfile, and a LiME dump
// made inside the same boot just before.
const writers = "writers"

// kdumpWriters are the kdump files of the writers boot: each holds the
// same moment as its guest.elf; comp is the compression flag its pages
// must use (DUMP_DH_COMPRESSED_*).
var kdumpWriters = []struct {
	file, writer, format string
	comp                 uint32
}{
	{"qemu-zlib.kdump", "QEMU dump-guest-memory", "kdump-zlib", 0x1},
	{"qemu-lzo.kdump", "QEMU dump-guest-memory", "kdump-lzo", 0x2},
	{"qemu-snappy.kdump", "QEMU dump-guest-memory", "kdump-snappy", 0x4},
	{"md-zlib.kdump", "makedumpfile -c -d 0", "kdump (zlib)", 0x1},
	{"md-lzo.kdump", "makedumpfile -l -d 0", "kdump (LZO)", 0x2},
	{"md-lzo.flat", "makedumpfile -F -l -d 0", "flattened kdump (LZO)", 0x2},
}

// kdumpStatus returns the status word of a kdump file's disk_dump_header
// (the compression its pages use), plain or flattened.
func kdumpStatus(t *testing.T, path string) uint32 {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := make([]byte, 4096+16+464) // disk_dump_header: status at 424
	if _, err := f.ReadAt(h, 0); err != nil {
		t.Fatal(err)
	}
	if string(h[:12]) == "makedumpfile" {
		h = h[4096+16:] // the first record: the header at offset 0
	}
	if string(h[:8]) != "KDUMP   " {
		t.Fatalf("%s: no kdump header", path)
	}
	return uint32(h[424]) | uint32(h[425])<<8 | uint32(h[426])<<16 | uint32(h[427])<<24
}

// offered reports whether this QEMU offers the dump format
// (query-dump-guest-memory-capability at fixture time).
func offered(t *testing.T, format string) bool {
	t.Helper()
	b, err := os.ReadFile(guesttest.Path(t, writers, "dump-formats.json"))
	if err != nil {
		t.Fatal(err)
	}
	var caps struct {
		Formats []string `json:"formats"`
	}
	if err := json.Unmarshal(b, &caps); err != nil {
		t.Fatal(err)
	}
	return slices.Contains(caps.Formats, format)
}

// TestWritersQEMUFormats checks that the fixture holds a dump in every
// kdump format this QEMU offers (query-dump-guest-memory-capability).
func TestWritersQEMUFormats(t *testing.T) {
	b, err := os.ReadFile(guesttest.Path(t, writers, "dump-formats.json"))
	if err != nil {
		t.Fatal(err)
	}
	var caps struct {
		Formats []string `json:"formats"`
	}
	if err := json.Unmarshal(b, &caps); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{"elf": true}
	for _, w := range kdumpWriters {
		if strings.HasPrefix(w.writer, "QEMU") {
			have[w.format] = true
		}
	}
	for _, f := range caps.Formats {
		switch {
		case f == "win-dmp":
			// Windows guests only: QEMU builds it from the KDBG block a
			// Windows guest driver puts in vmcoreinfo.
		case !have[f]:
			t.Errorf("QEMU offers dump format %q: the writers fixture has no dump in it", f)
		}
	}
	t.Logf("QEMU offers %v", caps.Formats)
}

// systemRAM returns the top-level "System RAM" ranges of the guest's
// /proc/iomem.
func systemRAM(t *testing.T, truth *guesttest.Truth) []vmi.Range {
	var out []vmi.Range
	for _, l := range truth.Sections["iomem"] {
		// "00100000-0fffffff : System RAM" at the top level (no indent)
		span, name, ok := strings.Cut(l, " : ")
		if !ok || name != "System RAM" || strings.HasPrefix(l, " ") {
			continue
		}
		lo, hi, _ := strings.Cut(span, "-")
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("iomem line %q", l)
		}
		out = append(out, vmi.Range{Start: vmi.PA(s), Size: e - s + 1})
	}
	if len(out) == 0 {
		t.Fatal("no System RAM in the guest's /proc/iomem")
	}
	return out
}

// within reports whether [a, a+n) lies inside one of rs.
func within(rs []vmi.Range, a vmi.PA, n uint64) bool {
	for _, r := range rs {
		if a >= r.Start && uint64(a-r.Start)+n <= r.Size {
			return true
		}
	}
	return false
}

// TestWritersBytes reads every kdump file that QEMU and makedumpfile
// wrote of the writers boot and checks it against QEMU's ELF dump of the
// same moment: QEMU's kdump has the ELF dump's ranges; makedumpfile's
// leave out what is not RAM (the ELF dump also holds the VGA memory and
// the BIOS ROM) but hold every page of the guest's "System RAM"; every
// byte of every range is the ELF dump's; the header says the compression
// the writer was asked for.
func TestWritersBytes(t *testing.T) {
	truth := guesttest.Load(t, writers)
	ram := systemRAM(t, truth)
	elf := open(t, guesttest.Path(t, writers, guesttest.ELFDump))
	for _, w := range kdumpWriters {
		t.Run(w.file, func(t *testing.T) {
			if !strings.HasPrefix(w.writer, "makedumpfile") && !offered(t, w.format) {
				t.Logf("this QEMU does not offer %s (TestWritersQEMUFormats checks the list)", w.format)
				return
			}
			path := guesttest.Path(t, writers, w.file)
			if st := kdumpStatus(t, path); st&w.comp == 0 {
				t.Errorf("header status %#x: not compressed with %#x", st, w.comp)
			}
			s := open(t, path)
			if s.Format() != snapshot.Kdump {
				t.Fatalf("format %v", s.Format())
			}
			rel := memtest.Equal
			if strings.HasPrefix(w.writer, "makedumpfile") {
				rel = memtest.BInA
			}
			ranges := s.Ranges()
			for _, r := range ram {
				start := r.Start &^ 4095
				if !within(ranges, start, uint64(r.End()-start+4095)&^4095) {
					t.Errorf("System RAM %v not all in the ranges %v", r, ranges)
				}
			}
			// every byte, as before the kit: the writers' decoders in full
			rep := memtest.Agree(t, elf, s, memtest.Names("elf", w.file), memtest.Ranges(rel), memtest.FullUpTo(math.MaxUint64))
			if !rep.Full {
				t.Error("not compared in full")
			}
			n := rep.Bytes
			t.Logf("%s (%s): %d MiB in %d ranges, equal to the ELF dump", w.writer, w.format, n>>20, len(ranges))
		})
	}
}

// TestWritersLiME checks the real LiME dump (the LiME module inside the
// guest) against the guest's own /proc/iomem: one range per "System RAM"
// line; and against QEMU's ELF dump taken right after: every page of the
// kernel's text is equal but for the static branches (jump labels) the
// kernel patched in between, each a 2-byte NOP (66 90) against a short
// jump (eb), or a 5-byte NOP (0f 1f 44 00 00) against a near jump (e9):
// the random driver's crng_is_ready key flips once the RNG is seeded, a
// few seconds after boot.
func TestWritersLiME(t *testing.T) {
	truth := guesttest.Load(t, writers)
	lime := open(t, guesttest.Path(t, writers, "guest.lime"))
	if lime.Format() != snapshot.LiME {
		t.Fatalf("format %v", lime.Format())
	}
	if want := systemRAM(t, truth); fmt.Sprint(lime.Ranges()) != fmt.Sprint(want) {
		t.Fatalf("LiME ranges %v, guest's System RAM %v", lime.Ranges(), want)
	}

	elf := open(t, guesttest.Path(t, writers, guesttest.ELFDump))
	gpa := gva2gpa(t, writers)
	text, etext := gpa["_stext"], gpa["_etext"]
	if text == 0 || etext <= text {
		t.Fatalf("_stext %#x _etext %#x", text, etext)
	}
	// every full page of the kernel's text
	rep := memtest.Agree(t, elf, lime, memtest.Names("elf", "lime"), memtest.Ranges(memtest.BInA),
		memtest.Only(vmi.Range{Start: vmi.PA(text), Size: (etext &^ 4095) - text}),
		memtest.Tolerate(memtest.JumpLabel), memtest.FullUpTo(math.MaxUint64), memtest.NoCPUs("LiME saves none"))
	if !rep.Full || rep.Pages < 1000 {
		t.Errorf("only %d kernel text pages compared (full %v)", rep.Pages, rep.Full)
	}
	t.Logf("%d kernel text pages equal but for %d jump label sites patched in between", rep.Pages, rep.Tolerated[memtest.JumpLabel.Name])
}

// BenchmarkWritersRead reads every page of each kdump file of the writers
// boot (a cold page cache of decoded pages: each page is decoded once),
// and of the ELF dump, in 1 MiB reads.
func BenchmarkWritersRead(b *testing.B) {
	files := []string{guesttest.ELFDump}
	for _, w := range kdumpWriters {
		files = append(files, w.file)
	}
	for _, file := range files {
		b.Run(file, func(b *testing.B) {
			path := filepath.Join(guesttest.Dir(), writers, file)
			if _, err := os.Stat(path); err != nil {
				b.Skip(err) // a QEMU format this QEMU does not offer
			}
			buf := make([]byte, 1<<20)
			var total int64
			for range b.N {
				s := open(b, path)
				total = 0
				for _, r := range s.Ranges() {
					for a := r.Start; a < r.End(); a += 1 << 20 {
						l := min(uint64(len(buf)), uint64(r.End()-a))
						if _, err := s.ReadAt(buf[:l], int64(a)); err != nil {
							b.Fatal(err)
						}
						total += int64(l)
					}
				}
			}
			b.SetBytes(total)
		})
	}
}

// BenchmarkAgree runs the memory conformance kit in its default, sampled
// mode (a stride, random pages, the kernel image, odd reads, holes,
// vCPUs) on QEMU's ELF dump of the writers boot against each kdump file
// of the same moment: the cost of one pair.
func BenchmarkAgree(b *testing.B) {
	elfPath := filepath.Join(guesttest.Dir(), writers, guesttest.ELFDump)
	if _, err := os.Stat(elfPath); err != nil {
		b.Skip(err)
	}
	kernel := memtest.Region("kernel image", kernelImage(b, writers))
	for _, w := range kdumpWriters {
		b.Run(w.file, func(b *testing.B) {
			path := filepath.Join(guesttest.Dir(), writers, w.file)
			if _, err := os.Stat(path); err != nil {
				b.Skip(err) // a QEMU format this QEMU does not offer
			}
			rel := memtest.Equal
			if strings.HasPrefix(w.writer, "makedumpfile") {
				rel = memtest.BInA
			}
			var rep memtest.Report
			for range b.N {
				elf, s := open(b, elfPath), open(b, path)
				rep = memtest.Agree(b, elf, s, memtest.Ranges(rel), kernel)
			}
			b.SetBytes(int64(rep.Bytes))
		})
	}
}
