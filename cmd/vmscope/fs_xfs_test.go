package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

func xfsImage(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(fixture.Root(), "testdata", "out-xfs", name)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "%s (run bash testdata/xfs/build.sh)", p)
	}
	return p
}

// TestXFSCommands runs info, ls, cat, scan, diff and dirty on the XFS
// fixture (testdata/xfs/build.sh): each works, and says what the kernel
// and the script that changed the image say.
func TestXFSCommands(t *testing.T) {
	img, ov := xfsImage(t, "xfs.img"), xfsImage(t, "overlay.qcow2")
	out, errs, code := vmscope(t, "info", img)
	if code != 0 || !strings.Contains(out, "xfs") || !strings.Contains(out, "6a0e1d44-3b9c-4e2f-8a51-0c7d2e9f4b11") {
		t.Errorf("info: exit %d: %s%s", code, out, errs)
	}
	out, errs, code = vmscope(t, "info", xfsImage(t, "xfs-dirtylog.img"))
	if code != 0 || !strings.Contains(out, "log-needs-recovery") {
		t.Errorf("info of a dirty log: exit %d: %s%s", code, out, errs)
	}
	out, errs, code = vmscope(t, "ls", "-l", img, "/x")
	for _, want := range []string{"btree-clone", "sym-remote", "unwritten", "dirs"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("ls -l /x: exit %d, lacks %q: %s%s", code, want, out, errs)
		}
	}
	out, errs, code = vmscope(t, "ls", "-r", img, "/x/dirs/node")
	if code != 0 || strings.Count(out, "a-rather-long-file-name-for-the-node-directory-") != 6000 {
		t.Errorf("ls -r of the node directory: exit %d, %d names: %s", code, strings.Count(out, "\n"), errs)
	}
	sums, err := os.ReadFile(xfsImage(t, "sums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"x/holes", "x/btree", "x/unwritten", "x/reflink-part"} {
		out, errs, code = vmscope(t, "cat", img, "/"+f)
		h := sha256.Sum256([]byte(out))
		if code != 0 || !strings.Contains(string(sums), hex.EncodeToString(h[:])+"  ./"+f+"\n") {
			t.Errorf("cat %s: exit %d, %d bytes, sha256 not the kernel's: %s", f, code, len(out), errs)
		}
	}
	rules := filepath.Join(t.TempDir(), "r.yar")
	os.WriteFile(rules, []byte("rule holes_a { strings: $a = { 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 } condition: $a }\n"), 0o644)
	out, errs, code = vmscope(t, "scan", "--rules", rules, "--include", "/x/h*", "--include", "/x/dirs/**", img)
	if !strings.Contains(out, "/x/holes") || !strings.Contains(out, "holes_a") {
		t.Errorf("scan: exit %d: %s%s", code, out, errs)
	}
	out, errs, code = vmscope(t, "diff", img, ov)
	for _, want := range []string{"/x/btree", "/x/dirs/leaf/created-file", "/x/dirs/sf/f2-renamed", "/x/holes", "/x/past"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("diff: exit %d, lacks %s: %s%s", code, want, out, errs)
		}
	}
	st := filepath.Join(t.TempDir(), "s.db")
	for i := 0; i < 2; i++ {
		_, errs, code = vmscope(t, "dirty", ov, "--state", st, "--format", "ndjson")
		if code != 0 {
			t.Fatalf("dirty poll %d: exit %d: %s", i, code, errs)
		}
	}
}
