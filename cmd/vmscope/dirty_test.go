package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

func TestDiffAndDirtyCommands(t *testing.T) {
	base, ov := fixture.Path(t, "ext4.img"), fixture.Path(t, "overlay-raw.qcow2")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"diff", base, ov}, &out, &errb); code != 0 {
		t.Fatalf("diff: exit %d: %s", code, errb.String())
	}
	// The reference: the changes debugfs made in testdata/fixtures.sh.
	for _, want := range []string{"added     file  /etc/new-file.txt", "deleted   file  /etc/shadow", "/etc/passwd", "/var-new", "/etc/hostname"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("diff output lacks %q:\n%s", want, out.String())
		}
	}
	st := filepath.Join(t.TempDir(), "s.db")
	for i, wantMin := range []int{100, 0} {
		out.Reset()
		if code := run(context.Background(), []string{"dirty", ov, "--state", st, "--format", "ndjson"}, &out, &errb); code != 0 {
			t.Fatalf("dirty poll %d: exit %d: %s", i, code, errb.String())
		}
		if n := strings.Count(out.String(), "\n"); n < wantMin {
			t.Errorf("poll %d: %d changes", i, n)
		}
	}
}

// TestDiffClosesImages checks that diff closes every image file it opens
// (the newer one, and the older one the base source or --full opens), also
// when it fails: the process holds no more open files after it than
// before.
func TestDiffClosesImages(t *testing.T) {
	base, ov := fixture.Path(t, "ext4.img"), fixture.Path(t, "overlay-raw.qcow2")
	other := fixture.Path(t, "mbr.img")
	openFiles := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			fixture.Missing(t, "/proc/self/fd: %v", err)
		}
		return len(ents)
	}
	for _, args := range [][]string{
		{"diff", base, ov},
		{"diff", "--full", base, ov},
		{"diff", other, ov},           // a disk of another size: the comparison fails
		{"diff", ov, "/no/such/file"}, // the newer image cannot be opened
		{"dirty", ov},
	} {
		before := openFiles()
		var out, errb bytes.Buffer
		code := run(context.Background(), args, &out, &errb)
		if after := openFiles(); after != before {
			t.Errorf("%v (exit %d): %d open files before, %d after", args, code, before, after)
		}
	}
}
