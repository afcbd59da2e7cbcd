package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/cfi"
)

func TestCfiShow(t *testing.T) {
	m := &cfi.Model{Build: cfi.Build{Banner: "Linux version test", TextPages: 100, Layout: strings.Repeat("0f", 32)}, Source: "plugin", LearnedMS: 2000,
		Pages: []cfi.Page{cfi.Core(1), cfi.Core(7), {Module: "dummy", Index: 0}}, Edges: []cfi.Edge{{From: cfi.Core(1), To: cfi.Core(7)}}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := vmscope(t, "cfi", "show", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"build: Linux version test", "pages: 3 (core 2, modules 1)", "edges: 1", "coverage: 2.00% of core text pages", "module dummy: 1 pages"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	out, _, code = vmscope(t, "cfi", "show", "--format", "json", path)
	var s cfi.ModelSummary
	if code != 0 || json.Unmarshal([]byte(out), &s) != nil || s.Pages != 3 || s.CorePages != 2 || s.Edges != 1 {
		t.Errorf("json (exit %d): %s", code, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, bytes.Replace(b, []byte(`"core+0x7"`), []byte(`"core+0x1"`), 1), 0o644)
	if _, errOut, code := vmscope(t, "cfi", "show", bad); code != 2 || !strings.Contains(errOut, "invalid model file") {
		t.Errorf("unsorted model: exit %d: %s", code, errOut)
	}
	if _, _, code := vmscope(t, "cfi", "monitor", "--guest", "gdb://127.0.0.1:1"); code != 2 {
		t.Errorf("monitor without --model: exit %d", code)
	}
	if _, _, code := vmscope(t, "cfi", "learn", "--guest", "gdb://127.0.0.1:1", "--out", bad, "--source", "nope"); code != 2 {
		t.Errorf("unknown source: exit %d", code)
	}
}

// TestCfiLearnMonitorSample learns with the sampler on the live fixture
// guest, monitors it with that model (NDJSON; exit 1 exactly when there
// are alert lines), refuses a model of another build, and leaves the
// guest running each time.
func TestCfiLearnMonitorSample(t *testing.T) {
	l := liveGuest(t)
	dir := t.TempDir()
	model := filepath.Join(dir, "model.json")
	out, errOut, code := vmscope(t, "cfi", "learn", "--guest", l.spec, "--out", model, "--source", "sample", "--duration", "4s", "--rate", "100")
	if code != 0 {
		t.Fatalf("learn: exit %d: %s", code, errOut)
	}
	l.mustRun(t)
	for _, want := range []string{"source: sample", "samples: ", "probability of seeing a page"} {
		if !strings.Contains(out, want) {
			t.Errorf("learn output lacks %q:\n%s", want, out)
		}
	}
	b, err := os.ReadFile(model)
	if err != nil {
		t.Fatal(err)
	}
	m, err := cfi.ParseModel(bytes.NewReader(b))
	if err != nil || len(m.Pages) == 0 || !strings.HasPrefix(m.Build.Banner, "Linux version ") {
		t.Fatalf("model: %v %+v", err, m)
	}
	out, errOut, code = vmscope(t, "cfi", "monitor", "--guest", l.spec, "--model", model, "--source", "sample", "--duration", "4s", "--format", "ndjson")
	l.mustRun(t)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if strings.TrimSpace(out) == "" {
		lines = nil
	}
	if (code == 1) != (len(lines) > 0) || (code != 0 && code != 1) {
		t.Fatalf("monitor: exit %d with %d alert lines: %s", code, len(lines), errOut)
	}
	for _, line := range lines {
		var a cfi.Alert
		if err := json.Unmarshal([]byte(line), &a); err != nil || a.Kind == "" || a.Address == "" || a.Owner == "" || a.Evidence == "" || a.Source != "sample" {
			t.Errorf("alert line %q: %v", line, err)
		}
	}
	t.Logf("sample model: %d pages; monitor: %d alerts", len(m.Pages), len(lines))
	m.Build.Banner += " other"
	other := filepath.Join(dir, "other.json")
	ob, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(other, ob, 0o644)
	_, errOut, code = vmscope(t, "cfi", "monitor", "--guest", l.spec, "--model", other, "--source", "sample", "--duration", "2s")
	if code != 2 || !strings.Contains(errOut, "another kernel build") {
		t.Errorf("model of another build: exit %d: %s", code, errOut)
	}
	l.mustRun(t)
}
