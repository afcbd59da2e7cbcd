package main

import (
	"debug/elf"
	"errors"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestMakeStatic builds the static binary with `make static`, checks that
// it has no program interpreter and needs no shared library, and runs a
// scan with it.
func TestMakeStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("links a static binary")
	}
	root := fixture.Root()
	out, err := exec.Command(fixture.Tool(t, "make"), "-C", root, "static").CombinedOutput()
	if err != nil {
		t.Fatalf("make static: %v\n%s", err, out)
	}
	bin := filepath.Join(root, "bin", "vmscope-static")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a program interpreter: not static", bin)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", bin, libs)
	}
	cmd := exec.Command(bin, "scan", "--format", "ndjson", fixture.Path(t, "scan.img"))
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("static binary scan: %v, want exit 1 (findings)", err)
	}
}
