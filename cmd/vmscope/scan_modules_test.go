package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/scan"
)

// modulesFixture is testdata/out-modules (testdata/modules/build.sh), or
// the test skips (fails under CI).
func modulesFixture(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(fixture.Root(), "testdata", "out-modules")
	if _, err := os.Stat(filepath.Join(dir, ".done")); err != nil {
		fixture.Missing(t, "%s (bash testdata/modules/build.sh)", dir)
	}
	return dir
}

// modulePrefixLines runs vmscope scan --format ndjson and returns its
// findings and its module_prefix lines ("path modules prefix").
func modulePrefixLines(t *testing.T, args ...string) (map[hit]bool, map[string]string) {
	t.Helper()
	stdout, stderr, code := vmscope(t, append([]string{"scan", "--format", "ndjson"}, args...)...)
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, stderr)
	}
	hits, prefix := map[hit]bool{}, map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(stdout))
	for sc.Scan() {
		var l struct {
			Type    string   `json:"type"`
			Path    string   `json:"path"`
			Rule    string   `json:"rule"`
			Modules []string `json:"modules"`
			Prefix  int64    `json:"prefix"`
			Size    int64    `json:"size"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("ndjson line %q: %v", sc.Text(), err)
		}
		switch l.Type {
		case "finding":
			hits[hit{"", l.Path, l.Rule}] = true
		case "module_prefix":
			prefix[l.Path] = fmt.Sprintf("%v %d", l.Modules, l.Prefix)
		case "error":
			t.Errorf("error line %s", sc.Text())
		}
	}
	return hits, prefix
}

// TestScanModulesEqualYara: rules using the pe and elf modules on PE and
// ELF files built by mingw-w64 and gcc whose import directory and section
// headers lie past the first 4 MiB block. Up to --module-max-size vmscope's
// findings equal the yara CLI's on the same files; a bigger file is listed
// as module_prefix (its module rules saw the first block only).
func TestScanModulesEqualYara(t *testing.T) {
	dir := modulesFixture(t)
	img := filepath.Join(dir, "modules.img")
	rules := filepath.Join(dir, "modules.yar")
	// The fixture must put the structures past the first block, or this
	// test proves nothing.
	layout, err := os.ReadFile(filepath.Join(dir, "layout.txt"))
	if err != nil {
		t.Fatal(err)
	}
	sizes := map[string]int64{} // guest path -> file size
	for _, l := range strings.Split(strings.TrimSpace(string(layout)), "\n") {
		f := strings.Fields(l)
		off, _ := strconv.ParseInt(f[2], 10, 64)
		st, err := os.Stat(filepath.Join(dir, "files", f[0]))
		if err != nil {
			t.Fatal(err)
		}
		sizes["/"+f[0]] = st.Size()
		if st.Size() > scan.DefaultBlockSize && off <= scan.DefaultBlockSize {
			t.Fatalf("fixture: %s: %s %d is inside the first block", f[0], f[1], off)
		}
	}
	if len(sizes) != 8 {
		t.Fatalf("fixture: layout lists %d files, want 8", len(sizes))
	}

	want := map[hit]bool{}
	out, err := exec.Command(fixture.Tool(t, "yara"), "-r", rules, filepath.Join(dir, "files")).Output()
	if err != nil {
		t.Fatalf("yara -r: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		rule, p, _ := strings.Cut(line, " ")
		want[hit{"", strings.TrimPrefix(p, filepath.Join(dir, "files")), rule}] = true
	}
	// Every module rule matches every file of its kind under yara.
	for p := range sizes {
		rs := []string{"pe_imports_kernel32", "pe_imports_messagebox", "pe_is_pe"}
		if strings.HasPrefix(p, "/elf/") {
			rs = []string{"elf_has_symtab", "elf_rodata_big", "elf_is_elf"}
		}
		for _, r := range append(rs, "pad_marker") {
			if !want[hit{"", p, r}] {
				t.Fatalf("reference: yara does not match %s on %s: fixture broken", r, p)
			}
		}
	}

	const bound = 8 << 20
	for _, tc := range []struct {
		name  string
		args  []string
		bound int64
	}{
		{"default", nil, scan.DefaultModuleMaxSize},
		{"8MiB", []string{"--module-max-size", "8MiB"}, bound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, prefix := modulePrefixLines(t, append(tc.args, "--rules", rules, img)...)
			for p, size := range sizes {
				for _, r := range []string{"pe_imports_kernel32", "pe_imports_messagebox", "pe_is_pe", "elf_has_symtab", "elf_rodata_big", "elf_is_elf", "pad_marker"} {
					h := hit{"", p, r}
					if size <= tc.bound && got[h] != want[h] {
						t.Errorf("%s (%d bytes) %s: vmscope %v, yara %v", p, size, r, got[h], want[h])
					}
				}
				note, listed := prefix[p]
				if size > tc.bound {
					if note != "[elf pe] 4194304" {
						t.Errorf("%s (%d bytes > %d): module_prefix %q, want [elf pe] 4194304", p, size, tc.bound, note)
					}
					// What the note warns about: module rules that need
					// the end of the file miss; the others still match.
					miss := hit{"", p, "pe_imports_kernel32"}
					if strings.HasPrefix(p, "/elf/") {
						miss = hit{"", p, "elf_has_symtab"}
					}
					if got[miss] || !got[hit{"", p, "pad_marker"}] {
						t.Errorf("%s: past the bound %v = %v, pad_marker = %v", p, miss.rule, got[miss], got[hit{"", p, "pad_marker"}])
					}
				} else if listed {
					t.Errorf("%s (%d bytes) listed as module_prefix %q", p, size, note)
				}
			}
			for h := range got {
				if !want[h] {
					t.Errorf("vmscope found %v, yara did not", h)
				}
			}
		})
	}
}
