package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// evidenceChain makes a 2-layer qcow2 chain with qemu-img in a temporary
// folder, and names for its files: the base by a symlink and by a hard link.
func evidenceChain(t *testing.T) (top, base string, aliases []string) {
	t.Helper()
	qimg, err := exec.LookPath("qemu-img")
	if err != nil {
		fixture.Missing(t, "qemu-img not installed")
	}
	dir := t.TempDir()
	base, top = filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", base, "64M"},
		{"create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top},
	} {
		if out, err := exec.Command(qimg, args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	sym, hard := filepath.Join(dir, "sym"), filepath.Join(t.TempDir(), "hard")
	if err := os.Symlink(base, sym); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(base, hard); err != nil {
		t.Fatal(err)
	}
	return top, base, []string{top, base, sym, hard}
}

// TestScanOutputRefusesEvidence: scan --output naming the image, a
// backing file, or either through a symlink or a hard link is refused with
// a clear error before anything is written; a new file is fine.
func TestScanOutputRefusesEvidence(t *testing.T) {
	top, _, aliases := evidenceChain(t)
	rules := filepath.Join(fixture.Root(), "testdata", "rules", "markers.yar")
	for _, out := range aliases {
		before := stateOf(t, out)
		_, stderr, code := vmscope(t, "scan", "--rules", rules, "--output", out, top)
		if code != 2 || !strings.Contains(stderr, "refusing to write over evidence") {
			t.Errorf("scan --output %s: exit %d, stderr %q", out, code, stderr)
		}
		if stateOf(t, out) != before {
			t.Errorf("scan --output %s changed it", out)
		}
	}
	out := filepath.Join(t.TempDir(), "report.json")
	if _, stderr, code := vmscope(t, "scan", "--rules", rules, "--format", "json", "--output", out, top); code != 0 {
		t.Errorf("scan --output to a new file: exit %d %s", code, stderr)
	}
}

// TestGuestDumpRefusesEvidence attaches a qcow2 chain to the live guest
// (QMP blockdev-add) and checks that guest dump refuses to write over any
// of its files, as QEMU's own query-named-block-nodes lists them.
func TestGuestDumpRefusesEvidence(t *testing.T) {
	l := liveGuest(t)
	top, _, aliases := evidenceChain(t)
	ctx := context.Background()
	if _, err := l.ref.Execute(ctx, "blockdev-add", map[string]any{
		"node-name": "evidence", "driver": "qcow2", "read-only": true,
		"file": map[string]any{"driver": "file", "filename": top, "read-only": true},
	}); err != nil {
		t.Fatal(err)
	}
	defer l.ref.Execute(ctx, "blockdev-del", map[string]any{"node-name": "evidence"})
	for _, out := range aliases {
		before := stateOf(t, out)
		_, stderr, code := vmscope(t, "guest", "dump", "--guest", l.spec, out)
		if code != 2 || !strings.Contains(stderr, "refusing to write over evidence") {
			t.Errorf("guest dump %s: exit %d, stderr %q", out, code, stderr)
		}
		if stateOf(t, out) != before {
			t.Errorf("guest dump %s changed it", out)
		}
	}
	l.mustRun(t)
}
