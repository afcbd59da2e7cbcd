package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// The vmscope binary of the tests that run it as a process of its own
// (killed with SIGKILL or SIGINT, or asked for --version): linked once per
// test binary run instead of once per test, with the Makefile's
// -X main.commit of the checkout's HEAD (when it is a git checkout), so
// that TestVersion checks this very binary. It lives in a folder of its
// own that TestMain removes.
var testBin struct {
	once   sync.Once
	dir    string
	path   string
	commit string // the commit it was built with; "" outside a git checkout
	err    error
}

// vmscopeBin returns the path of the test binary of vmscope, building it
// on first use; it fails the test when the build fails.
func vmscopeBin(t testing.TB) string {
	t.Helper()
	goTool := fixture.Tool(t, "go")
	testBin.once.Do(func() { testBin.err = buildTestBin(goTool) })
	if testBin.err != nil {
		t.Fatal(testBin.err)
	}
	return testBin.path
}

func buildTestBin(goTool string) error {
	dir, err := os.MkdirTemp("", "vmscope-testbin")
	if err != nil {
		return err
	}
	testBin.dir, testBin.path = dir, filepath.Join(dir, "vmscope")
	args := []string{"build", "-o", testBin.path}
	if head, err := exec.Command("git", "-C", fixture.Root(), "rev-parse", "HEAD").Output(); err == nil {
		testBin.commit = strings.TrimSpace(string(head))
		args = append(args, "-ldflags", "-X main.commit="+testBin.commit)
	}
	if out, err := exec.Command(goTool, append(args, ".")...).CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}

// removeTestBin removes the binary's folder (from TestMain).
func removeTestBin() {
	if testBin.dir != "" {
		os.RemoveAll(testBin.dir)
	}
}
