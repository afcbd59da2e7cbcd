package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/sarifschema"
)

// mkext4 builds an ext4 image of tree with mkfs.ext4 -d (as root, which
// keeps the tree's owners) and returns its path.
func mkext4(t *testing.T, tree string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	cmd := exec.Command(fixture.Tool(t, "mkfs.ext4"), "-q", "-F", "-b", "4096", "-d", tree, img, "32M")
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1700000000")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -d: %v: %s", err, out)
	}
	return img
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, data := range files {
		full := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestScanExternalsOnImage: on a real ext4 image, every file gets the
// filetype LOKI/THOR give its kind, and owner is the user name from the
// image's own /etc/passwd (the uid where it has none): a rule per value
// matches exactly the file of that kind.
func TestScanExternalsOnImage(t *testing.T) {
	if os.Getuid() != 0 {
		fixture.Missing(t, "needs root to give files other owners for mkfs.ext4 -d")
	}
	tree := t.TempDir()
	kinds := map[string]struct{ path, data string }{
		"EXE":         {"/srv/a.jpg", "MZ\x90\x00\x03\x00\x00\x00\x04\x00"},
		"ELF":         {"/opt/confluence-x/bin/run", "\x7fELF\x02\x01\x01\x00"},
		"JSP":         {"/var/www/cmd.jsp", "<% Runtime.getRuntime().exec(request.getParameter(\"c\")); %>\n"},
		"ASP":         {"/var/www/x.aspx", "<%@ Page Language=\"C#\" %>\n"},
		"PHP":         {"/var/www/s.php", "<?php system($_GET['c']); ?>\n"},
		"UNIX SCRIPT": {"/usr/local/bin/job.sh", "#!/bin/sh\necho hi\n"},
		"BATCH":       {"/srv/run.bat", "@echo off\r\n"},
		"GZIP":        {"/srv/a.gz", "\x1f\x8b\x08\x00\x00\x00\x00\x00"},
		"ZIP":         {"/srv/a.zip", "PK\x03\x04\x0a\x00\x00\x00"},
		"PDF":         {"/srv/a.pdf", "%PDF-1.4\n"},
		"RTF":         {"/srv/a.rtf", "{\\rtf1\\ansi}\n"},
		"MACH-O":      {"/srv/macho", "\xcf\xfa\xed\xfe\x07\x00\x00\x01"},
		"UNKNOWN":     {"/srv/plain.txt", "just words\n"},
	}
	files := map[string]string{
		"/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n# comment\nconfluence:x:1001:1001::/opt/confluence:/bin/sh\nalias:x:1001:1001::/:/bin/sh\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n",
	}
	for _, k := range kinds {
		files[k.path] = k.data
	}
	writeTree(t, tree, files)
	for p, uid := range map[string]int{"/opt/confluence-x/bin/run": 1001, "/var/www/cmd.jsp": 33, "/srv/plain.txt": 4242} {
		if err := os.Chown(filepath.Join(tree, p), uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	img := mkext4(t, tree)

	var rules strings.Builder
	ruleOf := map[string]string{}
	for ft := range kinds {
		name := "ft_" + strings.NewReplacer(" ", "_", "-", "_").Replace(ft)
		ruleOf[name] = ft
		rules.WriteString("rule " + name + " { condition: filetype == \"" + ft + "\" }\n")
	}
	// signature-base's own rule, as shipped (yara_mixed_ext_vars.yar).
	rules.WriteString(`rule SUSP_EXPL_Confluence_RCE_CVE_2021_26084_Indicators_Sep21 {
   condition: uint32be(0) == 0x7f454c46 and owner == "confluence" and not filepath contains "/confluence/"
}
rule owner_www { condition: owner == "www-data" }
rule owner_uid { condition: owner == "4242" }
rule owner_root { condition: owner == "root" and filepath == "/etc/passwd" }
rule names { condition: filename == "cmd.jsp" and extension == ".jsp" and filepath == "/var/www/cmd.jsp" }
`)
	rf := filepath.Join(t.TempDir(), "ext.yar")
	os.WriteFile(rf, []byte(rules.String()), 0o644)

	got, errs, code := scanHits(t, "--rules", rf, img)
	if code != 1 || len(errs) > 0 {
		t.Fatalf("exit %d, errors %v", code, errs)
	}
	want := map[hit]bool{
		{"", "/opt/confluence-x/bin/run", "SUSP_EXPL_Confluence_RCE_CVE_2021_26084_Indicators_Sep21"}: true,
		{"", "/var/www/cmd.jsp", "owner_www"}: true,
		{"", "/srv/plain.txt", "owner_uid"}:   true,
		{"", "/etc/passwd", "owner_root"}:     true,
		{"", "/var/www/cmd.jsp", "names"}:     true,
		{"", "/etc/passwd", "ft_UNKNOWN"}:     true,
	}
	for name, ft := range ruleOf {
		want[hit{"", kinds[ft].path, name}] = true
	}
	for h := range want {
		if !got[h] {
			t.Errorf("missing %v", h)
		}
	}
	for h := range got {
		if !want[h] {
			t.Errorf("extra %v", h)
		}
	}
}

// documentedFileTypes reads the filetype table of scan/SCHEMA.md (kept
// equal to the code by scan's TestSchemaFileTypeTable): value -> magics.
func documentedFileTypes(t *testing.T) map[string][][]byte {
	doc, err := os.ReadFile(filepath.Join(fixture.Root(), "scan", "SCHEMA.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][][]byte{}
	row := regexp.MustCompile("(?m)^\\| `([^`]+)` \\| ((?:`[0-9A-F ]+`(?:, )?)+) \\|$")
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		for _, hx := range regexp.MustCompile("`([0-9A-F ]+)`").FindAllStringSubmatch(m[2], -1) {
			b, err := hex.DecodeString(strings.ReplaceAll(hx[1], " ", ""))
			if err != nil {
				t.Fatal(err)
			}
			out[m[1]] = append(out[m[1]], b)
		}
	}
	if len(out) < 50 {
		t.Fatalf("SCHEMA.md filetype table: %d values", len(out))
	}
	return out
}

// TestScanEveryDocumentedFileType: for every magic of the documented
// filetype table, a file in a real ext4 image that starts with it (and
// NULs) gets that filetype, and no other.
func TestScanEveryDocumentedFileType(t *testing.T) {
	types := documentedFileTypes(t)
	tree := t.TempDir()
	files := map[string]string{}
	want := map[hit]bool{}
	var rules strings.Builder
	i := 0
	for name, magics := range types {
		rule := fmt.Sprintf("ft_%d", i)
		i++
		fmt.Fprintf(&rules, "rule %s { condition: filetype == \"%s\" }\n", rule, name)
		for j, m := range magics {
			p := fmt.Sprintf("/ft/%s-%d", rule, j)
			files[p] = string(m) + "\x00\x00\x00\x00"
			want[hit{"", p, rule}] = true
		}
	}
	writeTree(t, tree, files)
	img := mkext4(t, tree)
	rf := filepath.Join(t.TempDir(), "ft.yar")
	os.WriteFile(rf, []byte(rules.String()), 0o644)
	got, errs, code := scanHits(t, "--rules", rf, "--include", "/ft/**", img)
	if code != 1 || len(errs) > 0 {
		t.Fatalf("exit %d, errors %v", code, errs)
	}
	for h := range want {
		if !got[h] {
			t.Errorf("missing %v", h)
		}
	}
	for h := range got {
		if !want[h] {
			t.Errorf("extra %v", h)
		}
	}
}

// TestScanNonUTF8Names: two files whose names differ only in a byte that
// is not UTF-8 keep distinct, exact names in every scan output format:
// path_raw in JSON and NDJSON, octal escapes in the table and in SARIF
// (which also validates).
func TestScanNonUTF8Names(t *testing.T) {
	tree := t.TempDir()
	names := []string{"/\xe9t\xe9.com", "/\xe9t\xe8.com"}
	writeTree(t, tree, map[string]string{names[0]: "MARKER-1 x", names[1]: "MARKER-1 y", "/ok.txt": "MARKER-1"})
	img := mkext4(t, tree)
	rf := filepath.Join(t.TempDir(), "m.yar")
	os.WriteFile(rf, []byte(`rule m { strings: $a = "MARKER-1" condition: $a }`), 0o644)

	wantRaw := map[string]bool{names[0]: true, names[1]: true}
	stdout, _, code := vmscope(t, "scan", "--format", "json", "--rules", rf, img)
	if code != 1 {
		t.Fatalf("json: exit %d", code)
	}
	var doc struct {
		Findings []struct {
			Path    string `json:"path"`
			PathRaw []byte `json:"path_raw"`
		} `json:"findings"`
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatal(err)
	}
	gotRaw := map[string]bool{}
	for _, f := range doc.Findings {
		switch {
		case f.PathRaw != nil:
			gotRaw[string(f.PathRaw)] = true
		case f.Path != "/ok.txt":
			t.Errorf("json: %q has no path_raw", f.Path)
		}
	}
	if len(gotRaw) != 2 || !gotRaw[names[0]] || !gotRaw[names[1]] {
		t.Errorf("json path_raw %q, want %q", keys(gotRaw), keys(wantRaw))
	}

	stdout, _, _ = vmscope(t, "scan", "--format", "ndjson", "--rules", rf, img)
	gotRaw = map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var v struct {
			Type    string `json:"type"`
			PathRaw string `json:"path_raw"`
		}
		json.Unmarshal([]byte(l), &v)
		if v.Type == "finding" && v.PathRaw != "" {
			b, err := base64.StdEncoding.DecodeString(v.PathRaw)
			if err != nil {
				t.Errorf("ndjson path_raw %q: %v", v.PathRaw, err)
			}
			gotRaw[string(b)] = true
		}
	}
	if len(gotRaw) != 2 || !gotRaw[names[0]] || !gotRaw[names[1]] {
		t.Errorf("ndjson path_raw %q, want %q", keys(gotRaw), keys(wantRaw))
	}

	stdout, _, _ = vmscope(t, "scan", "--rules", rf, img)
	for _, esc := range []string{`/\351t\351.com`, `/\351t\350.com`} {
		if !strings.Contains(stdout, esc) {
			t.Errorf("table lacks %s:\n%s", esc, stdout)
		}
	}
	if bytes.ContainsAny([]byte(stdout), "\xe9\xe8") || strings.ContainsRune(stdout, '\uFFFD') {
		t.Errorf("table prints raw or replaced bytes:\n%q", stdout)
	}

	stdout, _, _ = vmscope(t, "scan", "--format", "sarif", "--rules", rf, img)
	sarifschema.Validate(t, []byte(stdout))
	for _, esc := range []string{`/\\351t\\351.com`, `/\\351t\\350.com`, `%E9t%E9.com`, `%E9t%E8.com`} {
		if !strings.Contains(stdout, esc) {
			t.Errorf("sarif lacks %s", esc)
		}
	}
	if strings.Contains(stdout, `\ufffd`) || strings.ContainsRune(stdout, '\uFFFD') {
		t.Errorf("sarif has replacement characters")
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestScanCompiledRulesAndCache: --rules takes yarac output and finds what
// the sources find on the fixture image (and what yara finds on the
// extracted tree); yarac output of another format version exits 2 naming
// the libyara version; a poll with --state caches the compiled rules beside
// the state file.
func TestScanCompiledRulesAndCache(t *testing.T) {
	img := fixture.Path(t, "scan-overlay.qcow2")
	src := filepath.Join(fixture.Root(), "testdata", "rules", "markers.yar")
	dir := t.TempDir()
	bin := filepath.Join(dir, "markers.yarc")
	var args []string
	for _, k := range []string{"filename", "filepath", "extension", "filetype", "owner", "md5"} {
		args = append(args, "-d", k+"=")
	}
	if out, err := exec.Command(fixture.Tool(t, "yarac"), append(args, src, bin)...).CombinedOutput(); err != nil {
		t.Fatalf("yarac: %v: %s", err, out)
	}
	fromSrc, errs, code := scanHits(t, "--rules-cache", "off", "--rules", src, img)
	if code != 1 || len(errs) > 0 {
		t.Fatalf("sources: exit %d, %v", code, errs)
	}
	fromBin, errs, code := scanHits(t, "--rules", bin, img)
	if code != 1 || len(errs) > 0 {
		t.Fatalf("compiled: exit %d, %v", code, errs)
	}
	if len(fromSrc) == 0 || fmt.Sprint(sortedHits(fromSrc)) != fmt.Sprint(sortedHits(fromBin)) {
		t.Errorf("sources %v, compiled %v", sortedHits(fromSrc), sortedHits(fromBin))
	}
	b, _ := os.ReadFile(bin)
	b[4] ^= 0x40
	other := filepath.Join(dir, "other.yarc")
	os.WriteFile(other, b, 0o644)
	if _, stderr, code := vmscope(t, "scan", "--rules", other, img); code != 2 || !strings.Contains(stderr, "format version") || !strings.Contains(stderr, "libyara") {
		t.Errorf("other version: exit %d, %q", code, stderr)
	}

	st := filepath.Join(dir, "polls", "state.db")
	os.MkdirAll(filepath.Dir(st), 0o755)
	for i := 0; i < 2; i++ {
		if _, stderr, code := vmscope(t, "scan", "--dirty", "auto", "--state", st, "--rules", src, img); code == 2 {
			t.Fatalf("poll %d: exit 2: %s", i, stderr)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "polls", "vmscope-rules-cache", "*.yarc")); len(m) != 1 {
		t.Errorf("cache beside the state: %v, want one compiled rule set", m)
	}
	// Without --state: $XDG_CACHE_HOME/vmscope/rules; --rules-cache DIR wins.
	xdg := filepath.Join(dir, "xdg")
	t.Setenv("XDG_CACHE_HOME", xdg)
	if _, _, code := vmscope(t, "scan", "--rules", src, img); code != 1 {
		t.Fatalf("scan: exit %d", code)
	}
	if m, _ := filepath.Glob(filepath.Join(xdg, "vmscope", "rules", "*.yarc")); len(m) != 1 {
		t.Errorf("cache in XDG_CACHE_HOME: %v", m)
	}
	own := filepath.Join(dir, "own")
	if _, _, code := vmscope(t, "scan", "--rules-cache", own, "--rules", src, img); code != 1 {
		t.Fatalf("scan: exit %d", code)
	}
	if m, _ := filepath.Glob(filepath.Join(own, "*.yarc")); len(m) != 1 {
		t.Errorf("--rules-cache DIR: %v", m)
	}
}

func sortedHits(m map[hit]bool) []string {
	var out []string
	for h := range m {
		out = append(out, h.part+":"+h.path+" "+h.rule)
	}
	sort.Strings(out)
	return out
}
