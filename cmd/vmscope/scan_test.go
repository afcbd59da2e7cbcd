package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/sarifschema"
)

// hit is one (file, rule) pair, as vmscope and the yara CLI both report it.
type hit struct{ part, path, rule string }

func scanHits(t *testing.T, args ...string) (hits map[hit]bool, errs []string, code int) {
	t.Helper()
	stdout, stderr, code := vmscope(t, append([]string{"scan", "--format", "ndjson"}, args...)...)
	hits = map[hit]bool{}
	sc := bufio.NewScanner(strings.NewReader(stdout))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Type      string `json:"type"`
			Partition string `json:"partition"`
			Path      string `json:"path"`
			Rule      string `json:"rule"`
			Error     string `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("ndjson line %q: %v", sc.Text(), err)
		}
		switch l.Type {
		case "finding":
			hits[hit{l.Partition, l.Path, l.Rule}] = true
		case "error":
			errs = append(errs, l.Partition+":"+l.Path+": "+l.Error)
		}
	}
	if code == 2 && len(errs) == 0 {
		t.Logf("stderr: %s", stderr)
	}
	return hits, errs, code
}

// partitionOffsets reads the partition starts of a GPT disk with sfdisk,
// independently of vmscope.
func partitionOffsets(t *testing.T, raw string) []int64 {
	out, err := exec.Command(fixture.Tool(t, "sfdisk"), "--json", raw).Output()
	if err != nil {
		t.Fatalf("sfdisk: %v", err)
	}
	var pt struct {
		PartitionTable struct {
			SectorSize int64 `json:"sectorsize"`
			Partitions []struct {
				Start int64 `json:"start"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &pt); err != nil {
		t.Fatal(err)
	}
	ss := pt.PartitionTable.SectorSize
	if ss == 0 {
		ss = 512
	}
	var offs []int64
	for _, p := range pt.PartitionTable.Partitions {
		offs = append(offs, p.Start*ss)
	}
	return offs
}

