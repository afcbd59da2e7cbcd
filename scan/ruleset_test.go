package scan

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmscope/vmscope/internal/fixture"
)

// includeTree writes a rule tree as users ship one: an index that
// includes files of the tree (one in a subdirectory, which includes its
// own neighbour relatively), plus a file nobody includes.
func includeTree(t *testing.T) string {
	dir := t.TempDir()
	write(t, dir, "/index.yar", []byte("include \"sub/a.yar\"\ninclude \"b.yar\"\n"))
	write(t, dir, "/sub/a.yar", []byte("include \"c.yar\"\nrule A { strings: $a = \"ALPHA\" condition: $a and C }\n"))
	write(t, dir, "/sub/c.yar", []byte("private rule C { strings: $c = \"CHARLIE\" condition: $c }\n"))
	write(t, dir, "/b.yar", []byte("rule B { strings: $b = \"BRAVO\" condition: $b }\n"))
	write(t, dir, "/deep/er/own.yara", []byte("rule Own { strings: $o = \"OWN\" condition: $o and filename == \"f3\" }\n"))
	write(t, dir, "/README.md", []byte("not a rule file\n"))
	return dir
}

func memFiles(m map[string]string) []File {
	var fs []File
	for p, s := range m {
		fs = append(fs, File{Partition: "p1", FS: "ext4", Path: p, Size: int64(len(s)), Data: bytes.NewReader([]byte(s))})
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].Path < fs[j].Path })
	return fs
}

var includeFiles = map[string]string{
	"/f1": "xx ALPHA yy CHARLIE",
	"/f2": "BRAVO",
	"/f3": "OWN",
	"/f4": "ALPHA alone",
}

