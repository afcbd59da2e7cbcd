package main

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// TestVersion: --version prints the module version, the commit the binary
// was built from, and the libyara version, which pkg-config (the
// installed library's own metadata) confirms; a binary built with the
// Makefile's -ldflags names the commit git names.
func TestVersion(t *testing.T) {
	out, stderr, code := vmscope(t, "--version")
	if code != 0 || stderr != "" {
		t.Fatalf("--version: exit %d, %q", code, stderr)
	}
	pc, err := exec.Command("pkg-config", "--modversion", "yara").Output()
	if err != nil {
		fixture.Missing(t, "pkg-config yara: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !regexp.MustCompile(`^vmscope \S+$`).MatchString(lines[0]) ||
		!strings.HasPrefix(lines[1], "commit ") ||
		!strings.HasSuffix(lines[2], ", libyara "+strings.TrimSpace(string(pc))) {
		t.Errorf("--version:\n%s\nwant vmscope VERSION / commit C / go, libyara %s", out, pc)
	}

	head, err := exec.Command("git", "-C", fixture.Root(), "rev-parse", "HEAD").Output()
	if err != nil {
		fixture.Missing(t, "not a git checkout: %v", err)
	}
	// the tests' shared binary, built with the Makefile's -X main.commit
	bin := vmscopeBin(t)
	if testBin.commit != strings.TrimSpace(string(head)) {
		t.Fatalf("the test binary was built with commit %q, HEAD is %s", testBin.commit, head)
	}
	got, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	mod, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	// go version -m: "\tmod\tgithub.com/vmscope/vmscope\t(devel)\t".
	m := regexp.MustCompile(`(?m)^\s*mod\s+\S+\s+(\S+)`).FindSubmatch(mod)
	if m == nil {
		t.Fatalf("go version -m:\n%s", mod)
	}
	if !strings.HasPrefix(string(got), "vmscope "+string(m[1])+"\ncommit "+strings.TrimSpace(string(head))) {
		t.Errorf("built binary --version:\n%s\nwant module %s, commit %s", got, m[1], head)
	}
}

// TestRootHelpNamesEveryFamily: the root help describes every command, not
// only the disk ones.
func TestRootHelpNamesEveryFamily(t *testing.T) {
	out, _, code := vmscope(t, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	long := newRoot().Long
	for _, c := range newRoot().Commands() {
		if c.Name() == "help" || c.Name() == "completion" {
			continue
		}
		if !regexp.MustCompile(`(?m)^  (\S+, )?` + c.Name() + `\b`).MatchString(long) {
			t.Errorf("root help does not describe %s:\n%s", c.Name(), long)
		}
	}
	for _, family := range []string{"Disk images", "Memory", "Live QEMU guests"} {
		if !strings.Contains(out, family) {
			t.Errorf("root help lacks %q", family)
		}
	}
}
