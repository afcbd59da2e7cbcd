package main

// The commands on the LVM2 and LUKS fixtures of testdata/lvm/build.sh:
// info reports what lvs and luksDump reported; ls, cat, scan and dirty
// address the LV as vg/lv:/path; every encrypted volume is in the summary
// and the exit status as "encrypted, not scanned".

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

func lvmFixture(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", "out-lvm", name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (bash testdata/lvm/build.sh, as root)", p)
	}
	return p
}

// dumpField returns the value of "Key: value" in a luksDump file.
func dumpField(t *testing.T, name, key string) string {
	t.Helper()
	b, err := os.ReadFile(lvmFixture(t, name))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s: no %s", name, key)
	return ""
}

func TestInfoLVM(t *testing.T) {
	img := lvmFixture(t, "lvm-gpt.qcow2")
	stdout, stderr, code := vmscope(t, "info", "--format", "json", img)
	if code != 2 || !strings.Contains(stderr, "encrypted, not scanned") {
		t.Errorf("exit %d (want 2: encrypted volumes are problems): %s", code, stderr)
	}
	var doc struct {
		VGs []struct {
			Name string
			LVs  []struct {
				Name, Type, Error string
				Size              int64
				Segments          []json.RawMessage
			}
		} `json:"volume_groups"`
		Encrypted []struct {
			ID     string
			Header struct {
				Kind, UUID, Cipher, Mode string
				KeyBits                  int `json:"key_bits"`
				Keyslots                 []struct{ Index int }
			}
		}
		Filesystems []struct{ ID string }
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, vg := range doc.VGs {
		for _, lv := range vg.LVs {
			got = append(got, vg.Name+"/"+lv.Name+" "+lv.Type+" "+strconv.FormatInt(lv.Size, 10)+"B")
			if (lv.Type == "linear") != (lv.Error == "") {
				t.Errorf("%s: type %s, error %q", lv.Name, lv.Type, lv.Error)
			}
		}
	}
	var lvs struct {
		Report []struct{ LV []map[string]string }
	}
	b, _ := os.ReadFile(lvmFixture(t, "lvs.json"))
	if err := json.Unmarshal(b, &lvs); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var want []string
	for _, r := range lvs.Report[0].LV {
		s := r["vg_name"] + "/" + r["lv_name"] + " " + r["segtype"] + " " + r["lv_size"]
		if !seen[s] {
			want = append(want, s)
			seen[s] = true
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("LVs:\n%s\nlvs:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(doc.Filesystems) != 1 || doc.Filesystems[0].ID != "vg0/root" {
		t.Errorf("filesystems %+v", doc.Filesystems)
	}
	enc := map[string]string{}
	for _, e := range doc.Encrypted {
		enc[e.ID] = e.Header.Kind + " " + e.Header.UUID + " " + e.Header.Cipher + "-" + e.Header.Mode + " " + strconv.Itoa(len(e.Header.Keyslots))
	}
	want1 := "LUKS1 " + dumpField(t, "luks1.dump", "UUID") + " " + dumpField(t, "luks1.dump", "Cipher name") + "-" + dumpField(t, "luks1.dump", "Cipher mode") + " 2"
	want2 := "LUKS2 " + dumpField(t, "luks2.dump", "UUID") + " aes-cbc-essiv:sha256 2"
	if len(enc) != 2 || enc["p3"] != want1 || enc["vg0/vault"] != want2 {
		t.Errorf("encrypted %v, want p3 %q and vg0/vault %q", enc, want1, want2)
	}
	// The table shows the segments and the refusal.
	stdout, _, _ = vmscope(t, "info", img)
	for _, s := range []string{"0-7:pv0:0-7 8-23:pv0:12-27 24-31:pv1:0-7", "vg0/stripes  striped", "unsupported", "encrypted volumes (not scanned)", "LUKS2"} {
		if !strings.Contains(stdout, s) {
			t.Errorf("info table lacks %q:\n%s", s, stdout)
		}
	}
}

func TestLsCatLVM(t *testing.T) {
	img := lvmFixture(t, "lvm-gpt.qcow2")
	stdout, stderr, code := vmscope(t, "ls", "-r", img, "vg0/root:/etc")
	if want := "/etc/cron.d\n/etc/cron.d/job\n/etc/hostname\n/etc/motd\n/etc/passwd\n"; stdout != want {
		t.Errorf("ls -r vg0/root:/etc:\n%s\nwant\n%s", stdout, want)
	}
	if code != 2 || !strings.Contains(stderr, "vmscope: p3 at offset") || !strings.Contains(stderr, "vmscope: vg0/vault at offset") ||
		strings.Count(stderr, "encrypted, not scanned") < 2 || !strings.Contains(stderr, "vg0/stripes") {
		t.Errorf("ls: exit %d, stderr %s", code, stderr)
	}
	stdout, stderr, code = vmscope(t, "cat", img, "vg0/root:/data/big.txt")
	want, err := os.ReadFile(lvmFixture(t, "tree/data/big.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if stdout != string(want) {
		t.Errorf("cat: %d bytes, want %d (exit %d: %s)", len(stdout), len(want), code, stderr)
	}
	_, stderr, code = vmscope(t, "cat", img, "vg0/vault:/etc/passwd")
	if code != 2 || !strings.Contains(stderr, "encrypted, not scanned") {
		t.Errorf("cat on the LUKS LV: exit %d: %s", code, stderr)
	}
	_, stderr, code = vmscope(t, "ls", img, "vg0/stripes:/")
	if code != 2 || !strings.Contains(stderr, "striped") {
		t.Errorf("ls on the striped LV: exit %d: %s", code, stderr)
	}
	// The whole-disk PV: the only volume, so a bare path names it.
	stdout, stderr, code = vmscope(t, "cat", lvmFixture(t, "lvm-whole.img"), "/etc/hostname")
	if code != 0 || stdout != "solo\n" {
		t.Errorf("cat on lvm-whole.img: %q, exit %d: %s", stdout, code, stderr)
	}
}

func TestScanLVM(t *testing.T) {
	img := lvmFixture(t, "lvm-gpt.img")
	rules := filepath.Join(t.TempDir(), "lvm.yar")
	os.WriteFile(rules, []byte(`rule Marker_LVM { strings: $m = "VMSCOPE_MARKER_LVM" condition: $m }`+"\n"), 0o644)
	none := filepath.Join(t.TempDir(), "none.yar")
	os.WriteFile(none, []byte(`rule Never { strings: $m = "NOT-IN-ANY-FILE-4b1f9c" condition: $m }`+"\n"), 0o644)
	type report struct {
		Findings []struct{ Partition, Path, Rule string }
		Errors   []struct{ Error string }
		Summary  struct{ Files, Errors int }
	}
	for _, c := range []struct {
		rules string
		code  int
	}{{rules, 1}, {none, 2}} {
		stdout, stderr, code := vmscope(t, "scan", "--format", "json", "--progress", "never", "--rules-cache", "off", "--rules", c.rules, img)
		var r report
		if err := json.Unmarshal([]byte(stdout), &r); err != nil {
			t.Fatalf("%v: %s", err, stderr)
		}
		if code != c.code {
			t.Errorf("%s: exit %d, want %d", filepath.Base(c.rules), code, c.code)
		}
		enc := 0
		for _, e := range r.Errors {
			if strings.HasSuffix(e.Error, "encrypted, not scanned") {
				enc++
			}
		}
		if enc != 2 || r.Summary.Errors != 3 || r.Summary.Files < 46 {
			t.Errorf("%s: %d encrypted errors, summary %+v: %+v", filepath.Base(c.rules), enc, r.Summary, r.Errors)
		}
		if c.code == 1 && (len(r.Findings) != 1 || r.Findings[0].Partition != "vg0/root" || r.Findings[0].Path != "/etc/cron.d/job") {
			t.Errorf("findings %+v", r.Findings)
		}
	}
}

// TestDirtyLVM: the overlay holds exactly the blocks debugfs changed in the
// LV's ext4; dirty maps them through the LV's segments to exactly the
// changed files.
func TestDirtyLVM(t *testing.T) {
	stdout, stderr, code := vmscope(t, "dirty", "--format", "json", lvmFixture(t, "lvm-overlay.qcow2"))
	var r struct {
		Changes []struct{ Volume, Path, Change string }
	}
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("%v (exit %d): %s", err, code, stderr)
	}
	var got []string
	for _, c := range r.Changes {
		got = append(got, c.Change+" "+c.Volume+":"+c.Path)
	}
	sort.Strings(got)
	b, err := os.ReadFile(lvmFixture(t, "changed.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, p, _ := strings.Cut(l, " ")
		want = append(want, k+" vg0/root:"+p)
	}
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("dirty:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestPVImage: --pv-image adds the PVs of the machine's other disk, so an
// LV spanning both disks reads; without it the LV is refused as lying on a
// missing PV, and dirty refuses to map a volume partly on another disk.
func TestPVImage(t *testing.T) {
	a, b := lvmFixture(t, "multi-a.img"), lvmFixture(t, "multi-b.img")
	want, err := os.ReadFile(lvmFixture(t, "tree-multi/data/big.txt"))
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := vmscope(t, "cat", "--pv-image", b, a, "span/data:/data/big.txt")
	if code != 0 || stdout != string(want) {
		t.Errorf("cat --pv-image: %d bytes, want %d (exit %d: %s)", len(stdout), len(want), code, stderr)
	}
	_, stderr, code = vmscope(t, "cat", a, "span/data:/data/big.txt")
	if code != 2 || !strings.Contains(stderr, "physical volume missing") {
		t.Errorf("cat without --pv-image: exit %d: %s", code, stderr)
	}
	stdout, _, code = vmscope(t, "ls", "--pv-image", b, a)
	if code != 0 || !strings.Contains(stdout, "span/data:/data\n") || !strings.Contains(stdout, "span/local:/etc\n") {
		t.Errorf("ls --pv-image: exit %d:\n%s", code, stdout)
	}
	stdout, _, _ = vmscope(t, "info", "--pv-image", b, a)
	if !strings.Contains(stdout, "0-5:pv0:0-5 6-13:pv1:0-7") || strings.Contains(stdout, "MISSING") {
		t.Errorf("info --pv-image:\n%s", stdout)
	}
	_, stderr, code = vmscope(t, "dirty", "--pv-image", b, "--base", a, a)
	if code != 2 || !strings.Contains(stderr, "lies partly on another disk") {
		t.Errorf("dirty on a volume spanning disks: exit %d: %s", code, stderr)
	}
}

// TestExtractLVM: extract copies the LV's tree; extracting every
// filesystem names the encrypted and unsupported volumes it left out.
func TestExtractLVM(t *testing.T) {
	img := lvmFixture(t, "lvm-gpt.qcow2")
	dir := t.TempDir()
	_, stderr, code := vmscope(t, "extract", img, "vg0/root:/etc", dir)
	if code != 0 {
		t.Fatalf("extract vg0/root:/etc: exit %d: %s", code, stderr)
	}
	got, err := os.ReadFile(filepath.Join(dir, "cron.d", "job"))
	want, _ := os.ReadFile(lvmFixture(t, "tree/etc/cron.d/job"))
	if err != nil || string(got) != string(want) {
		t.Errorf("extracted cron.d/job: %q %v", got, err)
	}
	dir = t.TempDir()
	_, stderr, code = vmscope(t, "extract", img, dir)
	if code != 2 || !strings.Contains(stderr, "vmscope: vg0/vault at offset") || !strings.Contains(stderr, "vmscope: p3 at offset") {
		t.Errorf("extract of every filesystem: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc", "passwd")); err != nil {
		t.Errorf("the LV's tree was not extracted: %v", err)
	}
}