// TestRulesIncludesAndRecursion: a directory is walked recursively for
// .yar and .yara files; relative includes are resolved from the including
// file (also from a subdirectory); a file that another one includes is
// compiled once, where it is included; the findings equal the yara CLI's
// on the same tree; an included file is part of the digest; an error in an
// included file names it.
func TestRulesIncludesAndRecursion(t *testing.T) {
	dir := includeTree(t)
	r, err := LoadRules(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, s := range r.Sources() {
		ns = append(ns, s.Namespace)
	}
	if got := strings.Join(ns, " "); got != "deep/er/own.yara index.yar" {
		t.Errorf("sources %q, want the index and the file nobody includes", got)
	}
	if r.Count() != 3 { // A, B, Own (C is private)
		t.Errorf("count %d, want 3", r.Count())
	}
	res := scanFiles(t, r, memFiles(includeFiles))
	got := scanPairs(res)
	want := []string{"/f1 A", "/f2 B", "/f3 Own"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("findings %v, want %v", got, want)
	}
	// The yara CLI, given the same two entry points, agrees.
	yaraBin := needYara(t)
	host := t.TempDir()
	var files []File
	for p, s := range includeFiles {
		write(t, host, p, []byte(s))
		files = append(files, File{Path: p, Size: int64(len(s)), Data: bytes.NewReader([]byte(s))})
	}
	ref := yaraPairs(t, yaraBin, []string{filepath.Join(dir, "deep/er/own.yara"), filepath.Join(dir, "index.yar")}, host, files)
	if fmt.Sprint(ref) != fmt.Sprint(want) {
		t.Errorf("yara CLI %v, want %v", ref, want)
	}

	// A symlink to the tree is walked like the tree.
	link := filepath.Join(t.TempDir(), "rules")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	if rl, err := LoadRules(link); err != nil || rl.Digest() != r.Digest() || rl.Count() != r.Count() {
		t.Errorf("through a symlink: %v", err)
	}

	// The digest covers included files, even two levels down.
	d := r.Digest()
	write(t, dir, "/sub/c.yar", []byte("private rule C { strings: $c = \"CHARLIE!\" condition: $c }\n"))
	r2, err := LoadRules(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Digest() == d {
		t.Error("digest unchanged after an included file changed")
	}
	write(t, dir, "/sub/c.yar", []byte("private rule C {\n  condition: nope\n}\n"))
	_, err = LoadRules(dir)
	var re *RulesError
	if !errors.As(err, &re) || !strings.Contains(re.File, "c.yar") || re.Line != 2 {
		t.Errorf("error in an included file: %v, want c.yar line 2", err)
	}
	// A missing include is an error naming it.
	write(t, dir, "/sub/c.yar", []byte("include \"nowhere.yar\"\n"))
	if _, err := LoadRules(dir); !errors.Is(err, ErrRules) || !strings.Contains(err.Error(), "nowhere.yar") {
		t.Errorf("missing include: %v", err)
	}
}

// yarac compiles srcs with the yarac CLI, with vmscope's externals defined
// (as a user compiling a Loki rule set does) when ext.
func yarac(t *testing.T, ext bool, out string, srcs ...string) {
	t.Helper()
	var args []string
	if ext {
		for _, k := range externalNames {
			args = append(args, "-d", k+"=")
		}
	}
	args = append(append(args, srcs...), out)
	if b, err := exec.Command(fixture.Tool(t, "yarac"), args...).CombinedOutput(); err != nil {
		t.Fatalf("yarac %v: %v: %s", args, err, b)
	}
}

// TestCompiledRules: rules compiled by the real yarac give the same
// findings (rules, string offsets, externals) as their sources; compiled
// rules of another format version, garbage behind the magic, and compiled
// rules mixed with sources are refused with clear errors; yarac output
// without our externals still scans.
func TestCompiledRules(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "set.yar")
	os.WriteFile(src, []byte(`
import "hash"
rule Str : t1 { meta: score = 80 strings: $a = "needle" $b = { 6E 65 65 64 } condition: $a and #b > 0 }
rule Ext { condition: filetype == "EXE" and extension == ".dll" and filepath contains "/win/" }
rule Own { condition: owner == "www-data" and filename == "shell.php" }
rule Hash { condition: hash.md5(0, filesize) == "5d41402abc4b2a76b9719d911017c592" }
`), 0o644)
	files := []File{
		{Path: "/a/needle.txt", Size: 20, Data: bytes.NewReader([]byte("..needle....needle.."))},
		{Path: "/win/x.DLL", Size: 4, Data: bytes.NewReader([]byte("MZ\x90\x00"))},
		{Path: "/var/www/shell.php", Size: 3, Owner: "www-data", Data: bytes.NewReader([]byte("php"))},
		{Path: "/hello", Size: 5, Data: bytes.NewReader([]byte("hello"))},
		{Path: "/nothing", Size: 4, Data: bytes.NewReader([]byte("none"))},
	}
	fromSrc, err := LoadRules(src)
	if err != nil {
		t.Fatal(err)
	}
	compiled := filepath.Join(dir, "set.yarc")
	yarac(t, true, compiled, src)
	fromBin, err := LoadRules(compiled)
	if err != nil {
		t.Fatal(err)
	}
	if !fromBin.Compiled() || fromBin.Count() != fromSrc.Count() {
		t.Fatalf("compiled: %v, %d rules vs %d", fromBin.Compiled(), fromBin.Count(), fromSrc.Count())
	}
	a, b := scanFiles(t, fromSrc, files), scanFiles(t, fromBin, files)
	if len(a.Findings) != 4 {
		t.Errorf("sources: %d findings, want 4: %v", len(a.Findings), scanPairs(a))
	}
	if len(a.Findings) != len(b.Findings) {
		t.Fatalf("sources %v, compiled %v", scanPairs(a), scanPairs(b))
	}
	for i := range a.Findings {
		x, y := a.Findings[i], b.Findings[i]
		x.Namespace, y.Namespace = "", "" // the file name vs yarac's default namespace
		if fmt.Sprint(x) != fmt.Sprint(y) {
			t.Errorf("finding %d: sources %+v, compiled %+v", i, x, y)
		}
	}

	// Without externals (rules that use none): still scans.
	plain := filepath.Join(dir, "plain.yar")
	os.WriteFile(plain, []byte(`rule P { strings: $a = "needle" condition: $a }`), 0o644)
	plainBin := filepath.Join(dir, "plain.yarc")
	yarac(t, false, plainBin, plain)
	rp, err := LoadRules(plainBin)
	if err != nil {
		t.Fatal(err)
	}
	if res := scanFiles(t, rp, files); len(res.Errors) != 0 || fmt.Sprint(scanPairs(res)) != "[/a/needle.txt P]" {
		t.Errorf("compiled without externals: %v, errors %v", scanPairs(res), res.Errors)
	}

	data, _ := os.ReadFile(compiled)
	other := filepath.Join(dir, "other.yarc")
	patched := append([]byte(nil), data...)
	patched[4]++
	os.WriteFile(other, patched, 0o644)
	_, err = LoadRules(other)
	if !errors.Is(err, ErrRulesVersion) || !errors.Is(err, ErrRules) || !strings.Contains(err.Error(), LibyaraVersion) {
		t.Errorf("other format version: %v", err)
	}
	garbage := filepath.Join(dir, "garbage.yarc")
	os.WriteFile(garbage, append(append([]byte("YARA"), byte(CompiledRulesVersion)), bytes.Repeat([]byte{0xA5}, 300)...), 0o644)
	if _, err := LoadRules(garbage); !errors.Is(err, ErrRules) || errors.Is(err, ErrRulesVersion) || !strings.Contains(err.Error(), "not valid compiled") {
		t.Errorf("garbage: %v", err)
	}
	trunc := filepath.Join(dir, "trunc.yarc")
	os.WriteFile(trunc, data[:len(data)/2], 0o644)
	if _, err := LoadRules(trunc); !errors.Is(err, ErrRules) {
		t.Errorf("truncated: %v", err)
	}
	if _, err := LoadRules(compiled, plain); !errors.Is(err, ErrRules) || !strings.Contains(err.Error(), "cannot be combined") {
		t.Errorf("mixed: %v", err)
	}
	// A binary file that is not compiled rules is a source that does not compile.
	bin := filepath.Join(dir, "x.yar")
	os.WriteFile(bin, []byte("\x7fELF\x02\x01\x01garbage"), 0o644)
	if _, err := LoadRules(bin); !errors.Is(err, ErrRules) {
		t.Errorf("binary non-rules: %v", err)
	}
}

// TestRulesCache: the first load compiles and writes the cache, the second
// loads it (same findings), a change to any source, included file or not,
// compiles again, and a corrupt cache file is replaced.
func TestRulesCache(t *testing.T) {
	defer func(w time.Duration) { racyWindow = w }(racyWindow)
	racyWindow = 0 // files written by the test are not racy
	dir := includeTree(t)
	cache := filepath.Join(t.TempDir(), "cache")
	load := func() *Rules {
		t.Helper()
		r, err := LoadRulesCached(cache, dir)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r1 := load()
	if r1.Cached() {
		t.Fatal("first load came from the cache")
	}
	ents, _ := filepath.Glob(filepath.Join(cache, "*.yarc"))
	if len(ents) != 1 {
		t.Fatalf("cache files %v, want 1", ents)
	}
	r2 := load()
	if !r2.byStamp {
		t.Error("unchanged files: not found by their stamps")
	}
	if !r2.Cached() || r2.Digest() != r1.Digest() || r2.Count() != r1.Count() {
		t.Fatalf("second load: cached %v, digest %s/%s, count %d/%d", r2.Cached(), r2.Digest(), r1.Digest(), r2.Count(), r1.Count())
	}
	if a, b := scanPairs(scanFiles(t, r1, memFiles(includeFiles))), scanPairs(scanFiles(t, r2, memFiles(includeFiles))); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("compiled %v, cached %v", a, b)
	}
	if f := scanFiles(t, r2, memFiles(includeFiles)).Findings; len(f) == 0 || f[0].Meta != nil && len(f[0].Tags) != 0 {
		t.Errorf("cached findings %+v", f)
	}
	// A change two includes down: compiled again, and the new rule is used.
	old, _ := os.ReadFile(filepath.Join(dir, "sub/c.yar"))
	write(t, dir, "/sub/c.yar", []byte("private rule C { strings: $c = \"yy\" condition: $c }\n"))
	r3 := load()
	if r3.Cached() || r3.Digest() == r1.Digest() {
		t.Errorf("after an include changed: cached %v", r3.Cached())
	}
	if got := scanPairs(scanFiles(t, r3, memFiles(includeFiles))); fmt.Sprint(got) != "[/f1 A /f2 B /f3 Own]" {
		t.Errorf("after the change: %v", got)
	}
	if r := load(); !r.Cached() {
		t.Error("unchanged again: not cached")
	}
	write(t, dir, "/sub/c.yar", old)
	if r := load(); !r.Cached() || r.Digest() != r1.Digest() {
		t.Error("back to the first sources: the first cache entry is not used")
	}
	// A walked file nobody includes changes: compiled again.
	write(t, dir, "/deep/er/own.yara", []byte("rule Own { condition: false }\n"))
	if r := load(); r.Cached() {
		t.Error("after a walked file changed: cached")
	}
	// An include outside the walked tree changes: compiled again.
	out := t.TempDir()
	write(t, out, "/common/x.yar", []byte("rule X { strings: $x = \"OWN\" condition: $x }\n"))
	named := filepath.Join(out, "named.yar")
	os.WriteFile(named, []byte("include \"common/x.yar\"\n"), 0o644)
	loadN := func() *Rules {
		t.Helper()
		r, err := LoadRulesCached(cache, named)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := loadN(); r.Cached() {
		t.Error("new set: cached")
	}
	if r := loadN(); !r.byStamp {
		t.Error("named file with include, unchanged: not by stamp")
	}
	write(t, out, "/common/x.yar", []byte("rule X { strings: $x = \"OWN!\" condition: $x }\n"))
	if r := loadN(); r.Cached() {
		t.Error("after the include outside the tree changed: cached")
	}
	// Racy files (changed within the window) are never indexed by stamp.
	racyWindow = time.Hour
	write(t, out, "/common/x.yar", []byte("rule X { strings: $x = \"OWN?\" condition: $x }\n"))
	loadN()
	if r := loadN(); r.byStamp || !r.Cached() {
		t.Errorf("racy: by stamp %v, cached %v; want by content", r.byStamp, r.Cached())
	}
	racyWindow = 0

	// A corrupt cache file is ignored and replaced.
	ents, _ = filepath.Glob(filepath.Join(cache, "*.yarc"))
	for _, e := range ents {
		os.WriteFile(e, []byte("YARA\x13garbage"), 0o600)
	}
	if r := load(); r.Cached() {
		t.Error("corrupt cache used")
	}
	if r := load(); !r.Cached() {
		t.Error("corrupt cache not replaced")
	}
	if left, _ := filepath.Glob(filepath.Join(cache, ".tmp-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// Pruning: entries unused for longer than cacheMaxAge go, a used one
	// stays (loads refresh it), other files are left alone.
	old2 := time.Now().Add(-cacheMaxAge - time.Hour)
	ents, _ = filepath.Glob(filepath.Join(cache, "*"))
	for _, e := range ents {
		os.Chtimes(e, old2, old2)
	}
	os.WriteFile(filepath.Join(cache, "other.txt"), nil, 0o600)
	os.Chtimes(filepath.Join(cache, "other.txt"), old2, old2)
	load() // by stamp: refreshes its .yarc
	pruneCache(cache, time.Now())
	left, _ := filepath.Glob(filepath.Join(cache, "*.yarc"))
	if len(left) != 1 {
		t.Errorf("after pruning: %v, want the one in use", left)
	}
	if _, err := os.Stat(filepath.Join(cache, "other.txt")); err != nil {
		t.Error("pruning removed a file that is not the cache's")
	}
	if r := load(); !r.Cached() {
		t.Error("the entry in use was pruned")
	}
}