// yaraReference extracts every partition of image with qemu-img convert and
// debugfs rdump, runs the yara CLI over the extracted trees, and returns
// its (file, rule) pairs: the pipeline users have today.
func yaraReference(t *testing.T, image, rules string) map[hit]bool {
	t.Helper()
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	if out, err := exec.Command(fixture.Tool(t, "qemu-img"), "convert", "-O", "raw", image, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	want := map[hit]bool{}
	yara := fixture.Tool(t, "yara")
	for i, off := range partitionOffsets(t, raw) {
		part := fmt.Sprintf("p%d", i+1)
		tree := filepath.Join(dir, part)
		os.MkdirAll(tree, 0o755)
		cmd := exec.Command(fixture.Tool(t, "debugfs"), "-R", "rdump / "+tree, fmt.Sprintf("%s?offset=%d", raw, off))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("debugfs rdump %s: %v: %s", part, err, out)
		}
		out, err := exec.Command(yara, "-r", rules, tree).Output()
		if err != nil {
			t.Fatalf("yara -r: %v", err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			rule, p, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			want[hit{part, strings.TrimPrefix(p, tree), rule}] = true
		}
	}
	return want
}

// TestScanEqualsYaraOnExtractedTree: vmscope's findings on a qcow2 overlay
// over a two-partition disk equal what yara -r finds in the trees debugfs
// extracts from it. The planted files sit in nested directories, after a
// hole of a sparse file, straddling the 4 MiB scan block boundary, at the
// end of a 12 MiB file, on the second partition, and in the overlay layer
// only.
func TestScanEqualsYaraOnExtractedTree(t *testing.T) {
	img := fixture.Path(t, "scan-overlay.qcow2")
	rules := filepath.Join(fixture.Root(), "testdata", "rules", "markers.yar")
	got, errs, code := scanHits(t, "--rules", rules, img)
	if code != 1 || len(errs) > 0 {
		t.Fatalf("exit %d, errors %v; want 1 and none", code, errs)
	}
	want := yaraReference(t, img, rules)
	for _, h := range []hit{
		{"p1", "/var/www/html/a/b/c/d/e/shell.php", "Marker_Nested"},
		{"p1", "/opt/app/blob.bin", "Marker_Straddle"},
		{"p1", "/opt/app/blob.bin", "Marker_End"},
		{"p1", "/srv/data/sparse.img", "Eicar_Anywhere"},
		{"p2", "/etc/cron.d/job", "Marker_P2"},
		{"p1", "/var/www/html/cmd.jsp", "Marker_Overlay"},
	} {
		if !want[h] {
			t.Errorf("the reference misses planted %v: fixture or reference broken", h)
		}
	}
	for h := range want {
		if !got[h] {
			t.Errorf("yara found %v, vmscope did not", h)
		}
	}
	for h := range got {
		if !want[h] {
			t.Errorf("vmscope found %v, yara did not", h)
		}
	}
}

// TestScanDefaultRules: the embedded rules find the planted artefacts of
// the fixture, and a clean image exits 0.
func TestScanDefaultRules(t *testing.T) {
	got, errs, code := scanHits(t, fixture.Path(t, "scan-overlay.qcow2"))
	if code != 1 || len(errs) > 0 {
		t.Fatalf("exit %d, errors %v", code, errs)
	}
	byPath := map[string]bool{}
	for h := range got {
		byPath[h.part+":"+h.path] = true
	}
	for _, p := range []string{
		"p1:/var/www/html/a/b/c/d/e/shell.php", "p1:/opt/app/blob.bin", "p1:/srv/data/sparse.img",
		"p1:/home/bob/eicar.txt", "p2:/etc/cron.d/job", "p1:/var/www/html/cmd.jsp",
	} {
		if !byPath[p] {
			t.Errorf("default rules missed %s (found %v)", p, got)
		}
	}
	_, _, code = scanHits(t, fixture.Path(t, "ext4-128.img"))
	if code != 0 {
		t.Errorf("clean image: exit %d, want 0", code)
	}
}

// TestScanErrors: bad rules, a missing image and a truncated qcow2 exit 2
// with a clear message; a corrupt inode in the middle of the tree is
// reported and the rest of the tree is still scanned.
func TestScanErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yar")
	os.WriteFile(bad, []byte("rule ok { condition: true }\n\nrule broken {\n  strings: $a = \"x\"\n  condition: $a and\n}\n"), 0o644)
	_, stderr, code := vmscope(t, "scan", "--rules", bad, fixture.Path(t, "scan.img"))
	if code != 2 || !regexp.MustCompile(`bad\.yar:[0-9]+`).MatchString(stderr) {
		t.Errorf("bad rules: exit %d, stderr %q; want 2 naming bad.yar:LINE", code, stderr)
	}
	_, stderr, code = vmscope(t, "scan", filepath.Join(dir, "nope.qcow2"))
	if code != 2 || !strings.Contains(stderr, "no such file") {
		t.Errorf("missing image: exit %d, %q", code, stderr)
	}
	b, _ := os.ReadFile(fixture.Path(t, "scan-overlay.qcow2"))
	trunc := filepath.Join(dir, "trunc.qcow2")
	os.WriteFile(trunc, b[:len(b)/3], 0o644)
	_, stderr, code = vmscope(t, "scan", trunc)
	if code != 2 || !strings.Contains(stderr, "qcow") {
		t.Errorf("truncated qcow2: exit %d, %q", code, stderr)
	}

	// Corrupt the extent header of one inode of a copy of p1 (located by
	// debugfs imap), then scan: that file is an error, the rest is found.
	img := filepath.Join(dir, "p1.img")
	src, _ := os.ReadFile(fixture.Path(t, "scan-p1.img"))
	victim := "/usr/share/doc/pkg2/file05.txt"
	out, err := exec.Command(fixture.Tool(t, "debugfs"), "-R", "imap "+victim, fixture.Path(t, "scan-p1.img")).Output()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`located at block (\d+), offset (0x[0-9a-f]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("debugfs imap: %s", out)
	}
	blk, _ := strconv.ParseInt(string(m[1]), 10, 64)
	off, _ := strconv.ParseInt(string(m[2]), 0, 64)
	pos := blk*4096 + off + 40 // i_block: the extent header
	if binary.LittleEndian.Uint16(src[pos:]) != 0xF30A {
		t.Fatalf("no extent magic at %d", pos)
	}
	binary.LittleEndian.PutUint16(src[pos:], 0xBAD0)
	os.WriteFile(img, src, 0o644)
	got, errs, code := scanHits(t, "--rules", filepath.Join(fixture.Root(), "testdata", "rules", "markers.yar"), img)
	if code != 1 {
		t.Errorf("corrupt inode: exit %d, want 1 (findings take precedence; the error is in the report)", code)
	}
	if len(errs) != 1 || !strings.Contains(errs[0], victim) {
		t.Errorf("errors %v, want one naming %s", errs, victim)
	}
	for _, r := range []string{"Marker_Nested", "Marker_Straddle", "Marker_End", "Eicar_Anywhere"} {
		found := false
		for h := range got {
			found = found || h.rule == r
		}
		if !found {
			t.Errorf("%s not found after the corrupt inode", r)
		}
	}
}

// TestScanFormatsDeterministic: two runs give the same JSON document
// (durations aside), and ndjson/sarif parse.
func TestScanFormatsDeterministic(t *testing.T) {
	img := fixture.Path(t, "scan-overlay.qcow2")
	dur := regexp.MustCompile(`"duration_ms": *[0-9]+`)
	var docs []string
	for i := 0; i < 2; i++ {
		stdout, _, code := vmscope(t, "scan", "--format", "json", "--jobs", strconv.Itoa(1+i), img)
		if code != 1 {
			t.Fatalf("exit %d", code)
		}
		docs = append(docs, dur.ReplaceAllString(stdout, ""))
	}
	if docs[0] != docs[1] {
		t.Errorf("json output differs between runs")
	}
	stdout, _, _ := vmscope(t, "scan", "--format", "sarif", img)
	sarifschema.Validate(t, []byte(stdout))
	var sarif struct {
		Version string `json:"version"`
		Runs    []struct {
			Results []json.RawMessage `json:"results"`
		} `json:"runs"`
	}
	if err := json.Unmarshal([]byte(stdout), &sarif); err != nil || sarif.Version != "2.1.0" || len(sarif.Runs) != 1 || len(sarif.Runs[0].Results) == 0 {
		t.Errorf("sarif: %v %+v", err, sarif)
	}
}

// TestScanDirty: --dirty base: finds exactly the artefact the overlay layer
// adds; --dirty with a state scans everything on the first poll, and a poll
// of an unchanged image eventually has nothing to scan.
func TestScanDirty(t *testing.T) {
	top, base := fixture.Path(t, "scan-overlay.qcow2"), fixture.Path(t, "scan.qcow2")
	got, errs, code := scanHits(t, "--dirty", "base:"+base, top)
	if code != 1 || len(errs) > 0 {
		t.Fatalf("base: exit %d, errors %v", code, errs)
	}
	want := hit{"p1", "/var/www/html/cmd.jsp", "WebShell_JSP_Runtime_Exec_Request"}
	if len(got) != 1 || !got[want] {
		t.Errorf("base: found %v, want only %v", got, want)
	}
	st := filepath.Join(t.TempDir(), "state.db")
	full, _, code := scanHits(t, top)
	first, _, code1 := scanHits(t, "--dirty", "auto", "--state", st, top)
	if code != 1 || code1 != 1 || len(first) != len(full) {
		t.Errorf("first poll: exit %d, %d findings; full scan: exit %d, %d findings", code1, len(first), code, len(full))
	}
	var last map[hit]bool
	for i := 0; i < 3; i++ {
		last, _, code = scanHits(t, "--dirty", "auto", "--state", st, top)
	}
	if code != 0 || len(last) != 0 {
		t.Errorf("poll of an unchanged image: exit %d, findings %v", code, last)
	}
	// A listing poll (vmscope dirty) on the same state keeps the scanner's
	// rules digest: the next scan poll does not rescan everything.
	if _, stderr, code := vmscope(t, "dirty", "--state", st, top); code != 0 {
		t.Fatalf("dirty --state: exit %d: %s", code, stderr)
	}
	if last, _, code = scanHits(t, "--dirty", "auto", "--state", st, top); code != 0 || len(last) != 0 {
		t.Errorf("scan poll after a dirty listing: exit %d, findings %v", code, last)
	}
	if _, stderr, code := vmscope(t, "scan", "--dirty", "cow", top); code != 2 || !strings.Contains(stderr, "--state") {
		t.Errorf("--dirty cow without --state: exit %d, %q", code, stderr)
	}
}
