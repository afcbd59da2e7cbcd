package scan

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/sarifschema"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// goldenReport scans a fixed set of in-memory files with the default rules
// and a rule with tags and many matches, with jobs workers; durations are
// zeroed. Two of the files have names that are not UTF-8 and differ in one
// byte.
func goldenReport(t *testing.T, jobs int) *Report {
	t.Helper()
	def, err := DefaultRules()
	if err != nil {
		t.Fatal(err)
	}
	_ = def
	dir := t.TempDir()
	write(t, dir, "/webshell.yar", mustReadEmbedded(t, "rules/webshell.yar"))
	write(t, dir, "/eicar.yar", mustReadEmbedded(t, "rules/eicar.yar"))
	write(t, dir, "/local/many.yar", []byte(`rule Many_Lines : test demo {
  meta:
    description = "every line of a file"
    score = 40
    reference = "not a url"
  strings: $nl = "\n"
  condition: #nl > 20
}`))
	r, err := LoadRules(dir)
	if err != nil {
		t.Fatal(err)
	}
	mem := func(s string) *bytes.Reader { return bytes.NewReader([]byte(s)) }
	lines := strings.Repeat("line\n", 30)
	shell := "<?php @eval(base64_decode($_POST['x'])); ?>\n"
	files := []File{
		{Partition: "p2", FS: "ext4", Path: "/var/www/html/shell.php", Ino: 1201, Size: int64(len(shell)), Data: mem(shell)},
		{Partition: "p1", FS: "ext4", Path: "/eicar.com", Ino: 12, Size: int64(len(eicar)), Data: mem(eicar)},
		{Partition: "p1", FS: "ext4", Path: "/etc/lines", Ino: 13, Size: int64(len(lines)), Data: mem(lines)},
		{Partition: "p1", FS: "ext4", Path: "/etc/clean", Ino: 14, Size: 5, Data: mem("clean")},
		{Partition: "p1", FS: "ext4", Path: "/var/log/huge.log", Ino: 15, Size: 1 << 30, Data: mem("")},
		{Partition: "p1", FS: "ext4", Path: "/bad file", Ino: 16, Size: 10, Data: failReader{mem(""), 0}},
		{Partition: "p1", FS: "ext4", Path: "/\xe9t\xe9.com", Ino: 17, Size: int64(len(eicar)), Data: mem(eicar)},
		{Partition: "p1", FS: "ext4", Path: "/\xe9t\xe8.com", Ino: 18, Size: int64(len(eicar)), Data: mem(eicar)},
		{Partition: "p1", FS: "ext4", Path: "/big-\xff", Ino: 19, Size: 2 << 20, Data: mem("")},
		{Partition: "p1", FS: "ext4", Path: "/bad-\xfe", Ino: 20, Size: 10, Data: failReader{mem(""), 0}},
	}
	res := scanFiles(t, r, files, WithMaxFileSize(1<<20), WithJobs(jobs))
	res.Summary.Duration = 0
	// The error text carries no temp paths; keep it.
	return &Report{
		Version: "test",
		Image: ImageInfo{
			Path: "/images/web01.qcow2", Format: "qcow2", Size: 21474836480,
			Layers: []LayerInfo{{"/images/web01.qcow2", "qcow2"}, {"/images/debian-12.qcow2", "qcow2"}},
			Filesystems: []FSInfo{
				{"p1", "ext4", "root", "0b1c2d3e-0000-4000-8000-000000000001"},
				{"p2", "ext4", "www", "0b1c2d3e-0000-4000-8000-000000000002"},
			},
		},
		Rules:  r,
		Result: res,
	}
}

func mustReadEmbedded(t *testing.T, name string) []byte {
	b, err := defaultRulesFS.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReportGolden(t *testing.T) {
	rep := goldenReport(t, 3)
	if rep.Result.Summary.Findings != 5 || rep.Result.Summary.Errors != 2 || rep.Result.Summary.Skipped != 2 {
		t.Fatalf("summary %+v", rep.Result.Summary)
	}
	for _, format := range Formats {
		t.Run(format, func(t *testing.T) {
			var b bytes.Buffer
			if err := rep.Write(&b, format); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "golden", "report."+format)
			if *update {
				if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if !bytes.Equal(b.Bytes(), want) {
				t.Errorf("%s differs from %s (run with -update):\n%s", format, golden, b.String())
			}
			// Machine formats parse; every NDJSON line has a type.
			switch format {
			case FormatJSON:
				var v map[string]any
				if err := json.Unmarshal(b.Bytes(), &v); err != nil {
					t.Error(err)
				}
			case FormatSARIF:
				sarifschema.Validate(t, b.Bytes())
			case FormatNDJSON:
				for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
					var v map[string]any
					if err := json.Unmarshal([]byte(l), &v); err != nil || v["type"] == nil {
						t.Errorf("line %q: %v", l, err)
					}
				}
			}
		})
	}
	// The same scan with other worker counts gives the same bytes.
	var a bytes.Buffer
	rep.WriteJSON(&a)
	for _, jobs := range []int{1, 2, 7} {
		var b bytes.Buffer
		goldenReport(t, jobs).WriteJSON(&b)
		if !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Errorf("report with %d workers differs from the one with 3", jobs)
		}
	}
	if err := rep.Write(&a, "xml"); !errors.Is(err, ErrFormat) {
		t.Errorf("unknown format: %v", err)
	}
}

func TestSARIFLevel(t *testing.T) {
	for meta, want := range map[string]string{"critical": "error", "high": "error", "medium": "warning", "low": "note", "": "warning"} {
		m := map[string]any{}
		if meta != "" {
			m["severity"] = meta
		}
		if got := SARIFLevel(Severity(m)); got != want {
			t.Errorf("%q: %s, want %s", meta, got, want)
		}
	}
	if got := SARIFLevel(Severity(map[string]any{"score": 80})); got != "error" {
		t.Errorf("score 80: %s", got)
	}
}
