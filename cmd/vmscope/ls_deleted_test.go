package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

func irFixture(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", "out-ir", name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (bash testdata/ir/build.sh)", p)
	}
	return p
}

// TestDeletedCommands drives ls --deleted/--orphans, cat --deleted and
// scan --deleted on the image debugfs deleted from (timeline's
// TestDeletedMatchesFls holds the listing against fls -rd): the marks are
// TSK's; cat --deleted gives back the content kept before each rm and
// refuses a live file and an inode in use; scan --deleted finds a string
// only a deleted file holds, which the live scan does not.
func TestDeletedCommands(t *testing.T) {
	img := irFixture(t, "del-debugfs.img")
	kept := filepath.Join(filepath.Dir(img), "kept")
	before := stateOf(t, img)

	out, _, code := vmscope(t, "ls", img, "-r", "--deleted")
	if code != 0 {
		t.Fatalf("ls --deleted: exit %d", code)
	}
	for _, want := range []string{"/docs/report.txt (deleted)\n", "/docs/orphan.bin (deleted-realloc)\n", "/olddir/sub/deeper.txt (deleted)\n",
		"/big/file-with-a-long-name-010 (deleted-realloc)\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("ls -r --deleted lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "/keep/live.txt") || strings.Contains(out, "notes.txt") {
		t.Errorf("ls --deleted lists a live name:\n%s", out)
	}
	out, _, _ = vmscope(t, "ls", img, "/docs", "--deleted")
	if out != "/docs/orphan.bin (deleted-realloc)\n/docs/report.txt (deleted)\n" {
		t.Errorf("ls /docs --deleted:\n%s", out)
	}
	out, _, _ = vmscope(t, "ls", img, "--orphans", "-l")
	if !strings.Contains(out, "     415 -rw-r--r--   1 ") || strings.Count(out, "\n") != 1 {
		t.Errorf("ls --orphans: want the unlinked inode 415 only:\n%s", out)
	}

	for _, p := range []string{"docs/report.txt", "olddir/inner.txt", "olddir/sub/deeper.txt", "big/file-with-a-long-name-012"} {
		got, errOut, code := vmscope(t, "cat", "--deleted", img, "/"+p)
		want, err := os.ReadFile(filepath.Join(kept, p))
		if err != nil {
			t.Fatal(err)
		}
		if code != 0 || got != string(want) || !strings.Contains(errOut, "best effort") {
			t.Errorf("cat --deleted /%s: exit %d, %d bytes (kept %d): %s", p, code, len(got), len(want), errOut)
		}
	}
	for _, p := range []string{"/keep/live.txt", "/docs/orphan.bin"} {
		if got, _, code := vmscope(t, "cat", "--deleted", img, p); code != 2 || got != "" {
			t.Errorf("cat --deleted %s: exit %d, %d bytes", p, code, len(got))
		}
	}

	rules := filepath.Join(t.TempDir(), "r.yar")
	if err := os.WriteFile(rules, []byte("rule deleted_report { strings: $a = \"report line 000123\" condition: $a }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code = vmscope(t, "scan", "--deleted", "--rules", rules, "--format", "ndjson", img)
	if code != 1 || !strings.Contains(out, `"path":"/docs/report.txt (deleted)"`) {
		t.Errorf("scan --deleted: exit %d:\n%s", code, out)
	}
	if out, _, code = vmscope(t, "scan", "--rules", rules, img); code != 0 {
		t.Errorf("live scan matched a deleted file's content: exit %d\n%s", code, out)
	}
	if after := stateOf(t, img); after != before {
		t.Fatal("the image changed")
	}
}
