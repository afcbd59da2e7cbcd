package fsparse_test

// The LVM2 and LUKS fixtures of testdata/lvm/build.sh (losetup, pvcreate,
// vgcreate, lvcreate, lvextend, mkfs.ext4 -d, cryptsetup luksFormat): the
// volume groups read here must be what lvs, pvs and vgs reported when the
// script made them, the LV bytes what dd wrote at the extents lvs named,
// and the LV's files what debugfs lists.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/lvm"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/qcow"
	"github.com/vmscope/vmscope/vmerr"
)

// lvmFixture returns a file of testdata/out-lvm, or skips (fails under CI).
func lvmFixture(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", "out-lvm", name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (bash testdata/lvm/build.sh, as root)", p)
	}
	return p
}

func openLVMDisk(t *testing.T, name string) *fsparse.Disk {
	t.Helper()
	im, err := qcow.Open(lvmFixture(t, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	d, err := fsparse.Open(im, im.Size())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// lvmReport reads a --reportformat json file: the rows of its first report
// under key ("lv", "pv", "vg").
func lvmReport(t *testing.T, name, key string) []map[string]string {
	t.Helper()
	b, err := os.ReadFile(lvmFixture(t, name))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Report []map[string][]map[string]string `json:"report"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(doc.Report) != 1 || len(doc.Report[0][key]) == 0 {
		t.Fatalf("%s: no %q rows", name, key)
	}
	return doc.Report[0][key]
}

func bytesField(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(strings.TrimSuffix(s, "B"), 10, 64)
	if err != nil {
		t.Fatalf("lvm report value %q: %v", s, err)
	}
	return n
}

// TestLVMAgainstLVS compares the VG, PVs, LVs and every segment with the
// JSON reports of vgs, pvs and lvs.
func TestLVMAgainstLVS(t *testing.T) {
	d := openLVMDisk(t, "lvm-gpt.img")
	if len(d.VGs) != 1 {
		t.Fatalf("%d volume groups, want 1", len(d.VGs))
	}
	vg := d.VGs[0]
	vgr := lvmReport(t, "vgs.json", "vg")[0]
	if vg.Name != vgr["vg_name"] || vg.ID != vgr["vg_uuid"] || strconv.FormatInt(vg.Seqno, 10) != vgr["vg_seqno"] ||
		vg.ExtentSize != bytesField(t, vgr["vg_extent_size"]) || strconv.Itoa(len(vg.PVs)) != vgr["pv_count"] {
		t.Errorf("VG %s id %s seqno %d extent %d pvs %d; vgs: %v", vg.Name, vg.ID, vg.Seqno, vg.ExtentSize, len(vg.PVs), vgr)
	}
	// The loop device each PV was on, and the partition it is.
	devs := map[string]string{}
	b, err := os.ReadFile(lvmFixture(t, "devices.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		devs[f[0]] = f[1]
	}
	pvName := map[string]string{} // loop device -> VG's name for the PV ("pv0")
	for _, r := range lvmReport(t, "pvs.json", "pv") {
		var p *lvm.VGPV
		for _, x := range vg.PVs {
			if x.ID == r["pv_uuid"] {
				p = x
			}
		}
		if p == nil {
			t.Errorf("pvs lists %s (%s), not found", r["pv_name"], r["pv_uuid"])
			continue
		}
		pvName[r["pv_name"]] = p.Name
		if p.Where != devs[r["pv_name"]] || p.PEStart != bytesField(t, r["pe_start"]) || strconv.FormatInt(p.PECount, 10) != r["pv_pe_count"] || p.DevSize != bytesField(t, r["dev_size"]) {
			t.Errorf("PV %s on %s pe_start %d pe_count %d dev_size %d; pvs: %v (device %s)", p.Name, p.Where, p.PEStart, p.PECount, p.DevSize, r, devs[r["pv_name"]])
		}
	}
	type seg struct{ lv, typ, start, size, ranges, lvSize string }
	var want, got []seg
	for _, r := range lvmReport(t, "lvs.json", "lv") {
		var rs []string
		for _, x := range strings.Fields(r["seg_pe_ranges"]) {
			dev, ext, _ := strings.Cut(x, ":")
			rs = append(rs, pvName[dev]+":"+ext)
		}
		want = append(want, seg{r["lv_name"] + " " + r["lv_uuid"], r["segtype"], r["seg_start_pe"], r["seg_size_pe"], strings.Join(rs, " "), r["lv_size"]})
	}
	for _, lv := range vg.LVs {
		for _, s := range lv.Segments {
			var rs []string
			per := s.ExtentCount / int64(len(s.Stripes))
			for _, x := range s.Stripes {
				rs = append(rs, fmt.Sprintf("%s:%d-%d", x.PV, x.StartExtent, x.StartExtent+per-1))
			}
			typ := lv.Type
			got = append(got, seg{lv.Name + " " + lv.ID, typ, strconv.FormatInt(s.StartExtent, 10), strconv.FormatInt(s.ExtentCount, 10), strings.Join(rs, " "), fmt.Sprintf("%dB", lv.Size)})
		}
	}
	less := func(s []seg) func(i, j int) bool {
		return func(i, j int) bool { return fmt.Sprint(s[i]) < fmt.Sprint(s[j]) }
	}
	sort.Slice(want, less(want))
	sort.Slice(got, less(got))
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("segments:\n got %v\nwant %v", got, want)
	}
	// root spans three segments on two PVs; stripes is refused by type.
	if lv := vg.LV("root"); lv == nil || len(lv.Segments) != 3 || !lv.Supported() {
		t.Errorf("vg0/root: %+v", lv)
	}
	if lv := vg.LV("stripes"); lv == nil || !errors.Is(lv.Err, lvm.ErrUnsupported) || !errors.Is(lv.Err, vmerr.ErrUnsupported) || lv.Type != "striped" {
		t.Errorf("vg0/stripes: %+v", lv)
	}
}

// TestLVMMetadataAgainstPvck compares the metadata text read from p1's
// metadata area with the one pvck --dump metadata printed.
func TestLVMMetadataAgainstPvck(t *testing.T) {
	d := openLVMDisk(t, "lvm-gpt.img")
	b, err := os.ReadFile(lvmFixture(t, "pvck.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// "metadata text at OFF crc 0xCRC # vgname vg0 seqno N\n---\nTEXT---"
	head, rest, ok := strings.Cut(string(b), "\n  ---\n")
	if !ok {
		t.Fatalf("pvck.txt: no text")
	}
	var off int64
	var crc uint32
	var seq int64
	var name string
	if _, err := fmt.Sscanf(strings.TrimSpace(head), "metadata text at %d crc %v # vgname %s seqno %d", &off, &crc, &name, &seq); err != nil {
		t.Fatalf("pvck.txt header %q: %v", head, err)
	}
	text, _, _ := strings.Cut(rest, "\n  ---")
	var pv *lvm.PV
	for _, p := range d.PVs {
		if p.ID == "p1" {
			pv = p.PV
		}
	}
	if pv == nil || len(pv.Metadata) != 1 {
		t.Fatalf("p1: %+v", pv)
	}
	md := pv.Metadata[0]
	if md.Offset != off || md.CRC != crc || md.VGName != name || md.Seqno != seq {
		t.Errorf("metadata at %d crc %#x vg %s seqno %d; pvck: at %d crc %#x vg %s seqno %d", md.Offset, md.CRC, md.VGName, md.Seqno, off, crc, name, seq)
	}
	if strings.TrimSpace(string(md.Text)) != strings.TrimSpace(text) {
		t.Errorf("metadata text differs from pvck's:\n%s\n---\n%s", md.Text, text)
	}
}

// TestLVMBytesEqualWritten reads every byte of each LV, raw and through
// qcow2, and compares it with the ext4 image dd wrote at its extents.
func TestLVMBytesEqualWritten(t *testing.T) {
	for _, c := range []struct{ img, id, src string }{
		{"lvm-gpt.img", "vg0/root", "root.img"},
		{"lvm-gpt.qcow2", "vg0/root", "root.img"},
		{"lvm-whole.img", "solo/data", "small.img"},
	} {
		t.Run(c.img, func(t *testing.T) {
			d := openLVMDisk(t, c.img)
			v, err := d.Volume(c.id)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(lvmFixture(t, c.src))
			if err != nil {
				t.Fatal(err)
			}
			if v.Device.Size() != int64(len(want)) {
				t.Fatalf("%s: %d bytes, %s has %d", c.id, v.Device.Size(), c.src, len(want))
			}
			got := make([]byte, len(want))
			if _, err := v.Device.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s differs from %s", c.id, c.src)
			}
			// A read across a segment boundary.
			if len(v.Segments) > 1 {
				b := v.Segments[1].Off
				p := make([]byte, 8192)
				if _, err := v.Device.ReadAt(p, b-4096); err != nil || !bytes.Equal(p, want[b-4096:b+4096]) {
					t.Errorf("read across the segment boundary at %d: %v", b, err)
				}
			}
			if _, err := v.Device.ReadAt(make([]byte, 1), int64(len(want))); err != io.EOF {
				t.Errorf("read past the LV: %v, want EOF", err)
			}
		})
	}
}

// TestLVMFilesAgainstDebugfs lists the LV's ext4 with vmscope and with
// debugfs (on the image file that was written into the LV), and reads
// every file against the source tree.
func TestLVMFilesAgainstDebugfs(t *testing.T) {
	d := openLVMDisk(t, "lvm-gpt.qcow2")
	v, err := d.Volume("vg0/root")
	if err != nil {
		t.Fatal(err)
	}
	v2, name, err := d.Resolve("vg0/root:/etc/passwd")
	if err != nil || v2 != v || name != "etc/passwd" {
		t.Fatalf("Resolve(vg0/root:/etc/passwd) = %v %q %v", v2, name, err)
	}
	got := map[string]fsparse.Entry{}
	var dirs []string
	err = v.Walk(context.Background(), ".", func(e fsparse.Entry, err error) error {
		if err != nil {
			t.Errorf("%s: %v", e.Path, err)
		}
		if e.Type == "dir" {
			dirs = append(dirs, e.Path)
		}
		if e.Path != "/" {
			got[e.Path] = e
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := debugfsList(t, lvmFixture(t, "root.img"), dirs)
	if len(want) != len(got) || len(want) < 50 {
		t.Errorf("%d entries, debugfs lists %d", len(got), len(want))
	}
	tree := lvmFixture(t, "tree")
	for p, w := range want {
		e, ok := got[p]
		if !ok {
			t.Errorf("%s: listed by debugfs, not by vmscope", p)
			continue
		}
		if w[0] != e.Ino || e.Type != "dir" && w[4] != uint64(e.Size) {
			t.Errorf("%s: ino %d size %d; debugfs ino %d size %d", p, e.Ino, e.Size, w[0], w[4])
		}
		if e.Type != "file" || strings.HasPrefix(p, "/lost+found") {
			continue
		}
		src, err := os.ReadFile(filepath.Join(tree, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		f, err := v.Open(strings.TrimPrefix(p, "/"))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		b := make([]byte, f.Size())
		if _, err := f.ReadAt(b, 0); err != nil && err != io.EOF || !bytes.Equal(b, src) {
			t.Errorf("%s: content differs from the source tree (%v)", p, err)
		}
	}
}

// TestLVMProblems: every LV that is not a readable filesystem is a problem
// of the disk (the encrypted one and the striped one), and addressing it
// says why.
func TestLVMProblems(t *testing.T) {
	d := openLVMDisk(t, "lvm-gpt.img")
	where := map[string]error{}
	for _, p := range d.Problems {
		where[p.Where] = p.Err
	}
	if len(d.Problems) != 3 || !errors.Is(where["vg0/stripes"], lvm.ErrUnsupported) ||
		!errors.Is(where["vg0/vault"], fsparse.ErrEncrypted) || !errors.Is(where["p3"], fsparse.ErrEncrypted) {
		t.Errorf("problems: %v", d.Problems)
	}
	for _, id := range []string{"vg0/stripes", "vg0/vault", "p3"} {
		if _, _, err := d.Resolve(id + ":/etc"); !errors.Is(err, fsparse.ErrNoVolume) || !errors.Is(err, vmerr.ErrUnsupported) {
			t.Errorf("Resolve(%s:/etc): %v", id, err)
		}
	}
	if len(d.Volumes) != 1 || d.Volumes[0].ID != "vg0/root" {
		t.Errorf("volumes: %v", d.Volumes)
	}
}

// TestLVMFromDisk: the volume's segments map every disk byte of an LV
// extent to the LV byte dd put there, and nothing else.
func TestLVMFromDisk(t *testing.T) {
	d := openLVMDisk(t, "lvm-gpt.img")
	v, err := d.Volume("vg0/root")
	if err != nil {
		t.Fatal(err)
	}
	disk, err := os.Open(lvmFixture(t, "lvm-gpt.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	var total int64
	for _, s := range v.Segments {
		total += s.Len
		a, b := make([]byte, 4096), make([]byte, 4096)
		for _, o := range []int64{0, s.Len - 4096} {
			disk.ReadAt(a, s.DiskOff+o)
			v.Device.ReadAt(b, s.Off+o)
			if !bytes.Equal(a, b) {
				t.Errorf("segment %+v: disk bytes at %d are not LV bytes at %d", s, s.DiskOff+o, s.Off+o)
			}
		}
	}
	if total != v.Device.Size() {
		t.Errorf("segments cover %d bytes of %d", total, v.Device.Size())
	}
}

// TestLVMAcrossDisks: VG span has a PV on each of two disk images.
// Opened alone, multi-a.img reads span/local and refuses span/data (its
// second segment is on the missing PV); with multi-b.img as a PV disk,
// span/data reads, equal to the ext4 image written into it, and its
// segments say which run lies on the other disk.
func TestLVMAcrossDisks(t *testing.T) {
	d := openLVMDisk(t, "multi-a.img")
	if _, err := d.Volume("span/data"); !errors.Is(err, lvm.ErrMissingPV) || !errors.Is(err, vmerr.ErrNotPresent) {
		t.Errorf("span/data without multi-b.img: %v", err)
	}
	if len(d.VGs) != 1 || len(d.VGs[0].PVs) != 2 || !d.VGs[0].PVs[1].Missing {
		t.Fatalf("VGs %+v", d.VGs)
	}
	compareLV(t, d, "span/local", "small.img")

	a, err := qcow.Open(lvmFixture(t, "multi-a.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := qcow.Open(lvmFixture(t, "multi-b.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	d, err = fsparse.Open(a, a.Size(), fsparse.WithPVDisks(fsparse.PVDisk{Name: "multi-b.img", R: b, Size: b.Size()}))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Problems) != 0 {
		t.Fatalf("problems: %v", d.Problems)
	}
	v := compareLV(t, d, "span/data", "multi-data.img")
	if len(v.Segments) != 2 || v.Segments[0].Image != "" || v.Segments[1].Image != "multi-b.img" || !v.OnOtherDisks() {
		t.Errorf("segments %+v", v.Segments)
	}
	// Dirty ranges of disk a map only to the run on disk a.
	var all rangeset.Set
	all.Add(0, a.Size())
	if got := v.FromDisk(all); got.Bytes() != v.Segments[0].Len {
		t.Errorf("FromDisk of all of disk a: %d bytes, want the %d of its run", got.Bytes(), v.Segments[0].Len)
	}
	f, err := v.Open("data/big.txt")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(lvmFixture(t, "tree-multi/data/big.txt"))
	got := make([]byte, f.Size())
	if _, err := f.ReadAt(got, 0); err != nil && err != io.EOF || !bytes.Equal(got, want) {
		t.Errorf("data/big.txt differs from the source (%v)", err)
	}
}

// compareLV checks that volume id of d holds exactly the image src.
func compareLV(t *testing.T, d *fsparse.Disk, id, src string) *fsparse.Volume {
	t.Helper()
	v, err := d.Volume(id)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(lvmFixture(t, src))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, v.Device.Size())
	if _, err := v.Device.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from %s", id, src)
	}
	return v
}

// TestLVMHostileOnDisk: a PV whose label checksum is broken, in a copy of
// the fixture, is a problem naming the partition and the label's offset;
// the disk still opens.
func TestLVMHostileOnDisk(t *testing.T) {
	img, err := os.ReadFile(lvmFixture(t, "lvm-whole.img"))
	if err != nil {
		t.Fatal(err)
	}
	img[512+100] ^= 0xff // inside the PV header: the label CRC fails
	d, err := fsparse.Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	var fe *vmerr.FormatError
	if len(d.Problems) != 1 || !errors.Is(d.Problems[0], lvm.ErrCorrupt) || !errors.As(d.Problems[0], &fe) || fe.Offset != 512 || d.Problems[0].Where != "disk" {
		t.Errorf("problems %v", d.Problems)
	}
}

// TestBitLockerVolume: a volume whose boot sector carries BitLocker's
// signature (built here on a copy of a fixture: no tool here writes
// BitLocker) is listed as encrypted and is a problem, not a silent gap.
func TestBitLockerVolume(t *testing.T) {
	img, err := os.ReadFile(lvmFixture(t, "lvm-whole.img"))
	if err != nil {
		t.Fatal(err)
	}
	clear(img[:4096])
	copy(img, "\xeb\x58\x90-FVE-FS-")
	img[510], img[511] = 0x55, 0xAA
	d, err := fsparse.Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Encrypted) != 1 || d.Encrypted[0].ID != "disk" || d.Encrypted[0].Header.Kind != "BitLocker" ||
		len(d.Problems) != 1 || !errors.Is(d.Problems[0], fsparse.ErrEncrypted) || len(d.Volumes) != 0 {
		t.Errorf("encrypted %+v problems %v volumes %v", d.Encrypted, d.Problems, d.Volumes)
	}
}

// BenchmarkLVRead reads the 32 MiB of vg0/root (three segments on two
// PVs) through the LV, and the same bytes straight from the image file at
// the disk offsets its segments give: the ratio is the cost of the LV
// mapping.
func BenchmarkLVRead(b *testing.B) {
	img := filepath.Join(fixture.Root(), "testdata", "out-lvm", "lvm-gpt.img")
	f, err := os.Open(img)
	if err != nil {
		b.Skip("fixture missing: bash testdata/lvm/build.sh")
	}
	defer f.Close()
	fi, _ := f.Stat()
	d, err := fsparse.Open(f, fi.Size())
	if err != nil {
		b.Fatal(err)
	}
	v, err := d.Volume("vg0/root")
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.Run("lv", func(b *testing.B) {
		b.SetBytes(v.Device.Size())
		for i := 0; i < b.N; i++ {
			for off := int64(0); off < v.Device.Size(); off += int64(len(buf)) {
				if _, err := v.Device.ReadAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("direct", func(b *testing.B) {
		b.SetBytes(v.Device.Size())
		for i := 0; i < b.N; i++ {
			for _, s := range v.Segments {
				for off := int64(0); off < s.Len; off += int64(len(buf)) {
					if _, err := f.ReadAt(buf, s.DiskOff+off); err != nil {
						b.Fatal(err)
					}
				}
			}
		}
	})
}
