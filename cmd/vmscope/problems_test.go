package main

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

var summaryRE = regexp.MustCompile(`^vmscope: (\d+) problems?; the first: (.+)$`)

// summary finds the one summary line on stderr and returns its count.
func summary(t *testing.T, what, stderr string) int {
	t.Helper()
	n, found := 0, 0
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if m := summaryRE.FindStringSubmatch(l); m != nil {
			n, _ = strconv.Atoi(m[1])
			found++
		}
	}
	if found != 1 {
		t.Errorf("%s: %d summary lines on stderr, want 1:\n%s", what, found, stderr)
	}
	return n
}

// TestProblemsSummaryOnStderr: a command that meets problems prints a
// one-line summary of them on stderr in every output format (with JSON the
// problems are also in the document) and exits 2; one without problems
// prints none.
func TestProblemsSummaryOnStderr(t *testing.T) {
	tmp := t.TempDir()
	img, _ := hostileImage(t, tmp, "/nonexistent")
	rules := filepath.Join(fixture.Root(), "testdata", "rules", "markers.yar")

	// ls: the summary counts every problem line printed before it; JSON
	// carries the bad names' problems.
	for _, format := range []string{"table", "json", "ndjson"} {
		out, stderr, code := vmscope(t, "ls", "-r", "--format", format, img)
		if code != 2 {
			t.Errorf("ls --format %s: exit %d", format, code)
		}
		n := summary(t, "ls "+format, stderr)
		if lines := strings.Count(stderr, "\n") - 1; n != lines || n < 9 {
			t.Errorf("ls --format %s: summary says %d, %d problem lines:\n%s", format, n, lines, stderr)
		}
		if format != "table" && strings.Count(out, `"problem":`) != 9 {
			t.Errorf("ls --format %s: %d problems in the output, want 9 bad names", format, strings.Count(out, `"problem":`))
		}
	}

	// scan: the report's errors array, and stderr otherwise empty.
	for _, format := range []string{"json", "sarif", "ndjson", "table"} {
		out, stderr, code := vmscope(t, "scan", "--progress", "never", "--rules", rules, "--format", format, img)
		if code != 2 {
			t.Errorf("scan --format %s: exit %d", format, code)
		}
		n := summary(t, "scan "+format, stderr)
		if n < 1 {
			t.Errorf("scan --format %s: summary count %d", format, n)
		}
		if format == "json" {
			var rep struct {
				Errors []json.RawMessage `json:"errors"`
			}
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatal(err)
			}
			if len(rep.Errors) != n {
				t.Errorf("scan json: %d errors in the report, summary says %d", len(rep.Errors), n)
			}
		}
	}

	// diff --full and extract meet the same directory link.
	if _, stderr, code := vmscope(t, "diff", "--full", "--format", "json", img, img); code != 2 || summary(t, "diff", stderr) < 1 {
		t.Errorf("diff --full json: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := vmscope(t, "extract", img, filepath.Join(tmp, "x")); code != 2 || summary(t, "extract", stderr) < 9 {
		t.Errorf("extract: exit %d\n%s", code, stderr)
	}

	// No problem, no summary.
	clean := fixture.Path(t, "ext4-128.img")
	if _, stderr, code := vmscope(t, "ls", "-r", "--format", "json", clean); code != 0 || stderr != "" {
		t.Errorf("ls on a clean image: exit %d, stderr %q", code, stderr)
	}
}
